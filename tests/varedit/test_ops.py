"""The speed-ups of varedit/NOTES.md section 5 compute what the plain ops compute; the CPU's
bfloat16 support is read from its flags."""

import logging

import pytest
import torch
import torch.nn.functional as F

from varedit import EditPipeline, write_random_checkpoint
from varedit.config import get_config
from varedit.ops import cpu_has_native_bf16, linear, linear_gelu
from varedit.vae import VAE
from varedit.vae.layers import Conv, Upsample


@pytest.mark.parametrize("grad", [False, True])
def test_linear_and_linear_gelu_match_f_linear(grad):
    g = torch.Generator().manual_seed(0)
    x, w, b = (
        torch.randn(2, 5, 16, generator=g),
        torch.randn(24, 16, generator=g),
        torch.randn(24, generator=g),
    )
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(linear(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
        expected = F.gelu(F.linear(x, w, b), approximate="tanh")
        torch.testing.assert_close(linear_gelu(x, w, b), expected, atol=1e-5, rtol=1e-5)


def test_linear_under_cpu_autocast_follows_autocast():
    x, w = torch.randn(3, 16), torch.randn(8, 16)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_equals_nearest_then_conv(channels_last):
    torch.manual_seed(0)
    up = Upsample(32)
    x = torch.randn(2, 32, 5, 7)
    expected = up.conv.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(up(x), expected, atol=1e-5, rtol=1e-5)
    x.requires_grad_()
    up(x).sum().backward()  # differentiable (VAE training)
    assert x.grad is not None and x.grad.shape == x.shape


def test_1x1_conv_on_channels_last_input():
    torch.manual_seed(0)
    conv = Conv(16, 8, 1)
    x = torch.randn(2, 16, 4, 6)
    with torch.inference_mode():
        y = conv(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, conv.conv(x), atol=1e-5, rtol=1e-5)


def test_vae_decodes_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    vae = VAE(get_config("tiny-patchify").vae).eval()  # its widths change, so 1x1 shortcuts run too
    z = torch.randn(1, vae.config.codebook_dim, 4, 4)
    with torch.inference_mode():
        ref = vae.decode(z)
        with torch.autocast("cpu", torch.bfloat16):
            img = vae.decode(z.contiguous(memory_format=torch.channels_last)).float()
    assert img.shape == ref.shape and (img - ref).abs().max() < 0.1


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),  # Ice Lake
        ("flags\t\t: avx2 avx512f avx512_bf16\n", True),  # Zen 4, Cooper Lake
        ("flags\t\t: avx512f amx_tile amx_bf16\n", True),  # Sapphire Rapids
        ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm v8.6
        ("Features\t: fp asimd sve\n", False),
        ("processor\t: 0\n", None),  # no flags line: unknown, not "no"
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bf16(path) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("native", "dtype", "warned"),
    [
        (False, torch.bfloat16, True),
        (True, torch.bfloat16, False),
        (None, torch.bfloat16, False),
        (False, torch.float32, False),
    ],
)
def test_bf16_blocks_on_a_cpu_without_bf16_instructions_are_warned_about(
    tmp_path, monkeypatch, caplog, native, dtype, warned
):
    """bfloat16 blocks take about twice float32's time there: a worker set up that way should say so."""
    monkeypatch.setattr("varedit.pipeline.cpu_has_native_bf16", lambda: native)
    folder = write_random_checkpoint(tmp_path, "tiny")
    with caplog.at_level(logging.WARNING, logger="varedit.pipeline"):
        EditPipeline.from_pretrained(folder, device="cpu", dtype=dtype)
    assert any("without bfloat16 instructions" in r.message for r in caplog.records) is warned
