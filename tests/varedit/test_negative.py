"""Negative instructions (the unconditional text of classifier-free guidance) and the schedule guard.

The official sampler builds its CFG batch as [cond; uncond]: with an empty negative prompt the
unconditional text is the learned null text cut to the prompt's length; with a non-empty one it is
that prompt's own T5 encoding, at its own length. Checked on the golden T1 model with the tiny T5,
and through a random tiny pipeline and the CLI.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.parity import assert_matches_reference
from tests.varedit.test_golden_model import infer_inputs
from varedit import EditPipeline, write_random_checkpoint
from varedit.cli import main as cli_main
from varedit.config import scale_schedule
from varedit.sampling import generate, unconditional_text
from varedit.text import TextEncoder, TextFeatures

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
NEGATIVE = "blurry, low quality, distorted colours"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def t1():  # type: ignore[no-untyped-def]
    """The golden T1 model, the tiny T5, and the golden end-to-end case's inputs and official bits."""
    model, vae, _, meta, sched, src, _, bits = infer_inputs("T1", "golden_e2e_cfg3_tau0.5")
    enc = TextEncoder.from_pretrained(GOLDEN / "T5tiny")
    return model, vae, enc, enc.encode([meta["prompt"]]), sched, src, bits


def run(t1, text: TextFeatures, cfg: float, negative: TextFeatures | None = None, forced: bool = True):  # type: ignore[no-untyped-def]
    model, vae, _, _, sched, src, bits = t1
    return generate(
        model,
        vae,
        text,
        src,
        sched,
        [torch.Generator().manual_seed(7)],
        cfg=cfg,
        tau=0.5,
        forced_bits=bits if forced else None,
        keep_logits=True,
        negative=negative,
    )


def test_the_unconditional_half_receives_the_negative_prompts_t5_features(t1, monkeypatch):
    model, _, enc, text, *_ = t1
    negative = enc.encode([NEGATIVE])
    n_text, n_neg = int(text.lens_B[0]), int(negative.lens_B[0])
    assert n_neg != n_text  # the negative keeps its own length, not the prompt's
    seen = []
    condition = model.condition
    monkeypatch.setattr(
        model, "condition", lambda t, null_B=None: seen.append((t, null_B)) or condition(t, null_B)
    )
    guided = run(t1, text, cfg=3.0, negative=negative)
    [(batch, null_B)] = seen
    assert batch.lens_B.tolist() == [n_text, n_neg]
    assert torch.equal(batch.feats_BTC[0, :n_text], text.feats_BTC[0])
    assert torch.equal(batch.feats_BTC[1, :n_neg], negative.feats_BTC[0])
    assert null_B.tolist() == [False, False]  # the learned null text is not read
    # the whole unconditional path (pooled SOS, AdaLN, every cross-attention) reads the negative: its
    # logits are those of a conditional run with the negative as the prompt
    monkeypatch.undo()
    as_prompt = run(t1, negative, cfg=1.0)
    null_text = run(t1, text, cfg=3.0)
    for k in range(len(guided.logits)):
        assert_matches_reference(guided.logits[k][1:], as_prompt.logits[k])
        torch.testing.assert_close(guided.logits[k][:1], null_text.logits[k][:1], atol=0, rtol=0)
    assert float((guided.logits[-1][1] - null_text.logits[-1][1]).abs().max()) > 0.1


def test_an_empty_negative_prompt_leaves_generation_bit_identical(t1):
    _, _, _, text, *_ = t1
    no_tokens = TextFeatures.from_list([torch.zeros(0, text.feats_BTC.shape[-1])])
    default = run(t1, text, cfg=3.0, forced=False)
    empty = run(t1, text, cfg=3.0, negative=no_tokens, forced=False)
    for a, b in zip(default.bits + default.logits, empty.bits + empty.logits, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(default.f_hat, empty.f_hat)


def test_one_negative_prompt_per_sample():
    text = TextFeatures(torch.randn(2, 4, 8), torch.tensor([4, 3]))
    with pytest.raises(ValueError, match="one negative prompt per sample: 1 for 2"):
        unconditional_text(text, TextFeatures(torch.randn(1, 2, 8), torch.tensor([2])))
    # a sample without negative keeps its prompt's rows, which `condition` turns into the null text
    negative = TextFeatures.from_list([torch.zeros(0, 8), torch.ones(5, 8)])
    uncond, null_B = unconditional_text(text, negative)
    assert uncond.lens_B.tolist() == [4, 5] and null_B.tolist() == [True, False]
    assert torch.equal(uncond.feats_BTC[0, :4], text.feats_BTC[0]) and torch.equal(
        uncond.feats_BTC[1], torch.ones(5, 8)
    )


# ---- the schedule guard -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        scale_schedule(4, 1.333),  # an aspect-ratio template: its own RoPE table is not built
        [(1, 1), (2, 2), (3, 3), (4, 4)],  # square grids, but not the template's
        [(2, 2), (4, 4)],  # not a prefix
        scale_schedule(13) + [(80, 80)],  # longer than the template
        [],
    ],
)
def test_a_schedule_without_its_rope_layout_is_refused(t1, schedule):
    model, vae, _, text, *_ = t1
    n_src = schedule[-1][0] * schedule[-1][1] if schedule else 1
    src = torch.zeros(1, n_src, model.cfg.d_vae)
    with pytest.raises(
        ValueError, match=r"scale schedule .* is not supported.*square template's first K grids"
    ):
        generate(model, vae, text, src, schedule, [torch.Generator()], cfg=3.0)
    if schedule:
        tgt = torch.zeros(1, sum(h * w for h, w in schedule) - 1, model.cfg.d_vae)
        with pytest.raises(ValueError, match=re.escape(f"scale schedule {schedule} is not supported")):
            model(text, src, tgt, schedule)


def test_every_square_prefix_is_accepted(t1):
    model = t1[0]
    for K in range(1, 14):
        model.check_schedule(scale_schedule(K))
        model.check_schedule([list(hw) for hw in scale_schedule(K)])  # lists as read from JSON


# ---- pipeline and CLI ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=3)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_dir) -> EditPipeline:
    return EditPipeline.from_pretrained(tiny_dir, device="cpu")


def image(seed: int, w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im)


def test_pipeline_negative_instruction(tiny_pipe):
    im = image(1, 48, 40)
    [default] = tiny_pipe.edit(im, "make it red", seeds=3, cfg=3.0)
    [empty] = tiny_pipe.edit(im, "make it red", seeds=3, cfg=3.0, negative_instruction="")
    [listed] = tiny_pipe.edit([im], ["make it red"], seeds=[3], cfg=3.0, negative_instruction=[""])
    assert np.array_equal(pixels(default), pixels(empty)) and np.array_equal(pixels(default), pixels(listed))
    [steered] = tiny_pipe.edit(im, "make it red", seeds=3, cfg=3.0, negative_instruction=NEGATIVE)
    assert not np.array_equal(pixels(default), pixels(steered))
    assert steered.info["negative_instruction"] == NEGATIVE
    # without guidance there is no unconditional half to steer
    [plain] = tiny_pipe.edit(im, "make it red", seeds=3, cfg=1.0)
    [unguided] = tiny_pipe.edit(im, "make it red", seeds=3, cfg=1.0, negative_instruction=NEGATIVE)
    assert np.array_equal(pixels(plain), pixels(unguided))
    with pytest.raises(ValueError, match="one negative instruction per image"):
        tiny_pipe.edit([im, im], ["a", "b"], negative_instruction=["x"])


def test_a_batch_with_and_without_negatives_equals_each_alone(tiny_pipe):
    imgs, texts, seeds = [image(2, 32, 32), image(3, 50, 20)], ["add a hat", "x"], [11, 12]
    negatives = [NEGATIVE, ""]
    batch = tiny_pipe.edit(imgs, texts, seeds=seeds, cfg=3.0, negative_instruction=negatives)
    for im, text, seed, neg, out in zip(imgs, texts, seeds, negatives, batch, strict=True):
        [alone] = tiny_pipe.edit(im, text, seeds=seed, cfg=3.0, negative_instruction=neg)
        assert np.array_equal(pixels(alone), pixels(out))


def test_cli_negative(tiny_pipe, tiny_dir, tmp_path):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    image(4, 40, 30).save(src)
    argv = ["edit", str(src), "add a moon", "-o", str(out), "--model", str(tiny_dir), "--seed", "5"]
    assert cli_main([*argv, "--cfg", "3", "--negative", NEGATIVE]) == 0
    [expected] = tiny_pipe.edit(
        image(4, 40, 30), "add a moon", seeds=5, cfg=3.0, negative_instruction=NEGATIVE
    )
    assert np.array_equal(pixels(Image.open(out)), pixels(expected))
