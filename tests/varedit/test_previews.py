"""Previews on the model side: one per scale, in order, a cheap decode of the codes so far, and a last one
that is the result at preview size; the edit itself is the same with or without them."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from varedit import EditCancelled, EditPipeline, write_random_checkpoint
from varedit.pipeline import preview_dims
from varedit.sampling import generate

BUNDLED = Path(__file__).parents[2] / "models" / "varedit-shapes-64"
SAMPLE = Path(__file__).parents[2] / "assets" / "sample.png"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image(seed: int, w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory: pytest.TempPathFactory) -> EditPipeline:
    return EditPipeline.from_pretrained(write_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny"))


class Recorder:
    """An on_preview that keeps every call: (k, K, images)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, list[Image.Image]]] = []

    def __call__(self, k: int, K: int, images: list[Image.Image]) -> None:
        self.calls.append((k, K, images))


def test_preview_dims_fit_the_longest_side_and_never_enlarge() -> None:
    assert preview_dims((40, 24), 32) == (32, 19)
    assert preview_dims((24, 40), 32) == (19, 32)
    assert preview_dims((20, 30), 32) == (20, 30)
    assert preview_dims((1000, 4), 128) == (128, 1)


def test_one_preview_per_scale_in_order_and_the_last_is_the_result_resized(tiny_pipe: EditPipeline) -> None:
    # given two inputs of different sizes and shapes, one larger than the preview size
    images, texts, seeds = [image(1, 40, 24), image(2, 20, 30)], ["make it blue", "b"], [5, 6]
    previews = Recorder()
    # when
    results = tiny_pipe.edit(images, texts, seeds=seeds, on_preview=previews, preview_size=32)
    # then one call per scale, in order, each with one preview per input at its preview size
    K = tiny_pipe.num_scales()
    assert [(k, n) for k, n, _ in previews.calls] == [(k, K) for k in range(1, K + 1)]
    for _, _, shown in previews.calls:
        assert [p.size for p in shown] == [(32, 19), (20, 30)]
        assert all(p.mode == "RGB" for p in shown)
    # the last preview is each result resized to preview size, exactly
    for result, last in zip(results, previews.calls[-1][2], strict=True):
        expected = result.resize(preview_dims(result.size, 32), Image.BILINEAR)
        assert np.array_equal(pixels(last), pixels(expected))
    # and asking for previews changes nothing in the edit
    plain = tiny_pipe.edit(images, texts, seeds=seeds)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(results, plain, strict=True))


@pytest.mark.parametrize(
    ("preview_size", "grids"),
    [
        # a 32 px preview needs a 2x2 latent; 2x2 is also the least that decodes (scale 1 has 1x1 of detail)
        (32, [(2, 2), (2, 2), (2, 2), (2, 2)]),
        # at 128 px (the whole 8x8 latent) each scale decodes only the detail it has: 2, 4, 6 token grids
        (128, [(2, 2), (2, 2), (4, 4), (6, 6)]),
    ],
)
def test_previews_decode_the_codes_at_a_small_grid(
    tiny_pipe: EditPipeline, monkeypatch, preview_size: int, grids: list[tuple[int, int]]
) -> None:
    # tiny: 16 px per latent pixel, 128 px (8x8 latent) in 5 scales of token grids 1, 2, 4, 6, 8
    decoded: list[tuple[int, ...]] = []
    real_decode = tiny_pipe.vae.decode

    def recording_decode(f_hat: torch.Tensor) -> torch.Tensor:
        decoded.append(tuple(f_hat.shape[-2:]))
        return real_decode(f_hat)

    monkeypatch.setattr(tiny_pipe.vae, "decode", recording_decode)
    tiny_pipe.edit([image(3, 128, 128)], ["a"], seeds=[1], on_preview=Recorder(), preview_size=preview_size)
    assert decoded == [*grids, (8, 8)]  # the result decodes once, at full size


def test_a_cancelled_edit_stops_its_previews_too(tiny_pipe: EditPipeline) -> None:
    previews = Recorder()
    with pytest.raises(EditCancelled):
        tiny_pipe.edit([image(4, 32, 32)], ["a"], seeds=[1], on_scale=lambda k, K: k < 2, on_preview=previews)
    assert [k for k, _, _ in previews.calls] == [1]


def test_preview_size_must_be_positive(tiny_pipe: EditPipeline) -> None:
    with pytest.raises(ValueError, match="preview_size"):
        tiny_pipe.edit([image(4, 32, 32)], ["a"], seeds=[1], on_preview=Recorder(), preview_size=0)


def test_generate_hands_on_codes_the_running_sum_after_each_scale(tiny_pipe: EditPipeline) -> None:
    schedule = tiny_pipe.config.schedule()
    text = tiny_pipe.text_encoder.encode(["a"])
    source = tiny_pipe.encode_sources([image(5, 32, 32)], schedule, tiny_pipe.resolution)
    seen: list[tuple[int, int, torch.Tensor]] = []

    def run(on_codes=None):  # type: ignore[no-untyped-def]
        gens = [torch.Generator().manual_seed(9)]
        return generate(tiny_pipe.transformer, tiny_pipe.vae, text, source, schedule, gens, on_codes=on_codes)

    out = run(lambda k, K, f_hat: seen.append((k, K, f_hat.clone())))
    K = len(schedule)
    assert [(k, n) for k, n, _ in seen] == [(k, K) for k in range(1, K + 1)]
    # each is the sum of the codes of scales 1..k, and the last is the decoder input
    for k, _, f_hat in seen[:-1]:
        assert torch.equal(f_hat, tiny_pipe.vae.bits_to_f_hat(out.bits[:k], schedule))
    assert torch.equal(seen[-1][2], out.f_hat)
    assert all(torch.equal(a, b) for a, b in zip(out.bits, run().bits, strict=True))


def test_the_bundled_models_previews_sharpen_towards_the_result() -> None:
    pipe = EditPipeline.from_pretrained(BUNDLED, device="cpu")
    previews = Recorder()
    [result] = pipe.edit([Image.open(SAMPLE)], ["remove the red circle"], seeds=[1], on_preview=previews)
    shown = [images[0] for _, _, images in previews.calls]
    assert len(shown) == pipe.num_scales() == 5
    distance = [float(np.abs(pixels(p) - pixels(result)).mean()) for p in shown]
    # every scale brings the preview closer to the result, and the last one is the result (64 px)
    assert all(a > b for a, b in zip(distance, distance[1:], strict=False)), distance
    assert distance[-1] == 0 and distance[0] > 20, distance
