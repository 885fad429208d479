"""The VAE operations VAREdit's transformer uses, against the official references: source prefix,
teacher-forcing inputs and labels (with and without bitwise self-correction), the inference
next-scale update and the decode; plus BSQ, patchify and self-correction properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.parity import CODES_TOL
from varedit.vae import (
    VAE,
    SelfCorrection,
    VAEConfig,
    load_official_vae,
    tokens_to_vae_bits,
    vae_bits_to_tokens,
)
from varedit.vae.quantizer import BSQ

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
# Reruns of the official code itself (other thread counts, compile) moved float outputs by up to
# ~8e-5; encoder convolutions round differently across CPUs.
FLOAT_TOL = {"rtol": 1e-4, "atol": 1e-4}
ULP_TOL = {"rtol": 0, "atol": 1e-6}  # pure resampling of identical inputs: a few float32 ulp at most
INFER_CASES = {
    "T1": ["golden_infer_cfg3_tau0.5", "golden_e2e_cfg3_tau0.5"],
    "T2": ["golden_infer_cfg3_tau0.5", "golden_infer_cfg1_tau1"],
}


def _config(case: str) -> dict:
    return json.loads((GOLDEN / case / "config.json").read_text())


def _u8_to_x(u8_BHW3: torch.Tensor) -> torch.Tensor:
    """Official preprocessing of a square image already at size: /255, then x + x - 1."""
    t = u8_BHW3.permute(0, 3, 1, 2).float() / 255
    return t + t - 1


@pytest.fixture(scope="module", params=["T1", "T2"])
def case(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def vae(case: str) -> VAE:
    return load_official_vae(GOLDEN / case / f"vae_{case}.pth", VAEConfig.from_official(_config(case)))


@pytest.fixture(scope="module")
def sched(case: str) -> list[tuple[int, int, int]]:
    return [tuple(g) for g in _config(case)["scale_schedule"]]


@pytest.fixture(scope="module")
def forward_golden(case: str) -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / case / "golden_forward.safetensors")


# ----- training path: golden_forward (official flip_requant) -----


def test_raw_features_and_source_prefix(vae: VAE, sched, forward_golden):
    g = forward_golden
    with torch.no_grad():
        for side in ("src", "tgt"):
            f = vae.encode_features(_u8_to_x(g[f"input.{side}_img_u8"]))
            torch.testing.assert_close(f, g[f"{side}_raw_features"], **FLOAT_TOL)
    assert torch.equal(vae.source_tokens(g["src_raw_features"], sched), g["source_x_BLC_wo_prefix"])


def test_teacher_forcing_matches_official(vae: VAE, sched, forward_golden):
    g = forward_golden
    with torch.no_grad():
        tf = vae.teacher_forcing(g["tgt_raw_features"], sched)
    torch.testing.assert_close(tf.x_BLd, g["target_x_BLC_wo_prefix"], **ULP_TOL)
    for k, labels in enumerate(tf.labels):
        assert torch.equal(labels, g[f"gt_bits.{k}"].long()), f"scale {k}"


def test_teacher_forcing_with_self_correction_matches_official(vae: VAE, sched, forward_golden):
    """Official RNG use per scale: numpy's randint(0, 31) for the strength, then torch.rand on
    the global CPU generator for the flip mask (seed 41 each, noise on all 5 scales, requant)."""
    g = forward_golden

    def official_flip(si: int, bits_B1hwd: torch.Tensor) -> torch.Tensor:
        strength = np.random.randint(0, 100 * 0.3 + 1) * 0.01
        mask = torch.rand(*bits_B1hwd.shape) < strength
        return torch.where(mask, 1 - bits_B1hwd, bits_B1hwd)

    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        np.random.seed(41)
        torch.manual_seed(41)
        tf = vae.teacher_forcing(g["tgt_raw_features"], sched, flip=official_flip, requant=True)
    np.random.set_state(np_state)
    torch.testing.assert_close(tf.x_BLd, g["bsc.target_x_BLC_wo_prefix"], **ULP_TOL)
    for k in range(len(sched)):
        assert torch.equal(tf.labels[k], g[f"bsc.gt_bits.{k}"].long()), f"labels, scale {k}"
        assert torch.equal(tf.input_bits[k], g[f"bsc.flipped_bits_vae_layout.{k}"].long()), (
            f"flips, scale {k}"
        )


def test_replaying_labels_through_inference_gives_the_training_inputs(vae: VAE, sched, forward_golden):
    """Equal up to float32 rounding, not bit for bit: training accumulates the quantizer's
    straight-through output, the sampler codes rebuilt from bits (varedit/NOTES.md)."""
    with torch.no_grad():
        tf = vae.teacher_forcing(forward_golden["tgt_raw_features"], sched)
        f_hat, inputs = None, []
        for si, bits in enumerate(tf.labels):
            f_hat, nxt = vae.next_scale_input(si, bits, f_hat, sched)
            if nxt is not None:
                inputs.append(nxt)
    assert nxt is None and f_hat.shape[1:3] == (vae.config.codebook_dim, 1)
    torch.testing.assert_close(torch.cat(inputs, 1), tf.x_BLd, **ULP_TOL)


# ----- inference path: golden_infer / golden_e2e (official autoregressive_infer_cfg) -----


@pytest.mark.parametrize("which", [0, 1])
def test_inference_update_and_decode_match_official(case: str, vae: VAE, sched, which: int):
    g = load_file(GOLDEN / case / f"{INFER_CASES[case][which]}.safetensors")
    with torch.no_grad():
        src = vae.img_to_source_tokens(_u8_to_x(g["input.src_img_u8"][None]), sched)
        torch.testing.assert_close(src, g["src_img_prefix"], **FLOAT_TOL)
        f_hat = None
        for si, grid in enumerate(sched):
            bits_B1hwd = g[f"idx_Bld.{si}"].long()
            bits_Bld = vae.bits_to_tokens(bits_B1hwd)  # what the sampler produced (token layout)
            assert bits_Bld.shape == (1, grid[1] * grid[2], vae.d_vae)
            assert torch.equal(vae.tokens_to_bits(bits_Bld, grid), bits_B1hwd)
            f_hat, _ = vae.next_scale_input(si, bits_Bld, f_hat, sched)
        torch.testing.assert_close(f_hat.squeeze(2), g["summed_codes"], **CODES_TOL)
        img = vae.decode(f_hat)
    if "decoded" in g:
        torch.testing.assert_close(img, g["decoded"], **FLOAT_TOL)
    # Official float32 post-processing: (x + 1) / 2 * 255 truncated to uint8, RGB -> BGR.
    u8 = ((img + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(-1)
    assert (u8.int() - g["img_u8_bgr"].int()).abs().max() <= 1


# ----- BSQ and layouts -----


@pytest.mark.parametrize(("dq", "code"), [(32, 0.1767767), (14, 0.26726127)])
def test_codes_are_renormalised_one_ulp_above_the_scale(dq: int, code: float):
    bsq = BSQ(dq)
    bits = torch.randint(0, 2, (2, 1, 3, 3, dq))
    codes = bsq.bits_to_codes(bits)  # (2, dq, 1, 3, 3)
    expected = torch.where(bits.movedim(-1, 1) > 0, code, -code).float()
    assert torch.equal(codes, expected)
    assert code > np.float32(1 / np.sqrt(dq))


def test_bsq_bits_are_signs_and_ties_give_zero():
    bsq = BSQ(4)
    z = torch.tensor([0.5, -2.0, 0.0, -0.0]).view(1, 4, 1, 1, 1)
    q, bits = bsq(z)
    assert bits.flatten().tolist() == [1, 0, 0, 0]
    torch.testing.assert_close(q.flatten(), torch.tensor([0.5, -0.5, -0.5, -0.5]))
    assert bsq.bits_to_index(bits).item() == 0b1000
    assert bsq.mask.tolist() == [8, 4, 2, 1]


def test_patchify_channel_order_and_round_trip():
    # Latent channel c at sub-pixel (dy, dx) of token (y, x) is token channel 4c + 2dy + dx.
    B, dq, h, w = 2, 3, 2, 3
    bits_B1hwd = torch.randint(0, 2, (B, 1, 2 * h, 2 * w, dq))
    tokens = vae_bits_to_tokens(bits_B1hwd, patchify=True)
    assert tokens.shape == (B, h * w, 4 * dq)
    for y, x, c, dy, dx in [(0, 0, 0, 0, 0), (1, 2, 2, 1, 0), (0, 1, 1, 0, 1), (1, 1, 2, 1, 1)]:
        assert (
            tokens[:, y * w + x, 4 * c + 2 * dy + dx].tolist()
            == bits_B1hwd[:, 0, 2 * y + dy, 2 * x + dx, c].tolist()
        )
    assert torch.equal(tokens_to_vae_bits(tokens, h, w, patchify=True), bits_B1hwd)
    plain = torch.randint(0, 2, (B, 1, h, w, dq))
    assert torch.equal(
        tokens_to_vae_bits(vae_bits_to_tokens(plain, patchify=False), h, w, patchify=False), plain
    )


# ----- bitwise self-correction -----


def test_self_correction_is_seeded_and_limited_to_its_scales():
    bits = torch.randint(0, 2, (2, 1, 8, 8, 16), generator=torch.Generator().manual_seed(0))
    flip = SelfCorrection(num_layers=2, strength=0.3, generator=torch.Generator().manual_seed(5))
    again = SelfCorrection(num_layers=2, strength=0.3, generator=torch.Generator().manual_seed(5))
    a, b = flip(1, bits), again(1, bits)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0, 1}
    assert (a != bits).float().mean() <= 0.3 + 0.05
    assert flip(2, bits) is None
    assert torch.equal(SelfCorrection(1, 0.0)(0, bits), bits)  # strength 0: no flips (still requantized)


# ----- tiny random VAEs: every API call and shape, both patchify modes -----


@pytest.mark.parametrize(
    "cfg",
    [
        VAEConfig(codebook_dim=4, patch_size=4, base_ch=32, ch_mult=(1, 2, 2), num_res_blocks=1),
        VAEConfig(
            codebook_dim=3, patch_size=2, base_ch=32, ch_mult=(1, 2), num_res_blocks=1, spatial_patchify=True
        ),
    ],
    ids=["tiny-A", "tiny-B"],
)
def test_tiny_vae_api_shapes(cfg: VAEConfig):
    torch.manual_seed(0)
    vae = VAE(cfg).eval()
    sched = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)]  # (h, w) grids are accepted too
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = cfg.d_vae
    with torch.no_grad():
        src = vae.img_to_source_tokens(x, sched)
        assert src.shape == (2, 64, d)
        tf = vae.teacher_forcing(vae.encode_features(x), sched, flip=SelfCorrection(3, 0.3))
        assert tf.x_BLd.shape == (2, 4 + 9 + 16 + 36 + 64, d)
        assert [t.shape for t in tf.labels] == [(2, h * w, d) for h, w in sched]
        clean = vae.teacher_forcing(vae.encode_features(x), sched).labels
        assert all(torch.equal(a, b) for a, b in zip(vae.img_to_labels(x, sched), clean, strict=True))
        f_hat = None
        for si, bits in enumerate(tf.labels):
            f_hat, nxt = vae.next_scale_input(si, bits, f_hat, sched)
            if si < len(sched) - 1:
                assert nxt.shape == (2, sched[si + 1][0] * sched[si + 1][1], d)
        img = vae.decode(f_hat)
    assert img.shape == (2, 3, 32, 32) and img.abs().max() <= 1
