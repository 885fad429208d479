"""Model behaviour on CPU: cached generation = teacher forcing, batching, seeds, cancel, formats, CLI."""

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import run_with_stdout_closed
from tests.parity import assert_matches_reference
from varedit import CheckpointError, EditCancelled, EditPipeline, write_random_checkpoint
from varedit.checkpoints import load_official_golden
from varedit.cli import main as cli_main
from varedit.config import get_config
from varedit.sampling import generate, top_k_top_p_
from varedit.text import TextFeatures

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
REPO = Path(__file__).parents[2]
BUNDLED = REPO / "models" / "varedit-shapes-64"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image(seed: int, w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=3)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_dir) -> EditPipeline:
    return EditPipeline.from_pretrained(tiny_dir, device="cpu")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(folder: Path) -> dict[str, int]:
    """Permission bits of every file under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*.*")}


# ---- the central test: KV-cached inference with forced bits == teacher forcing -----------------


@pytest.mark.parametrize("name", ["T1", "T2"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_cached_generation_with_forced_bits_equals_teacher_forcing(name, cfg):
    _, model, vae = load_official_golden(GOLDEN / name)
    path = GOLDEN / name / "golden_forward.safetensors"
    g = load_file(path)
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    sched = [(h, w) for _, h, w in meta["scale_schedule"]]
    text = TextFeatures.from_compact(g["input.text.kv_compact"], meta["lens"])  # lens 5 and 11
    labels = [g[f"gt_bits.{k}"].long() for k in range(len(sched))]
    # the inputs the sampler builds from these bits (codes, running sum, resized to the next grid)
    f_hat, inputs = None, []
    for k, bits in enumerate(labels):
        f_hat, nxt = vae.next_scale_input(k, bits, f_hat, sched)
        if nxt is not None:
            inputs.append(nxt)
    src = g["source_x_BLC_wo_prefix"]
    gens = [torch.Generator().manual_seed(0) for _ in range(2)]
    out = generate(model, vae, text, src, sched, gens, cfg=cfg, tau=1.0, forced_bits=labels, keep_logits=True)
    cached = torch.cat(out.logits, dim=1)  # (bs, L, V)
    with torch.no_grad():
        tf_cond = model(text, src, torch.cat(inputs, 1), sched)
        assert_matches_reference(cached[:2], tf_cond)
        if cfg != 1:
            null = torch.ones(2, dtype=torch.bool)
            tf_uncond = model(text, src, torch.cat(inputs, 1), sched, null_text_B=null)
            assert_matches_reference(cached[2:], tf_uncond)
        else:
            assert cached.shape[0] == 2  # no unconditional half at cfg 1


# ---- pipeline ------------------------------------------------------------------------------------


def test_batch_of_four_equals_each_item_alone(tiny_pipe):
    imgs = [image(1, 40, 30), image(2, 128, 128), image(3, 20, 70), image(4, 200, 150)]
    texts = ["make it red", "add a hat", "remove the dog", "x"]
    seeds = [11, 12, 13, 14]
    batch = tiny_pipe.edit(imgs, texts, seeds=seeds)
    assert [o.size for o in batch] == [im.size for im in imgs]
    for im, text, seed, out in zip(imgs, texts, seeds, batch, strict=True):
        [alone] = tiny_pipe.edit([im], [text], seeds=[seed])
        assert np.array_equal(np.asarray(alone), np.asarray(out))


def test_seed_determines_the_output(tiny_pipe):
    im = image(5, 64, 48)
    a, b, c = (tiny_pipe.edit(im, "make it blue", seeds=s)[0] for s in (7, 7, 8))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert a.info["seed"] == 7 and a.mode == "RGB"
    [d] = tiny_pipe.edit(im, "make it blue")  # random seed, reported
    assert isinstance(d.info["seed"], int)


def test_on_scale_reports_progress_and_can_cancel(tiny_pipe):
    calls = []
    tiny_pipe.edit(image(6, 32, 32), "a", seeds=1, on_scale=lambda k, K: calls.append((k, K)))
    K = tiny_pipe.num_scales()
    assert calls == [(k, K) for k in range(1, K + 1)]
    with pytest.raises(EditCancelled) as e:
        tiny_pipe.edit(image(6, 32, 32), "a", seeds=1, on_scale=lambda k, K: k < 2)
    assert (e.value.done, e.value.total) == (2, K)


def test_non_image_inputs_are_refused(tiny_pipe, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        tiny_pipe.edit(bad, "a")
    with pytest.raises(ValueError, match="PIL image"):
        tiny_pipe.edit([np.zeros((4, 4, 3))], ["a"])
    with pytest.raises(ValueError, match="one instruction per image"):
        tiny_pipe.edit([image(1, 8, 8)], ["a", "b"])


def test_save_pretrained_round_trip_and_bf16_blocks(tiny_pipe, tmp_path):
    im = image(9, 50, 50)
    [ref] = tiny_pipe.edit(im, "turn it green", seeds=4)
    again = EditPipeline.from_pretrained(tiny_pipe.save_pretrained(tmp_path / "copy"), device="cpu")
    assert np.array_equal(np.asarray(again.edit(im, "turn it green", seeds=4)[0]), np.asarray(ref))
    # bf16 blocks on CPU run and stay close to float32 (guards dtype handling around the fp32 stream)
    bf16 = EditPipeline.from_pretrained(tmp_path / "copy", device="cpu", dtype=torch.bfloat16)
    assert bf16.transformer.blocks[0].sa.mat_qkv.weight.dtype == torch.bfloat16
    assert bf16.transformer.head.weight.dtype == torch.float32
    sched = bf16.config.schedule()
    text = bf16.text_encoder.encode(["turn it green"])
    src = torch.randn(1, sched[-1][0] * sched[-1][1], bf16.config.d_vae)
    tgt = torch.randn(1, sum(h * w for h, w in sched) - 1, bf16.config.d_vae) * 0.1
    with torch.no_grad():
        ref_logits = again.transformer(text, src, tgt, sched)
        torch.testing.assert_close(bf16.transformer(text, src, tgt, sched), ref_logits, atol=0.15, rtol=0.05)
    assert bf16.edit(im, "turn it green", seeds=4)[0].size == im.size


def test_bundled_model_round_trip_keeps_its_examples(tmp_path, umask_022):
    """Saving the shipped model writes a folder that loads again, with the example images it names, the
    same serving facts and the same float32 edits; every file readable by others (umask 022)."""
    pipe = EditPipeline.from_pretrained(BUNDLED, device="cpu", dtype=torch.float32)
    assert pipe.serving.examples
    copy = EditPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"), device="cpu")
    assert copy.serving == pipe.serving
    for e in pipe.serving.examples:
        assert (tmp_path / "copy" / e.image).read_bytes() == (BUNDLED / e.image).read_bytes()
    example = pipe.serving.examples[0]
    [ref] = pipe.edit(BUNDLED / example.image, example.instruction, seeds=2)
    [out] = copy.edit(tmp_path / "copy" / example.image, example.instruction, seeds=2)
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    assert set(modes(tmp_path / "copy").values()) == {0o644}
    # a pipeline that was not loaded from a folder has no images for its examples: it states none
    bare = EditPipeline(pipe.config, pipe.transformer, pipe.vae, pipe.text_encoder, serving=pipe.serving)
    again = EditPipeline.from_pretrained(bare.save_pretrained(tmp_path / "bare"), device="cpu")
    assert again.serving.examples == () and again.serving.sampling == pipe.serving.sampling


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    """safetensors writes 0600 files; a folder a host writes must be readable where the umask says so."""
    old = os.umask(umask)
    try:
        folder = write_random_checkpoint(tmp_path / "model", "tiny")
    finally:
        os.umask(old)
    found = modes(folder)
    assert {"transformer.safetensors", "vae.safetensors", "text_encoder/model.safetensors"} <= set(found)
    assert found == dict.fromkeys(found, 0o666 & ~umask)


def test_damaged_folders_name_the_file(tiny_dir, tmp_path, capsys):
    """A truncated weight file, a config.json without its "config" or an empty text encoder folder:
    a CheckpointError naming the file, which `varedit edit` reports in one line (exit 2)."""
    src = tmp_path / "in.png"
    image(13, 16, 16).save(src)
    for name in ("transformer.safetensors", "vae.safetensors"):
        folder = shutil.copytree(tiny_dir, tmp_path / name)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=f"{name}: not a readable safetensors file"):
            EditPipeline.from_pretrained(folder, device="cpu")
        argv = ["edit", str(src), "x", "-o", str(tmp_path / "out.png"), "--model", str(folder)]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("varedit: error: ") and str(folder / name) in err and err.count("\n") == 1
    folder = shutil.copytree(tiny_dir, tmp_path / "no-config")
    meta = json.loads((folder / "config.json").read_text())
    del meta["config"]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match='config.json has no "config" section'):
        EditPipeline.from_pretrained(folder, device="cpu")
    folder = shutil.copytree(tiny_dir, tmp_path / "no-t5")
    shutil.rmtree(folder / "text_encoder")
    (folder / "text_encoder").mkdir()
    with pytest.raises(CheckpointError, match="text_encoder: not a loadable T5 encoder folder"):
        EditPipeline.from_pretrained(folder, device="cpu")
    argv = ["edit", str(src), "x", "-o", str(tmp_path / "out.png"), "--model", str(folder)]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1  # transformers' message spans several lines


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta["config"].update(depth="2"), "config field 'depth' must be int, got '2'"),
        (lambda meta: meta["config"].update(width=128.0), "config field 'width' must be int, got 128.0"),
        (lambda meta: meta["config"]["vae"].update(ch_mult=[1, "2"]), "config field 'ch_mult' must be"),
        (
            lambda meta: meta["config"]["vae"].update(spatial_patchify=0),
            "config field 'spatial_patchify' must be bool",
        ),
        (lambda meta: meta.update(serving=[]), "serving must be an object, got \\[\\]"),
        (lambda meta: meta["serving"].pop("resolutions"), "serving has no resolutions"),
        (lambda meta: meta["serving"].update(examples=[1]), "serving examples must be a list of"),
    ],
)
def test_config_values_of_the_wrong_kind_are_named(tiny_dir, tmp_path, change, message):
    # before: "not all arguments converted during string formatting", a TypeError from torch.randn,
    # an AttributeError, or "config.json: 'resolutions'"
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    change(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"config.json: {message}"):
        EditPipeline.from_pretrained(folder, device="cpu")


def test_a_config_json_that_does_not_parse_is_named(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    (folder / "config.json").write_text('{"format": ')  # before: "neither a varedit folder nor ..."
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        EditPipeline.from_pretrained(folder, device="cpu")


def test_t5_weights_missing_from_the_file_are_refused(tiny_dir, tmp_path):
    """transformers fills missing T5 weights with fresh random values and goes on: before, every load
    encoded the same instruction differently and the same seed gave another image."""
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if "DenseReluDense.wo" in k)
    del state[key]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"lack 1 tensors: \\['{key}'\\]"):
        EditPipeline.from_pretrained(folder, device="cpu")


def test_sampling_and_device_are_checked_before_any_work(tiny_pipe, tiny_dir, tmp_path, monkeypatch, capsys):
    im = image(14, 16, 16)
    K = tiny_pipe.num_scales()
    with pytest.raises(ValueError, match="tau must be a finite number greater than 0 .*, got 0.0"):
        tiny_pipe.edit(im, "a", seeds=1, tau=0)
    with pytest.raises(ValueError, match="tau must be .* greater than 0"):
        tiny_pipe.edit(im, "a", seeds=1, tau=[0.5] * (K - 1) + [-1.0])
    with pytest.raises(ValueError, match="cfg must be a finite number at every scale, got nan"):
        tiny_pipe.edit(im, "a", seeds=1, cfg=float("nan"))
    assert tiny_pipe.edit(im, "a", seeds=1, cfg=0.0, tau=[0.5] * K)[0].size == im.size  # cfg 0: uncond only
    src = tmp_path / "in.png"
    im.save(src)
    argv = ["edit", str(src), "x", "-o", str(tmp_path / "out.png"), "--model", str(tiny_dir)]
    assert cli_main([*argv, "--tau", "0"]) == 2
    assert "tau must be a finite number greater than 0" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        EditPipeline.from_pretrained(tiny_dir, device="cuda")
    assert cli_main([*argv, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_loading_errors_are_clear(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        EditPipeline.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="neither a varedit folder"):
        EditPipeline.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="holds variant 'tiny'"):
        EditPipeline.from_pretrained(tiny_dir, variant="2B-512")
    # an official folder whose 2B-512.pth holds another model: refused, naming keys and shapes
    official = tmp_path / "release"
    official.mkdir()
    (official / "2B-512.pth").write_bytes((GOLDEN / "T1" / "infinity_T1.pth").read_bytes())
    with pytest.raises(CheckpointError, match="missing infinity_vae_d32reg.pth"):
        EditPipeline.from_pretrained(official)
    (official / "infinity_vae_d32reg.pth").write_bytes(b"")
    (official / "flan-t5-xl").mkdir()
    with pytest.raises(CheckpointError, match="does not fit config '2B-512'"):
        EditPipeline.from_pretrained(official)
    with pytest.raises(CheckpointError, match="no 8B-512.pth"):
        EditPipeline.from_pretrained(official, variant="8B-512")


def test_a_text_encoder_folder_missing_a_file_or_of_another_width_is_refused(tiny_dir, tmp_path, capsys):
    """transformers loads a T5 folder without tokenizer files (an empty tokenizer: every word <unk>, so
    every instruction means the same) and one without config.json (a default T5, then a RuntimeError);
    a T5 of another width loads and fails at the first edit. Each is a CheckpointError at load."""
    broken = {
        "no tokenizer": lambda t5: [(t5 / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
        "no config.json": lambda t5: (t5 / "config.json").unlink(),
        "config of another T5": lambda t5: (t5 / "config.json").write_text(
            json.dumps({**json.loads((t5 / "config.json").read_text()), "d_model": 512})
        ),
    }
    for name, damage in broken.items():
        folder = shutil.copytree(tiny_dir, tmp_path / name)
        damage(folder / "text_encoder")
        with pytest.raises(CheckpointError, match="text_encoder: not a loadable T5 encoder folder"):
            EditPipeline.from_pretrained(folder, device="cpu")
    folder = shutil.copytree(tiny_dir, tmp_path / "narrow-t5")
    shutil.rmtree(folder / "text_encoder")
    shutil.copytree(BUNDLED / "text_encoder", folder / "text_encoder")  # width 128, tiny's is 256
    with pytest.raises(CheckpointError, match="a T5 of width 128 does not fit config 'tiny'"):
        EditPipeline.from_pretrained(folder, device="cpu")
    src = tmp_path / "in.png"
    image(13, 16, 16).save(src)
    assert cli_main(["edit", str(src), "x", "-o", str(tmp_path / "o.png"), "--model", str(folder)]) == 2
    assert "does not fit config 'tiny'" in capsys.readouterr().err


def test_cuts_seeds_and_resolution_are_checked_before_any_work(tiny_pipe, monkeypatch):
    """A top-k or top-p the sampler would misread (silently no cut, or greedy), a seed torch cannot
    take, or resolution 0 (read as "the default") is refused before the text is encoded."""
    im = image(15, 16, 16)
    [ref] = tiny_pipe.edit(im, "a", seeds=1, cfg=2.0)
    [same] = tiny_pipe.edit(im, "a", seeds=1, cfg=np.float32(2.0))  # a numpy scalar is a scalar
    assert np.array_equal(np.asarray(same), np.asarray(ref))
    for ok in ({"top_k": 0}, {"top_p": 0}, {"top_p": 1}, {"top_k": np.int64(2)}, {"seeds": 2**64 - 1},
               {"seeds": np.int64(3)}, {"negative_instruction": None}):  # fmt: skip
        assert tiny_pipe.edit(im, "a", **{"seeds": 1, **ok})[0].size == im.size
    monkeypatch.setattr(tiny_pipe.text_encoder, "encode", lambda prompts: pytest.fail("encoded"))
    refused = [
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"top_p": 1.5}, r"top_p must be a number in \[0, 1\]"),
        ({"top_p": -0.5}, r"top_p must be a number in \[0, 1\]"),
        ({"top_p": float("nan")}, r"top_p must be a number in \[0, 1\]"),
        ({"seeds": 2**64}, "seed 18446744073709551616 is out of range"),
        ({"seeds": -(2**63) - 1}, "is out of range"),
        ({"resolution": 0}, "resolution 0 is not one of"),
        # a 1x1 latent of width 32: GroupNorm would see one value per group (it once failed there)
        ({"resolution": 16}, r"resolution 16 is not one of \(32, .*\) \(too small for its VAE\)"),
        # inputs of the wrong type, once taken as seed 1, cfg [3.0] or the rows of an array
        ({"seeds": True}, "seeds must be integers"),
        ({"seeds": [1.7]}, "seeds must be integers"),
        ({"cfg": "3"}, "cfg must be a number or one number per scale, got '3'"),
        ({"tau": [True] * 5}, "tau values must be numbers, got True"),
        ({"negative_instruction": 5}, "negative_instruction must be a string or a list of strings"),
    ]
    for kwargs, message in refused:
        with pytest.raises(ValueError, match=message):
            tiny_pipe.edit(im, "a", **{"seeds": 1, **kwargs})
    with pytest.raises(ValueError, match="resolution 0 is not one of"):
        tiny_pipe.num_scales(0)
    with pytest.raises(ValueError, match="instructions must be a string or a list of strings, got None"):
        tiny_pipe.edit(im, None, seeds=1)
    with pytest.raises(ValueError, match="expected a PIL image or an image path, got ndarray"):
        tiny_pipe.edit(np.asarray(im), "a", seeds=1)  # before: 16 images (its rows), 1 instruction


def test_cli_refuses_bad_threads_devices_and_names_in_one_line(tiny_dir, tmp_path, capsys):
    src = tmp_path / "in.png"
    image(16, 16, 16).save(src)
    argv = ["edit", str(src), "x", "-o", str(tmp_path / "out.png"), "--model", str(tiny_dir)]
    for threads in ("0", "-1"):
        with pytest.raises(SystemExit) as exit_:
            cli_main([*argv, "--threads", threads])
        assert exit_.value.code == 2 and "--threads: must be at least 1" in capsys.readouterr().err
    assert cli_main([*argv, "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("varedit: error: not a device: 'gpu'") and err.count("\n") == 1
    assert cli_main(["random", str(tmp_path / "m"), "--config", "nope"]) == 2
    assert capsys.readouterr().err.startswith("varedit: error: unknown variant 'nope'")  # not repr-quoted


def test_cli_refuses_an_output_it_cannot_write_before_loading_the_model(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    """An output of no image format is refused before the model loads and the edit runs (before: after
    both, minutes for a release model); a missing folder is made, as the client's commands do."""
    src = tmp_path / "in.png"
    image(16, 16, 16).save(src)
    argv = ["edit", str(src), "x", "--model", str(tiny_dir), "-o"]
    with monkeypatch.context() as patched:
        patched.setattr(EditPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
        assert cli_main([*argv, str(tmp_path / "out.xyz")]) == 2
    assert capsys.readouterr().err == (
        f"varedit: error: cannot write {tmp_path / 'out.xyz'}: no image format saves .xyz files (use .png)\n"
    )
    assert cli_main([*argv, str(tmp_path / "new" / "out.png"), "--seed", "1"]) == 0
    assert Image.open(tmp_path / "new" / "out.png").size == (16, 16)


def test_a_weight_file_holding_integer_tensors_is_refused(tiny_dir, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_dir, damaged)
    weights = damaged / "transformer.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.startswith("blocks."))
    state[key] = state[key].to(torch.int32)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=f"holds tensors of the wrong kind: \\['{key}: torch.int32'\\]"):
        EditPipeline.from_pretrained(damaged, device="cpu")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, "bfloat16"])
def test_a_block_dtype_the_model_cannot_run_is_refused_at_load(tiny_dir, dtype):
    with pytest.raises(ValueError, match="dtype must be one of"):
        EditPipeline.from_pretrained(tiny_dir, device="cpu", dtype=dtype)


def test_a_training_checkpoint_without_the_model_is_a_checkpoint_error(tmp_path):
    release = tmp_path / "VAREdit"
    release.mkdir()
    torch.save({"trainer": {"optimizer": {}}}, release / "2B-512.pth")
    (release / "infinity_vae_d32reg.pth").write_bytes(b"")
    (release / "flan-t5-xl").mkdir()
    with pytest.raises(CheckpointError, match=r"2B-512.pth: a training checkpoint without the model state"):
        EditPipeline.from_pretrained(release, device="cpu")


UNUSABLE_SAMPLING = [
    {"tau": 0},
    {"cfg": float("nan")},
    {"top_p": 1.5},
    {"top_k": -1},
    {"top_k": 1.5},
    {"cfg": "3"},
    {"tau": True},
]


@pytest.mark.parametrize("sampling", UNUSABLE_SAMPLING, ids=str)
def test_unusable_sampling_defaults_are_refused_at_load(tiny_dir, tmp_path, sampling):
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["serving"]["sampling"].update(sampling)
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises((CheckpointError, ValueError), match="sampling defaults need"):
        EditPipeline.from_pretrained(folder)


@pytest.mark.parametrize("resolutions", [["128"], [128.7], "128", [True]], ids=str)
def test_resolutions_that_are_not_integers_are_refused_at_load(tiny_dir, tmp_path, resolutions):
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["serving"]["resolutions"] = resolutions
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises((CheckpointError, ValueError), match="resolutions must be a list of integers"):
        EditPipeline.from_pretrained(folder)


def test_a_side_too_small_for_the_vae_is_no_resolution(tiny_dir, tmp_path):
    """tiny's 16 px is a 1x1 latent of width 32 (one value per GroupNorm group); tiny-patchify's is
    2x2 and S's is 256 wide, so they keep it. A folder claiming the side is refused at load."""
    assert get_config("tiny").resolutions[0] == 32
    assert get_config("tiny-patchify").resolutions[0] == get_config("S").resolutions[0] == 16
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["serving"]["resolutions"] = [16]
    (folder / "config.json").write_text(json.dumps(meta))
    too_small = r"cannot serve resolutions \[16\] \(\[16\] too small for its VAE\)"
    with pytest.raises((CheckpointError, ValueError), match=too_small):
        EditPipeline.from_pretrained(folder)


@pytest.mark.parametrize("image", ["../outside.png", "/etc/passwd", ""])
def test_example_images_must_lie_inside_the_folder(tiny_dir, tmp_path, image):
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["serving"]["examples"] = [{"instruction": "make it blue", "image": image}]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises((CheckpointError, ValueError), match="inside the model folder"):
        EditPipeline.from_pretrained(folder)


def test_top_p_cuts_the_minority_bit_at_three_percent():
    logits = torch.tensor([[[0.0, 3.5], [0.0, 3.4], [1.0, 1.0], [-4.0, 0.0]]])  # minority p .029 .032 .5 .018
    out = top_k_top_p_(logits.clone(), top_k=900, top_p=0.97)
    assert torch.isinf(out).tolist() == [[[True, False], [False, False], [False, False], [True, False]]]


# ---- command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_cli_output_into_a_closed_pipe_ends_quietly_with_141(unbuffered):
    # `varedit info MODEL | head -1`; before: "varedit: error: [Errno 32] Broken pipe" and 2, or
    # "Exception ignored ... BrokenPipeError" and 120
    command = [sys.executable, "-m", "varedit.cli", "info", str(BUNDLED)]
    done = run_with_stdout_closed(command, dict(os.environ), unbuffered, cwd=REPO)
    assert (done.returncode, done.stderr) == (141, "")


def test_cli_edits_a_png_end_to_end(tmp_path, capsys):
    model = tmp_path / "model"
    assert cli_main(["random", str(model), "--config", "tiny-patchify"]) == 0
    src = tmp_path / "in.png"
    image(10, 60, 40).save(src)
    out = tmp_path / "out.png"
    argv = ["edit", str(src), "add a moon", "-o", str(out), "--model", str(model), "--seed", "5"]
    assert cli_main(argv) == 0
    assert Image.open(out).size == (60, 40)
    assert "seed 5" in capsys.readouterr().out
    assert cli_main(["edit", str(model / "config.json"), "x", "-o", str(out), "--model", str(model)]) == 2
    # the module entry point in a fresh interpreter
    out2 = tmp_path / "out2.png"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "varedit.cli",
            "edit",
            str(src),
            "add a moon",
            "-o",
            str(out2),
            "--model",
            str(model),
            "--seed",
            "5",
            "--threads",
            "1",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    assert np.array_equal(np.asarray(Image.open(out2)), np.asarray(Image.open(out)))


def test_cfg_lists_and_the_null_text():
    _, model, vae = load_official_golden(GOLDEN / "T1")
    sched = model.cfg.schedule()
    text = TextFeatures(torch.randn(1, 9, 256), torch.tensor([9]))
    src = torch.randn(1, 64, 32)

    def run(cfg):
        return generate(
            model,
            vae,
            text,
            src,
            sched,
            [torch.Generator().manual_seed(1)],
            cfg=cfg,
            tau=0.5,
            keep_logits=True,
        )

    mixed = run([1.0, 3.0, 1.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="tau must be a finite number greater than 0 .*, got 0.0"):
        generate(model, vae, text, src, sched, [torch.Generator()], tau=[0.5, 0.5, 0.0, 0.5, 0.5])
    assert [lg.shape[0] for lg in mixed.logits] == [1, 2, 1, 2, 2]  # cfg-1 scales: cond half only
    # the null text is cfg_uncond[:len] of the prompt's length, and cfg 1 never reads it
    lens, null = torch.tensor([5, 3]), torch.tensor([True, True])
    cond = model.condition(TextFeatures(torch.randn(2, 5, 256), lens), null)
    again = model.condition(TextFeatures(torch.zeros(2, 5, 256), lens), null)
    torch.testing.assert_close(cond.cond_BD, again.cond_BD)
    assert not torch.allclose(cond.cond_BD[0], cond.cond_BD[1])  # depends on the length
    with torch.no_grad():
        model.cfg_uncond.fill_(float("nan"))
    assert all(torch.isfinite(lg).all() for lg in run(1.0).logits)


def test_official_release_folder_and_convert(tmp_path, monkeypatch, capsys, umask_022):
    """An official-layout folder (the golden T1 files under the release names, standing in for 2B-512)
    loads directly, converts with `varedit convert` (float32 and bf16), and all give the same edit."""
    from dataclasses import replace

    from varedit.config import VARIANTS, get_config

    stand_in = replace(get_config("tiny"), name="2B-512", text_encoder="flan-t5-xl")
    monkeypatch.setitem(VARIANTS, "2B-512", stand_in)
    release = tmp_path / "VAREdit"
    release.mkdir()
    (release / "2B-512.pth").write_bytes((GOLDEN / "T1" / "infinity_T1.pth").read_bytes())
    (release / "infinity_vae_d32reg.pth").write_bytes((GOLDEN / "T1" / "vae_T1.pth").read_bytes())
    (release / "flan-t5-xl").mkdir()
    for f in (GOLDEN / "T5tiny").iterdir():
        (release / "flan-t5-xl" / f.name).write_bytes(f.read_bytes())
    im = image(12, 70, 90)
    [ref] = EditPipeline.from_pretrained(release / "2B-512.pth", device="cpu").edit(im, "add a hat", seeds=3)
    assert cli_main(["convert", str(release), str(tmp_path / "ours"), "--variant", "2B-512"]) == 0
    assert modes(tmp_path / "ours")["transformer.safetensors"] == 0o644  # safetensors alone: 0600
    ours = EditPipeline.from_pretrained(tmp_path / "ours", device="cpu")
    assert ours.name == "2B-512"
    assert np.array_equal(np.asarray(ours.edit(im, "add a hat", seeds=3)[0]), np.asarray(ref))
    assert cli_main(["convert", str(release), str(tmp_path / "ours16"), "--bf16"]) == 0
    with safe_open(tmp_path / "ours16" / "transformer.safetensors", "pt") as f:
        assert f.get_slice("blocks.0.ffn.fc1.weight").get_dtype() == "BF16"
        assert f.get_slice("head.weight").get_dtype() == "F32"
    [out16] = EditPipeline.from_pretrained(tmp_path / "ours16", device="cpu").edit(im, "add a hat")
    assert out16.size == im.size


def test_sar_reference_is_the_source_area_pooled_to_each_grid():
    import math

    from varedit.transformer import _area_pool

    k_BHLc = torch.randn(2, 3, 64, 4)
    assert torch.equal(_area_pool(k_BHLc, (8, 8), (8, 8)), k_BHLc)  # finest scale: the full source
    torch.testing.assert_close(_area_pool(k_BHLc, (8, 8), (1, 1)), k_BHLc.mean(2, keepdim=True))  # scale 0
    grid = k_BHLc.unflatten(2, (8, 8))  # (B, H, 8, 8, c)
    win = [(i * 8 // 6, math.ceil((i + 1) * 8 / 6)) for i in range(6)]  # overlapping windows, 8 -> 6
    ref = torch.stack(
        [torch.stack([grid[:, :, r0:r1, c0:c1].mean((2, 3)) for c0, c1 in win], 2) for r0, r1 in win], 2
    ).flatten(2, 3)  # (B, H, 36, c)
    torch.testing.assert_close(_area_pool(k_BHLc, (8, 8), (6, 6)), ref)
