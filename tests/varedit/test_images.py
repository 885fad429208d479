"""Input normalisation (`varedit.images.to_rgb`) and the memory bound of pre- and post-processing.

Normalisation: EXIF orientation, first frame, 16-bit greyscale, palette/CMYK/LA, alpha onto the white
of the pad. Pre/post-processing: exactly the official formula up to `exact_bound(S)`; above it close
to it, with memory that depends on the model size and the output, not on the padded square.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from varedit.images import to_rgb
from varedit.pipeline import exact_bound, load_image, postprocess, preprocess

ROOT = Path(__file__).resolve().parents[2]
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def reopened(image: Image.Image, fmt: str = "PNG", **save: object) -> Image.Image:
    """`image` saved and decoded again the way the worker does it (load, then copy)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        img.load()
        return img.copy()


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    assert image.mode == "RGB"
    return tuple(image.getpixel(xy))


# ---- normalisation -------------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 4, 4))  # the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer turns the stored image 90 degrees clockwise
    out = to_rgb(reopened(stored, exif=exif))
    assert out.size == (20, 40)
    assert pixel(out, (19, 0)) == RED and pixel(out, (0, 0)) == BLUE  # now top-right


def test_exif_orientation_survives_a_path(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "in.jpg", exif=exif)
    assert load_image(tmp_path / "in.jpg").size == (20, 40)


def test_transparent_pixels_become_white_and_opaque_ones_stay_exact() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((10, 200, 30, 255), (0, 0, 4, 8))
    rgba.putpixel((7, 7), (0, 0, 0, 128))
    out = to_rgb(reopened(rgba))
    assert pixel(out, (6, 0)) == WHITE
    assert pixel(out, (1, 1)) == (10, 200, 30)
    assert all(abs(v - 127) <= 1 for v in pixel(out, (7, 7)))  # half black over white


def test_transparent_input_is_white_in_the_model_input() -> None:
    """The transparent part and the pad look the same to the model: all 1.0 in [-1, 1]."""
    x = preprocess(load_image(Image.new("RGBA", (60, 20), (0, 0, 0, 0))), 32)
    assert torch.equal(x, torch.ones_like(x))


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32768, 65535, 257 * 200]], dtype=np.uint16)
    image = reopened(Image.fromarray(values))
    assert image.mode.startswith("I")
    out = to_rgb(image)
    assert [pixel(out, (x, 0))[0] for x in range(4)] == [0, 128, 255, 200]
    assert pixel(out, (1, 0)) == (128, 128, 128)


def test_thirty_two_bit_grey_is_read_as_sixteen_bit() -> None:
    image = Image.fromarray(np.array([[32768, 70000, -5]], dtype=np.int32))
    assert image.mode == "I"
    assert [pixel(to_rgb(image), (x, 0))[0] for x in range(3)] == [128, 255, 0]


def test_palette_with_a_transparent_index() -> None:
    palette = Image.new("P", (4, 1))
    palette.putpalette([*RED, *BLUE])
    palette.putpixel((1, 0), 1)
    out = to_rgb(reopened(palette, transparency=0))
    assert [pixel(out, (x, 0)) for x in range(2)] == [WHITE, BLUE]


def test_cmyk_la_and_bilevel() -> None:
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    out = to_rgb(reopened(cmyk, "JPEG", quality=100))
    assert all(abs(a - b) <= 2 for a, b in zip(pixel(out, (0, 0)), WHITE, strict=True))
    assert pixel(to_rgb(cmyk), (1, 0)) == (0, 255, 255)
    la = Image.new("LA", (2, 1), (100, 0))
    la.putpixel((1, 0), (100, 255))
    out = to_rgb(reopened(la))
    assert [pixel(out, (x, 0)) for x in range(2)] == [WHITE, (100, 100, 100)]
    assert pixel(to_rgb(Image.new("1", (1, 1), 1)), (0, 0)) == WHITE


def test_an_animation_is_read_as_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(io.BytesIO(buf.getvalue())) as apng:
        assert apng.n_frames == 2
        apng.seek(1)
        assert pixel(to_rgb(apng), (0, 0)) == RED


def test_rgb_input_is_returned_unchanged() -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    out = to_rgb(rgb)
    assert out is not rgb and np.array_equal(np.asarray(out), np.asarray(rgb))


# ---- pre- and post-processing ------------------------------------------------------------------


def official_preprocess(image: Image.Image, size: int) -> torch.Tensor:
    side = max(image.size)
    square = Image.new("RGB", (side, side), WHITE)
    square.paste(image, (0, 0))
    x = torch.from_numpy(np.array(square.resize((size, size), Image.LANCZOS))).permute(2, 0, 1)
    x = x.float().div(255)
    return x + x - 1


def official_postprocess(img_3SS: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    u8 = ((img_3SS.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).mul(255).to(torch.uint8)
    side = max(size)
    return Image.fromarray(u8.numpy()).resize((side, side), Image.LANCZOS).crop((0, 0, *size))


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def smooth(size: tuple[int, int]) -> Image.Image:
    """A photo-like input: coarse noise blown up, so resampling differences are those of real images."""
    return noise((size[0] // 16 + 2, size[1] // 16 + 2)).resize(size, Image.BICUBIC)


def model_output(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(("size", "model"), [((100, 60), 32), ((60, 100), 64), ((1024, 300), 32)])
def test_small_inputs_are_bit_identical_to_the_official_formula(size: tuple[int, int], model: int) -> None:
    assert max(size) <= exact_bound(model)
    image = noise(size)
    assert torch.equal(preprocess(image, model), official_preprocess(image, model))
    out = model_output(model)
    assert np.array_equal(np.asarray(postprocess(out, size)), np.asarray(official_postprocess(out, size)))


@pytest.mark.parametrize("size", [(3000, 400), (400, 3000), (1100, 1090)])
def test_large_inputs_stay_close_to_the_official_formula(size: tuple[int, int]) -> None:
    """Above the bound (1024 at S = 32): preprocess resamples twice, postprocess crops before resizing."""
    model = 32
    assert max(size) > exact_bound(model)
    image = smooth(size)
    diff = (preprocess(image, model) - official_preprocess(image, model)).abs() * 127.5  # in 8-bit steps
    assert diff.max() <= 4 and diff.mean() < 0.5
    out = model_output(model)
    post = np.asarray(postprocess(out, size), dtype=int) - np.asarray(
        official_postprocess(out, size), dtype=int
    )
    assert np.abs(post).max() <= 2 and (post != 0).mean() < 1e-3


MEASURE = """
import json, sys
import torch
from PIL import Image
from varedit.pipeline import postprocess, preprocess

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

w, h, s = map(int, sys.argv[1:4])
image = Image.new("RGB", (w, h), (30, 140, 200))
out = torch.rand(3, s, s) * 2 - 1
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS: only the edit's own peak is measured
before = status_kb("VmRSS")
x = preprocess(image, s)
result = postprocess(out, image.size)
growth_mb = (status_kb("VmHWM") - before) / 1024
print(json.dumps({"growth_mb": growth_mb, "size": list(result.size), "x": list(x.shape)}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux /proc")
@pytest.mark.parametrize("size", [(8192, 1024), (8192, 2048)])
def test_memory_of_the_worst_accepted_input_is_bounded(size: tuple[int, int]) -> None:
    """8192 x 1024 (longest side and aspect at their limits) and 8192 x 2048 (most pixels) at S = 1024.

    Peak RSS growth of preprocess + postprocess in a fresh interpreter (the kernel's peak, reset just
    before): 103-115 and 127 MB here; the official padded square alone is 256 MB, and took 320 and 360 MB.
    """
    args = [str(v) for v in (*size, 1024)]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, cwd=ROOT, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["size"] == list(size) and report["x"] == [3, 1024, 1024]
    assert report["growth_mb"] < 250, report
