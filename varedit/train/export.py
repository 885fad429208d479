"""Write a trained VAE + transformer + T5 as a model folder (our format, `checkpoints.py`).

    python -m varedit.train.export --vae runs/vae/ckpt.pt --transformer runs/tf/ckpt.pt \\
        --text-encoder runs/text_encoder --out models/varedit-shapes-64

After `--init` fine-tuning, the VAE and T5 are the folder's own: `--vae models/varedit-shapes-64
--text-encoder models/varedit-shapes-64/text_encoder` (exporting into that folder keeps them).
A run that trained the T5 (`--text-lr`) ships its trained weights with `--text-encoder`'s tokenizer.
`--cfg` and `--tau` state the sampling settings the model card recommends (written to config.json, where
servers read them); left out, a folder keeps its own and a new model gets the official ones.

`--transformer` may also be an exported folder: its transformer ships unchanged with the VAE of
`--vae`, whose encoder must be the folder's (export refuses another). That is how a decoder-only
VAE fine-tune (`varedit.train.vae --decoder-only true`, which leaves every bit label as it was)
replaces the decoder of a released model:

    python -m varedit.train.export --vae runs/dec/ckpt.pt --transformer models/varedit-shapes-64 \\
        --text-encoder models/varedit-shapes-64/text_encoder --out models/varedit-shapes-64
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch

from ..checkpoints import read_folder, save_pretrained
from ..serving import SamplingDefaults, Serving
from ..text import TextEncoder
from ..transformer import VAREditTransformer
from ..vae import VAE
from .transformer import TrainConfig, init_state, load_trained_vae, shapes_config, trained_weights


def export(
    vae_ckpt: Path, tf_ckpt: Path, text_encoder: Path, out: Path, sampling: SamplingDefaults | None = None
) -> Path:
    """A model folder from a VAE and a transformer, each a training checkpoint or an exported folder.
    sampling: the recommended sampler settings to state (default: the folder's own, or official)."""
    vae = load_trained_vae(vae_ckpt)
    if tf_ckpt.is_dir():
        return _with_new_decoder(tf_ckpt, vae, text_encoder, out, sampling)
    state = torch.load(tf_ckpt, map_location="cpu", weights_only=False)
    tc = TrainConfig(**state["extra"]["config"])
    cfg = shapes_config(tc.depth, tc.width, tc.heads, vae.config)
    serving = Serving.trained(cfg, sampling)
    model = VAREditTransformer(cfg)
    model.load_state_dict(trained_weights(state))
    t5_state = trained_weights(state, "text")
    if t5_state is None:
        return save_pretrained(out, cfg, model, vae, text_encoder=text_encoder, serving=serving)
    t5 = TextEncoder.from_pretrained(text_encoder, dtype=torch.float32)
    t5.model.load_state_dict(t5_state)
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer's files as they are, the trained weights
        trained_t5 = shutil.copytree(text_encoder, Path(tmp) / "text_encoder")
        t5.model.save_pretrained(trained_t5, safe_serialization=True)
        return save_pretrained(out, cfg, model, vae, text_encoder=trained_t5, serving=serving)


def _with_new_decoder(
    folder: Path, vae: VAE, text_encoder: Path, out: Path, sampling: SamplingDefaults | None
) -> Path:
    """The folder's transformer with a VAE whose decoder alone was retrained. Its encoder must be the
    folder's: the transformer learned that encoder's bit labels and reads its source tokens."""
    cfg, serving = read_folder(folder)
    if sampling is not None:
        serving = dataclasses.replace(serving, sampling=sampling)  # description and examples stay
    own = load_trained_vae(folder).state_dict()
    new = vae.state_dict()
    if cfg.vae != vae.config or any(
        not torch.equal(v, new[k]) for k, v in own.items() if not k.startswith("decoder.")
    ):
        raise ValueError(
            f"this VAE's encoder is not the one the transformer of {folder} was trained on; "
            "only a decoder-only fine-tune of that folder's VAE can ship with it"
        )
    model = VAREditTransformer(cfg)
    model.load_state_dict(init_state(folder, cfg))
    return save_pretrained(
        out, cfg, model, vae, text_encoder=text_encoder, serving=serving, examples_from=folder
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", type=Path, default=Path("runs/vae/ckpt.pt"))
    p.add_argument("--transformer", type=Path, default=Path("runs/tf/ckpt.pt"))
    p.add_argument("--text-encoder", type=Path, default=Path("runs/text_encoder"))
    p.add_argument("--out", type=Path, default=Path("models/varedit-shapes-64"))
    p.add_argument("--cfg", type=float, help="recommended classifier-free guidance")
    p.add_argument("--tau", type=float, help="recommended logit temperature")
    a = p.parse_args(argv)
    sampling = None
    if a.cfg is not None or a.tau is not None:
        official = SamplingDefaults()
        sampling = SamplingDefaults(
            cfg=official.cfg if a.cfg is None else a.cfg, tau=official.tau if a.tau is None else a.tau
        )
    print(export(a.vae, a.transformer, a.text_encoder, a.out, sampling))


if __name__ == "__main__":
    main()
