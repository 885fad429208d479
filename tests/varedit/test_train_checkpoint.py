"""The shipped small model (models/varedit-shapes-64) really edits, quickly, on CPU."""

from pathlib import Path

import numpy as np
import pytest

from varedit.train.data import make_record
from varedit.train.eval import edit_record, masked_psnr, score

pytestmark = pytest.mark.slow

MODEL = Path(__file__).resolve().parents[2] / "models" / "varedit-shapes-64"
# Held-out records (a phrasing or a combination never trained on), by (data seed, index); edited with
# the settings of the model card (cfg 2, tau 0.3) and seed = index, as `python -m varedit.train.eval` does:
# a recolour of a held-out colour pair, a resize, a move and a remove that this release gets right
# (the card lists the known bad cases; the floor below measures the rate).
SAMPLES = [(0, 0), (0, 10), (0, 15), (0, 19)]
# The benchmark's first records, for a floor under its numbers (the card reports 300 of them).
FLOOR_RECORDS = 32


@pytest.fixture(scope="module")
def pipe():
    from varedit.pipeline import EditPipeline

    return EditPipeline.from_pretrained(MODEL, device="cpu")


def test_shipped_folder_is_small_and_complete():
    files = {p.relative_to(MODEL).as_posix(): p.stat().st_size for p in MODEL.rglob("*") if p.is_file()}
    for name in (
        "config.json",
        "transformer.safetensors",
        "vae.safetensors",
        "README.md",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/tokenizer.json",
    ):
        assert name in files, name
    assert sum(files.values()) < 30e6


@pytest.mark.parametrize("seed,index", SAMPLES)
def test_shipped_model_edits_a_held_out_sample(pipe, seed, index):
    rec = make_record(seed, index, "test")
    # (latency is a benchmark, not an assertion: `python -m varedit.train.eval` reports ~0.1 s per edit,
    # 1 thread)
    out = edit_record(pipe, rec, index, cfg=2.0, tau=0.3)
    assert out.shape == rec.source.shape
    # inside the mask: the edit happened and looks like the target, not like the source
    assert masked_psnr(out, rec.source, rec.mask) < 15
    assert masked_psnr(out, rec.target, rec.mask) >= 20
    # outside the mask: the source is preserved
    assert masked_psnr(out, rec.source, ~rec.mask) >= 28


def test_shipped_model_quality_floor(pipe):
    """A guard against a release that edits worse than the card says: on the benchmark's first
    records most edits succeed, nearly all go the right way, and the rest of the image is kept."""
    records = [make_record(0, index, "test") for index in range(FLOOR_RECORDS)]
    results = [score(rec, edit_record(pipe, rec, i, cfg=2.0, tau=0.3)) for i, rec in enumerate(records)]
    assert np.mean([r["success"] for r in results]) >= 0.8  # this release: 30 of 32
    assert np.mean([r["closer"] for r in results]) >= 0.95  # 32 of 32
    assert np.mean([r["preservation"] for r in results]) >= 33  # 35.9 dB


def test_benchmark_oracle_scales(pipe):
    """`varedit.train.eval --oracle-scales N`: N = 0 is the plain edit; all scales give the target's VAE
    reconstruction, whatever the transformer would have sampled."""
    from varedit.train.eval import edit_with_oracle

    rec = make_record(0, 1, "test")
    plain = edit_record(pipe, rec, 1, cfg=2.0, tau=0.3)
    assert np.array_equal(edit_with_oracle(pipe, rec, 1, 2.0, 0.3, 0), plain)
    K = pipe.num_scales()
    oracle = edit_with_oracle(pipe, rec, 1, 2.0, 0.3, K)
    assert np.array_equal(oracle, edit_with_oracle(pipe, rec, 3, 4.0, 1.0, K))  # sampling plays no part
    assert masked_psnr(oracle, rec.target, rec.mask) >= 30
    assert masked_psnr(oracle, rec.source, ~rec.mask) >= 30


def test_shipped_folder_continues_training(tmp_path, pipe):
    """`--init models/varedit-shapes-64` is how the next run continues this release: it takes the
    folder's VAE (32 bits per token) and T5, so the bit labels are the ones trained on."""
    from varedit.train import transformer as T

    assert pipe.config.vae.codebook_dim == 32
    cfg = T.TrainConfig(init=str(MODEL), depth=pipe.config.depth)
    vae, _, model = T.build(cfg, tmp_path / "unused.pt")
    assert vae.config == pipe.config.vae and model.head.out_features == 2 * pipe.config.vae.codebook_dim
