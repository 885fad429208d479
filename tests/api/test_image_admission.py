"""POST /v1/edits refuses images whose padded square would be huge (longest side, aspect ratio) from
their header alone, before anything is stored or queued; images at the limits are accepted."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.api.test_edits import count_jobs, post_json, post_multipart, stored_objects
from tests.conftest import ApiHarness


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    """A real, decodable PNG: a constant image compresses to a few hundred bytes whatever its size."""
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def animated_png(colors: list[tuple[int, int, int]], size: tuple[int, int] = (32, 32)) -> bytes:
    frames = [Image.new("RGB", size, c) for c in colors]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def assert_nothing_kept(harness: ApiHarness) -> None:
    assert count_jobs(harness) == 0
    assert stored_objects(harness) == []
    assert harness.publisher.published == []


@pytest.mark.parametrize("size", [(20000, 1), (1, 20000), (200000, 1), (8193, 8193 // 8 + 1)])
def test_a_side_over_the_limit_is_refused(harness: ApiHarness, size: tuple[int, int]) -> None:
    data = png(size)
    assert len(data) < 16 * 1024  # the attack: a few bytes that would pad to a gigapixel square
    response = post_multipart(harness, data)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "image_too_large"
    assert error["details"] == {"width": size[0], "height": size[1], "limit": 8192}
    assert_nothing_kept(harness)


@pytest.mark.parametrize("size", [(1000, 124), (124, 1000), (8192, 1023), (100, 1)])
def test_an_aspect_ratio_over_the_limit_is_refused(harness: ApiHarness, size: tuple[int, int]) -> None:
    response = post_multipart(harness, png(size))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "image_aspect_ratio"
    assert error["details"] == {"width": size[0], "height": size[1], "limit": 8.0}
    assert_nothing_kept(harness)


def test_json_uploads_are_checked_the_same_way(harness: ApiHarness) -> None:
    response = post_json(harness, png((20000, 1)))
    assert (response.status_code, response.json()["error"]["code"]) == (422, "image_too_large")
    assert_nothing_kept(harness)


@pytest.mark.parametrize("size", [(8192, 1024), (1024, 8192), (1000, 125), (64, 64)])
def test_an_image_at_the_limits_is_accepted(harness: ApiHarness, size: tuple[int, int]) -> None:
    response = post_multipart(harness, png(size))
    assert response.status_code == 202, response.text
    assert count_jobs(harness) == 1


def test_an_animation_is_accepted_as_its_first_frame(harness: ApiHarness) -> None:
    response = post_multipart(harness, animated_png([(255, 0, 0), (0, 0, 255)]))
    assert response.status_code == 202, response.text
    assert count_jobs(harness) == 1


def test_a_jpeg_carrying_more_pictures_is_a_jpeg(harness: ApiHarness) -> None:
    # Phones write JPEGs with a second picture (an Ultra HDR gain map, a depth map) in an MPF segment;
    # Pillow names that format MPO. Every viewer shows the first picture, and so does the model.
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="MPO", save_all=True, append_images=frames[1:])
    assert buf.getvalue()[:2] == b"\xff\xd8"  # a JPEG, byte for byte at its start
    response = post_multipart(harness, buf.getvalue())
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with Image.open(io.BytesIO(harness.storage.get(f"jobs/{job_id}/source.jpg"))) as stored:
        assert stored.convert("RGB").getpixel((16, 16))[0] > 200  # the first picture: red
