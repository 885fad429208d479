"""`varedit-serve --model-path DIR` serves whatever model folder it is given, with nothing else set: the
model's name, resolutions and sampling defaults come from the folder (reported by its worker), and a
folder that cannot serve stops the platform with one line naming the cause."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.serve.running import until_ready
from varedit import checkpoints, write_random_checkpoint
from varedit.config import get_config
from varedit.serving import SamplingDefaults
from varedit.transformer import VAREditTransformer
from varedit.vae import VAE
from varedit_client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "assets" / "sample.png"
READY_S = 180.0
OFFICIAL = SamplingDefaults().to_dict()


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    """What a user's shell has: no VAREDIT_* at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    return env | {"VAREDIT_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"} | extra


def _serve(model_path: Path, data_dir: Path, **env: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "serve",
        "--port",
        "0",
        "--model-path",
        str(model_path),
        "--data-dir",
        str(data_dir),
        "--ready-file",
        str(data_dir.parent / "ready.json"),
    ]
    return subprocess.Popen(
        cmd,
        env=_env(data_dir, **env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@contextmanager
def serving(model_path: Path, tmp_path: Path) -> Iterator[str]:
    """The platform serving `model_path`, until the block ends (then SIGTERM, as Ctrl-C would)."""
    data_dir = tmp_path / "data"
    ready = tmp_path / "ready.json"
    with until_ready(_serve(model_path, data_dir), ready, READY_S) as info:
        yield info["url"]


def _edit_with_the_models_defaults(url: str) -> tuple[dict, dict]:
    with Client(url) as client:
        [model] = client.http.get("/v1/models").json()["data"]
        job = client.submit(SAMPLE.read_bytes(), "make the red circle blue", seed=3)
        return model, client.wait(job["id"], timeout_s=120)


def test_a_random_tiny_folder_is_served_at_its_real_resolution(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "tiny-model", "tiny")
    with serving(folder, tmp_path) as url:
        model, job = _edit_with_the_models_defaults(url)
    assert model["id"] == "tiny" and model["resolutions"] == [128] and model["sampling"] == OFFICIAL
    assert job["status"] == "succeeded", job
    assert job["params"] | {"seed": 3} == {
        "model": "tiny",
        "resolution": 128,
        "seed": 3,
        "cfg": OFFICIAL["cfg"],
        "tau": OFFICIAL["tau"],
        "previews": False,
        "negative_instruction": "",
    }


def _official_release(folder: Path, variant: str) -> Path:
    """A release folder in the official layout holding a tiny model under an official variant name:
    ``<variant>.pth`` (blocks as block_chunks.{c}.module.{j}), the VAE as {"vae": state dict}, the T5."""
    config = get_config("tiny")
    torch.manual_seed(0)
    transformer, vae = VAREditTransformer(config), VAE(config.vae)
    per_chunk = config.depth // config.block_chunks

    def official_key(key: str) -> str:
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if match is None:
            return key
        i = int(match[1])
        return f"block_chunks.{i // per_chunk}.module.{i % per_chunk}.{match[2]}"

    folder.mkdir()
    torch.save({official_key(k): v for k, v in transformer.state_dict().items()}, folder / f"{variant}.pth")
    torch.save({"vae": vae.state_dict()}, folder / checkpoints.OFFICIAL_VAE_FILES[False])
    random_model = write_random_checkpoint(folder.parent / "t5-source", "tiny")
    shutil.copytree(random_model / checkpoints.TEXT_ENCODER_DIR, folder / config.text_encoder)
    return folder


def test_a_converted_official_folder_is_served_under_its_variant_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an official release folder (a tiny model stands in for the 2B weights) converted to ours
    tiny = get_config("tiny")
    monkeypatch.setattr(checkpoints, "get_config", lambda name: type(tiny)(**{**tiny.__dict__, "name": name}))
    release = _official_release(tmp_path / "release", "2B-512")
    converted = checkpoints.convert_official(release, tmp_path / "converted")
    config, serving_facts = checkpoints.read_folder(converted)
    assert config.name == "2B-512" and serving_facts.sampling == SamplingDefaults()
    # when it is served with nothing else set
    with serving(converted, tmp_path) as url:
        model, job = _edit_with_the_models_defaults(url)
    # then the folder decided the name, the resolution and the defaults
    assert model["id"] == "2B-512" and model["resolutions"] == [128] and model["sampling"] == OFFICIAL
    assert job["status"] == "succeeded" and job["params"]["cfg"] == OFFICIAL["cfg"], job


def _fails_with_one_line(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=READY_S)
    assert proc.returncode == 1, out
    [error] = [line for line in out.splitlines() if line.startswith("varedit-serve: error:")]
    return error


def test_a_folder_that_is_no_model_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    error = _fails_with_one_line(_serve(tmp_path / "empty", tmp_path / "data"))
    assert "empty cannot be served" in error and "neither a varedit folder" in error


def test_a_folder_of_another_model_than_varedit_models_is_refused(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "tiny-model", "tiny")
    error = _fails_with_one_line(_serve(folder, tmp_path / "data", VAREDIT_MODELS='["shapes-64"]'))
    assert "holds model 'tiny'" in error and "VAREDIT_MODELS" in error


def test_weights_that_do_not_load_name_the_cause_and_the_log(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "tiny-model", "tiny")
    (folder / checkpoints.VAE_FILE).unlink()
    error = _fails_with_one_line(_serve(folder, tmp_path / "data"))
    log_path = tmp_path / "data" / "logs" / "edit0-tiny.log"
    assert "edit0-tiny could not load its model: CheckpointError: VAE checkpoint not found" in error
    assert f"(log: {log_path})" in error and log_path.is_file()
