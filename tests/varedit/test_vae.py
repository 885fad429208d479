"""VAE parity with the official code: golden tensors (T1 = 2B recipe, T2 = 8B recipe with spatial
patchify), full-size state-dict manifests, configuration translation and strict checkpoint loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.parity import CODES_TOL
from varedit.vae import (
    PRESETS,
    VAE,
    VAECheckpointError,
    VAEConfig,
    config_from_state_dict,
    load_official_vae,
)

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
# Reruns of the official code itself (other thread counts, compile) moved
# float outputs by up to ~8e-5; encoder convolutions round differently across CPUs.
FLOAT_TOL = {"rtol": 1e-4, "atol": 1e-4}
MANIFESTS = {
    "infinity_vae_d32reg": ("manifest_vae_d32reg.json", 110_118_051),
    "infinity_vae_d56_f8_14_patchify": ("manifest_vae_d56_f8_14_patchify.json", 81_624_209),
}


def golden_config(case: str) -> dict:
    return json.loads((GOLDEN / case / "config.json").read_text())


def golden_schedule(case: str) -> list[tuple[int, int, int]]:
    return [tuple(g) for g in golden_config(case)["scale_schedule"]]


@pytest.fixture(scope="module", params=["T1", "T2"])
def case(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def vae(case: str) -> VAE:
    cfg = VAEConfig.from_official(golden_config(case))
    return load_official_vae(GOLDEN / case / f"vae_{case}.pth", cfg)


@pytest.fixture(scope="module")
def t1_state() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN / "T1" / "vae_T1.pth", weights_only=True)["vae"]


# ----- configuration -----


def test_from_official_translates_golden_configs():
    t1 = VAEConfig.from_official(golden_config("T1"))
    t2 = VAEConfig.from_official(golden_config("T2"))
    assert t1 == VAEConfig(
        codebook_dim=32, patch_size=16, base_ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=2
    )
    assert t2 == VAEConfig(
        codebook_dim=14,
        patch_size=8,
        base_ch=32,
        ch_mult=(1, 2, 1, 1),
        num_res_blocks=1,
        spatial_patchify=True,
    )
    assert (t1.d_vae, t2.d_vae) == (32, 56)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_from_official_manifest_config_gives_the_preset(name: str):
    manifest = json.loads((GOLDEN / MANIFESTS[name][0]).read_text())
    assert VAEConfig.from_official(manifest["_config"]) == VAEConfig.preset(name)


def test_from_official_vae_model_kwargs_use_the_hard_coded_defaults():
    kwargs = json.loads((GOLDEN / MANIFESTS["infinity_vae_d32reg"][0]).read_text())["_config"][
        "vae_model_call"
    ]
    assert VAEConfig.from_official(kwargs) == PRESETS["infinity_vae_d32reg"]


def test_from_official_refuses_unsupported_settings():
    ns = dict(golden_config("T1")["vae"]["autoencoder_args"], cnn_attention="yes", use_vae=True)
    with pytest.raises(ValueError, match="cnn_attention"):
        VAEConfig.from_official(ns)


def test_config_rejects_levels_that_disagree_with_patch_size():
    with pytest.raises(ValueError, match="log2"):
        VAEConfig(patch_size=8, ch_mult=(1, 2, 4, 4, 4))


# ----- golden_vae: official AutoEncoder.encode / decode / decode_from_indices -----


def test_golden_vae_encode_decode(case: str, vae: VAE):
    g = load_file(GOLDEN / case / "golden_vae.safetensors")
    sched = golden_schedule(case)
    with torch.no_grad():
        enc = vae.encode(g["input.x"], sched)
        torch.testing.assert_close(enc.h_BdHW, g["encode.h"], **FLOAT_TOL)
        torch.testing.assert_close(enc.z_BdHW, g["encode.z"], **FLOAT_TOL)
        for k, bits in enumerate(enc.bits):
            assert torch.equal(bits, g[f"encode.bit_indices.{k}"].long()), f"scale {k}"
        assert len(enc.var_inputs) == len(sched) - 1
        for k, var in enumerate(enc.var_inputs):
            torch.testing.assert_close(var, g[f"encode.var_input.{k}"], **FLOAT_TOL)
        torch.testing.assert_close(vae.decode(enc.z_BdHW), g["decode.x_recon"], **FLOAT_TOL)
        # decode_from_indices: codes rebuilt from the golden bits; no encoder involved.
        tokens = [vae.bits_to_tokens(g[f"encode.bit_indices.{k}"].long()) for k in range(len(sched))]
        codes = vae.bits_to_f_hat(tokens, sched)
        torch.testing.assert_close(codes, g["decode_from_indices.summed_codes"], **CODES_TOL)


def test_golden_vae_decode_of_golden_latent(case: str, vae: VAE):
    # Same decoder input as the official run, so only the decoder's own arithmetic is compared.
    g = load_file(GOLDEN / case / "golden_vae.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(g["encode.z"]), g["decode.x_recon"], **FLOAT_TOL)


def test_encode_refuses_a_schedule_that_misses_the_latent_size(case: str, vae: VAE):
    with pytest.raises(ValueError, match="latent grid"):
        vae.encode(torch.zeros(1, 3, 64, 64), golden_schedule(case))


# ----- full-size manifests -----


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_state_dict_matches_manifest(name: str):
    filename, n_params = MANIFESTS[name]
    manifest = json.loads((GOLDEN / filename).read_text())
    config = manifest.pop("_config")
    with torch.device("meta"):
        vae = VAE(VAEConfig.preset(name))
    got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in vae.state_dict().items()}
    assert got == manifest
    # The README counts parameters only: the two int64 mask entries are one buffer, not parameters.
    assert sum(p.numel() for p in vae.parameters()) == n_params == config["num_parameters"]
    assert sum(torch.Size(s).numel() for k, (s, _) in manifest.items() if not k.endswith(".mask")) == n_params


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_config_inferred_from_full_size_weights_is_the_preset(name: str):
    with torch.device("meta"):
        state = VAE(VAEConfig.preset(name)).state_dict()
    assert config_from_state_dict(state) == PRESETS[name]


def test_config_inferred_from_golden_weights(case: str, vae: VAE):
    state = torch.load(GOLDEN / case / f"vae_{case}.pth", weights_only=True)["vae"]
    assert config_from_state_dict(state) == vae.config.with_patchify(False)


# ----- strict checkpoint loading -----


def _save(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "vae.pth"
    torch.save(obj, path)
    return path


def _plain_spelling(key: str) -> str:
    return key.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias").replace(".norm.", ".")


def test_both_key_spellings_and_a_bare_state_dict_load(tmp_path: Path, t1_state):
    cfg = VAEConfig.from_official(golden_config("T1"))
    plain = {_plain_spelling(k): v for k, v in t1_state.items()}
    assert "encoder.conv_in.weight" in plain and "encoder.down.0.downsample.conv.weight" in plain
    for obj in ({"vae": plain, "ema": {}}, t1_state):
        vae = load_official_vae(_save(tmp_path, obj), cfg)
        for k, v in vae.state_dict().items():
            assert torch.equal(v, t1_state[k]), k


def test_mask_buffers_are_optional_but_checked(tmp_path: Path, t1_state):
    cfg = VAEConfig.from_official(golden_config("T1"))
    no_mask = {k: v for k, v in t1_state.items() if not k.endswith(".mask")}
    load_official_vae(_save(tmp_path, {"vae": no_mask}), cfg)
    bad = dict(t1_state, **{"quantize.lfq.mask": torch.zeros(32, dtype=torch.long)})
    with pytest.raises(VAECheckpointError, match="quantize.lfq.mask"):
        load_official_vae(_save(tmp_path, {"vae": bad}), cfg)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("decoder.conv_out.conv.bias"), "missing.*decoder.conv_out.conv.bias"),
        (
            lambda sd: sd.update({"encoder.mid.attn_1.q.weight": torch.zeros(1)}),
            "match no.*encoder.mid.attn_1.q",
        ),
        (
            lambda sd: sd.update({"encoder.conv_in.conv.bias": torch.zeros(7)}),
            "encoder.conv_in.conv.bias.*\\(7,\\)",
        ),
        (lambda sd: sd.update({"encoder.conv_in.bias": sd["encoder.conv_in.conv.bias"]}), "twice"),
    ],
    ids=["missing", "unexpected", "shape", "both-spellings"],
)
def test_checkpoint_that_does_not_fit_raises_naming_the_key(tmp_path: Path, t1_state, edit, message):
    state = dict(t1_state)
    edit(state)
    with pytest.raises(VAECheckpointError, match=message):
        load_official_vae(_save(tmp_path, {"vae": state}), VAEConfig.from_official(golden_config("T1")))


def test_wrong_architecture_is_reported(tmp_path: Path, t1_state):
    with pytest.raises(VAECheckpointError, match="shape"):
        load_official_vae(
            _save(tmp_path, {"vae": t1_state}),
            VAEConfig(codebook_dim=32, base_ch=32, ch_mult=(1, 1, 1, 1, 2)),
        )
