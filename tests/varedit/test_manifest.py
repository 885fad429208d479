"""State-dict contract of the full-size transformers, configs, schedules and RoPE layout (no weights)."""

import json
from pathlib import Path

import pytest
import torch

from varedit.checkpoints import CheckpointError, check_state_dict, official_to_ours
from varedit.config import PN_SCALES, TEMPLATES, VAREditConfig, get_config, reference_schedule, scale_schedule
from varedit.rope import rope_positions
from varedit.transformer import VAREditTransformer, null_text_init

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


def _meta_model(cfg: VAREditConfig) -> VAREditTransformer:
    with torch.device("meta"):
        return VAREditTransformer(cfg)


@pytest.mark.parametrize(
    ("variant", "manifest", "params"),
    [
        ("2B-512", "manifest_infinity_2b.json", 2_204_564_032),
        ("8B-512", "manifest_infinity_8b.json", 8_375_791_824),
        ("8B-1024", "manifest_infinity_8b.json", 8_375_791_824),
    ],
)
def test_full_size_keys_and_shapes_match_the_official_manifest(variant, manifest, params):
    cfg = get_config(variant)
    model = _meta_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    official = json.loads((GOLDEN / manifest).read_text())
    official_cfg = official.pop("_config")
    # the official keys, through the documented mapping, give exactly this model's keys and shapes
    fake = {
        k: torch.zeros(shape, device="meta")
        for k, (shape, _dtype) in official.items()
        if not k.endswith("zero_k_bias")
    }
    mapped = official_to_ours(fake, cfg)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    assert sum(1 for k in official if k.endswith("zero_k_bias")) == 2 * cfg.depth + 1
    # the official constructor record translates to the same architecture
    translated = VAREditConfig.from_official(official_cfg | {"image_size": None}, name=variant)
    assert (translated.depth, translated.width, translated.num_heads, translated.d_vae) == (
        cfg.depth,
        cfg.width,
        cfg.num_heads,
        cfg.d_vae,
    )
    assert cfg.text_pool_heads == official_cfg["derived"]["text_pool_num_heads"]
    assert cfg.ffn_hidden == official_cfg["derived"]["mlp_hidden"]


def test_block_chunk_keys_map_to_flat_blocks():
    cfg = get_config("2B-512")
    state = {
        "block_chunks.7.module.3.sa.q_bias": torch.zeros(1),
        "head.bias": torch.zeros(1),
        "block_chunks.0.module.0.sa.zero_k_bias": torch.zeros(1),
        "lvl_1L": torch.zeros(1),
    }
    assert sorted(official_to_ours(state, cfg)) == ["blocks.31.sa.q_bias", "head.bias"]


@pytest.mark.parametrize(
    "bad",
    [
        {"block_chunks.0.module.4.sa.q_bias": torch.zeros(1)},  # 2B has 4 blocks per chunk
        {"blocks.0.sa.q_bias": torch.zeros(1)},  # our layout inside an official file
        {"block_chunks.0.module.0.sa.zero_k_bias": torch.ones(1)},  # would change the math
    ],
)
def test_official_keys_that_do_not_map_are_refused(bad):
    with pytest.raises(CheckpointError, match="do not map"):
        official_to_ours(bad, get_config("2B-512"))


def test_checkpoint_of_another_variant_is_refused_naming_the_key():
    small = get_config("2B-512")
    big = _meta_model(get_config("8B-512")).state_dict()
    state = {k: torch.zeros(v.shape, device="meta") for k, v in big.items()}
    with pytest.raises(CheckpointError, match="shape mismatches.*head.weight|missing"):
        check_state_dict(_meta_model(small), state, "8B-512.pth")


def test_short_null_text_table_is_padded_with_the_models_initial_rows():
    cfg = get_config("tiny")
    short = torch.randn(100, cfg.text_channels, generator=torch.Generator().manual_seed(1))
    padded = official_to_ours({"cfg_uncond": short.clone()}, cfg)["cfg_uncond"]
    init = null_text_init(cfg.text_maxlen, cfg.text_channels)  # what this torch initialises the table to
    assert padded.shape == (512, 256) and torch.equal(padded[:100], short)
    assert torch.equal(padded[100:], init[100:])  # not zeros: the model's own rows, as the official loader
    assert official_to_ours({"cfg_uncond": torch.ones(600, 256)}, cfg)["cfg_uncond"].shape == (512, 256)


@pytest.mark.skipif(
    torch.__version__ < (2, 13),
    reason=f"the golden table is torch 2.13's trunc_normal_; torch {torch.__version__} draws it otherwise "
    "(2.11: by the inverse CDF, not rejection sampling), as the official code run on it would",
)
def test_null_text_init_is_the_official_initial_table():
    cfg = get_config("tiny")
    ref = torch.load(GOLDEN / "T1" / "infinity_T1.pth", weights_only=True)["cfg_uncond"]  # model's init rows
    assert torch.equal(null_text_init(cfg.text_maxlen, cfg.text_channels), ref)


def test_scale_schedules():
    assert len(TEMPLATES) == 15 and sorted(PN_SCALES.values()) == [7, 10, 12, 13]
    assert TEMPLATES[0.8] == [(w, h) for h, w in TEMPLATES[1.25]]
    assert get_config("2B-512").schedule() == scale_schedule(10)
    assert sum(h * w for h, w in get_config("8B-512").schedule()) == 2521
    assert sum(h * w for h, w in get_config("8B-1024").schedule()) == 10521
    assert get_config("S").schedule() == scale_schedule(7)  # 0.06M: 1..16, 256 px
    assert get_config("tiny").schedule() == [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]
    with pytest.raises(ValueError, match="resolution"):
        get_config("2B-512").schedule(500)


def test_rope_layouts_at_full_size():
    pos = rope_positions(reference_schedule())
    assert pos.shape == (4096 + 10521, 2)
    grid = torch.stack(torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij"), -1).reshape(-1, 2)
    assert torch.equal(pos[:4096], grid + 64)  # 1024 px source: (64 + i, 64 + j)
    start = 4096 + sum(h * w for h, w in scale_schedule(3))  # the 6x6 scale of the 1M layout
    assert pos[start : start + 6, 1].tolist() == [0, 11, 21, 32, 43, 53]
    n = torch.arange(1024 + 2521)  # 512 px: every global index lands in the source block
    assert torch.equal(pos[n], torch.stack([64 + n // 64, 64 + n % 64], -1))
