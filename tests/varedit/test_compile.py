"""`EditPipeline(compile=True)` edits as the eager pipeline does: the same sampled bits, and a decoded
image within float32 rounding (the compiled kernels sum in another order).

The edit is slow: inductor compiles C++ for each graph on the CPU, over a minute for the tiny model on
2 cores (less when its cache in the temp folder already holds the graphs).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters

from tests.parity import CODES_TOL
from varedit import EditPipeline, compiled, write_random_checkpoint
from varedit.config import get_config
from varedit.sampling import Generation, generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESOLUTION = 32  # 2 scales: one cached step, then the last (uncached) one


def edit(folder: Path, compile: bool) -> tuple[Generation, torch.Tensor]:
    """The stages of `EditPipeline.edit` for one image: the sampler's output and the decoded image."""
    pipe = EditPipeline.from_pretrained(folder, device="cpu", compile=compile)
    schedule = pipe.config.schedule(RESOLUTION)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    with torch.inference_mode():
        source = pipe.encode_sources([image], schedule, RESOLUTION)
        text = pipe.text_encoder.encode(["make it blue"])
        out = generate(pipe.transformer, pipe.vae, text, source, schedule, [torch.Generator().manual_seed(5)])
        return out, pipe.decode(out.f_hat)


@pytest.mark.parametrize(("option", "mode"), [(True, None), ("reduce-overhead", "reduce-overhead")])
def test_the_compile_option_compiles_every_hot_path_in_its_mode(tmp_path, monkeypatch, option, mode):
    modes: list[str | None] = []

    def record(fn, *, dynamic, mode):
        modes.append(mode)
        return fn

    monkeypatch.setattr(compiled.torch, "compile", record)
    EditPipeline.from_pretrained(write_random_checkpoint(tmp_path, "tiny"), device="cpu", compile=option)
    # three token-wise parts per block, the VAE encoder and the decode
    assert modes == [mode] * (3 * get_config("tiny").depth + 2)


@pytest.mark.slow
def test_compiled_edit_samples_the_same_bits_and_decodes_within_float32_rounding(tmp_path):
    folder = write_random_checkpoint(tmp_path, "tiny", seed=3)
    eager, eager_image = edit(folder, compile=False)
    counters.clear()
    compiled, compiled_image = edit(folder, compile=True)
    assert not counters["graph_break"], dict(counters["graph_break"])
    # the VAE encoder and decoder, and three block parts per token count (the source's is the last
    # scale's), each graph shared by every block: nothing fell back to eager code
    token_counts = {h * w for h, w in get_config("tiny").schedule(RESOLUTION)}
    assert counters["stats"]["unique_graphs"] == 2 + 3 * len(token_counts)
    for k, (a, b) in enumerate(zip(compiled.bits, eager.bits, strict=True)):
        assert torch.equal(a, b), f"scale {k}: {int((a != b).sum())} of {a.numel()} bits differ"
    torch.testing.assert_close(compiled.f_hat, eager.f_hat, **CODES_TOL)
    torch.testing.assert_close(compiled_image, eager_image, atol=1e-4, rtol=1e-4)
