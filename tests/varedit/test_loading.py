"""Lean loading: weights are adopted from the memory-mapped file, never copied twice; random
official-format folders have exactly the official layout."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from varedit import checkpoints as ckpt
from varedit.config import VARIANTS, get_config

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


def mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps the file `path`."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def mapped_from(path: Path, module: torch.nn.Module) -> set[str]:
    """Keys of `module`'s tensors whose memory lies in a mapping of the file `path` (not a copy)."""
    ranges = mappings(path)
    return {
        k
        for k, t in module.state_dict().items()
        if any(lo <= t.data_ptr() and t.data_ptr() + t.nbytes <= hi for lo, hi in ranges)
    }


@pytest.mark.parametrize(
    ("variant", "manifest"),
    [("2B-512", "manifest_infinity_2b.json"), ("8B-512", "manifest_infinity_8b.json")],
)
def test_official_layout_is_the_official_manifest(variant: str, manifest: str) -> None:
    official = json.loads((GOLDEN / manifest).read_text())
    official.pop("_config")
    layout = ckpt.official_layout(get_config(variant))
    assert {k: [list(shape), str(dt).removeprefix("torch.")] for k, (shape, dt) in layout.items()} == official


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("release")
    ckpt.write_random_official(folder, "tiny-patchify", seed=1)
    return folder


def test_official_file_in_bf16_is_adopted_without_a_copy(release: Path) -> None:
    cfg = get_config("tiny-patchify")
    tf_path, vae_path, t5_dir = ckpt.official_files(release, cfg)
    raw = torch.load(tf_path, weights_only=True)
    model = ckpt.load_official_transformer(tf_path, cfg, dtype=torch.bfloat16)
    assert mapped_from(tf_path, model) == set(model.state_dict())  # every tensor is the file's memory
    for key, value in ckpt.official_to_ours(raw, cfg).items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16 and model.head.weight.dtype == torch.float32
    vae = ckpt.load_vae(vae_path, cfg)
    assert not mappings(vae_path)  # the VAE holds copies and its file is no longer mapped
    assert torch.equal(vae.quantizer.lfq.mask, 2 ** torch.arange(cfg.vae.codebook_dim - 1, -1, -1))
    assert (t5_dir / "config.json").is_file()


def test_float32_blocks_are_converted_tensor_by_tensor(release: Path) -> None:
    cfg = get_config("tiny-patchify")
    model = ckpt.load_official_transformer(release / "tiny-patchify.pth", cfg, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_our_folder_is_adopted_without_a_copy(release: Path, tmp_path: Path) -> None:
    cfg = get_config("tiny-patchify")
    tf_path, vae_path, _ = ckpt.official_files(release, cfg)
    model = ckpt.load_official_transformer(tf_path, cfg, dtype=torch.bfloat16)
    ckpt.save_transformer_state(tmp_path / ckpt.TRANSFORMER_FILE, model.state_dict())
    ckpt.save_vae_state(tmp_path / ckpt.VAE_FILE, ckpt.load_vae(vae_path, cfg))
    again = ckpt.load_transformer_safetensors(tmp_path / ckpt.TRANSFORMER_FILE, cfg, dtype=torch.bfloat16)
    assert mapped_from(tmp_path / ckpt.TRANSFORMER_FILE, again) == set(again.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    ckpt.load_vae(tmp_path / ckpt.VAE_FILE, cfg)
    assert not mappings(tmp_path / ckpt.VAE_FILE)


def test_writing_to_loaded_weights_leaves_the_file_alone(release: Path) -> None:
    """Adopted tensors are private mappings: training a loaded model never edits its checkpoint."""
    cfg = get_config("tiny-patchify")
    tf_path, vae_path, _ = ckpt.official_files(release, cfg)
    model = ckpt.load_official_transformer(tf_path, cfg, dtype=torch.bfloat16)
    vae = ckpt.load_vae(vae_path, cfg)
    with torch.no_grad():
        model.blocks[0].ffn.fc1.weight.add_(1)
        vae.decoder.conv_out.conv.weight.add_(1)
    assert not torch.equal(
        ckpt.load_official_transformer(tf_path, cfg, dtype=torch.bfloat16).blocks[0].ffn.fc1.weight,
        model.blocks[0].ffn.fc1.weight,
    )
    assert not torch.equal(
        ckpt.load_vae(vae_path, cfg).decoder.conv_out.conv.weight, vae.decoder.conv_out.conv.weight
    )


def test_a_legacy_torch_save_file_is_read_without_mmap(release: Path, tmp_path: Path) -> None:
    # Before, a valid file re-saved in torch's pre-zip format was "not a readable checkpoint".
    cfg = get_config("tiny-patchify")
    tf_path, _, _ = ckpt.official_files(release, cfg)
    legacy = tmp_path / tf_path.name
    torch.save(torch.load(tf_path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    model = ckpt.load_official_transformer(legacy, cfg)
    for key, value in ckpt.load_official_transformer(tf_path, cfg).state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_damaged_official_files_are_checkpoint_errors(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VAE tensor of the wrong kind (cast to float32, it would look like weights), or a file that
    holds no state dict, is a CheckpointError naming the file, for loading and for conversion alike
    (before: RuntimeError, ValueError, AttributeError without the file's name)."""
    cfg = get_config("tiny-patchify")
    tf_path, vae_path, _ = ckpt.official_files(release, cfg)
    vae_state = torch.load(vae_path, weights_only=True)["vae"]
    key = next(k for k, v in vae_state.items() if v.is_floating_point())
    damaged = [  # an int VAE tensor, a list, a bare tensor
        {"vae": {**vae_state, key: vae_state[key].to(torch.int32)}},
        [torch.zeros(3)],
        torch.zeros(3),
    ]
    for content in damaged:
        bad = tmp_path / vae_path.name
        torch.save(content, bad)
        with pytest.raises(ckpt.CheckpointError, match=str(bad)):
            ckpt.load_vae(bad, cfg)
    stand_in = dataclasses.replace(cfg, name="2B-512")  # convert reads official variants only
    monkeypatch.setitem(VARIANTS, "2B-512", stand_in)
    folder = tmp_path / "release"
    tf_path = ckpt.write_random_official(folder, stand_in, seed=2)
    torch.save([torch.zeros(3)], tf_path)
    with pytest.raises(ckpt.CheckpointError, match=f"{tf_path} is not a transformer state dict"):
        ckpt.convert_official(folder, tmp_path / "converted", variant="2B-512")
