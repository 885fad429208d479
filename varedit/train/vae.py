"""Train the BSQ multi-scale VAE of the small model on generated shape images.

Loss = L1 + MSE reconstruction through the multi-scale quantizer (straight-through), plus the
quantizer's own terms: a commitment loss ||f - sg(sum of codes)||^2 on the raw encoder output, and
the BSQ entropy term (confident bits per token, balanced bits over the batch).

Why the commitment acts on the raw features: BSQ normalises every residual, so each scale adds a
code of norm 1 per token. Nothing else bounds the encoder's output; left alone it grows (we saw
|f| ~ 14 per token after 1600 steps), every scale then quantizes nearly the same direction (the sum
of codes can never catch up with f), and the straight-through gradient, divided by |f| in the
normalisation, all but vanishes: the VAE learns the background colours and never the objects.
Keeping f at the scale of the summed codes makes each scale refine the previous one.
The official BSQ module stubs these losses out at inference; they only matter for training.

    python -m varedit.train.vae --steps 2500 --out runs/vae

`--codebook-dim` and `--base-ch` change the VAE's sizes; the checkpoint records them, and the
transformer trained on it and the exported folder follow. The entropy term is summed over bits,
so with more bits lower `--entropy` in proportion (0.01 for 32 bits) or it dominates the loss.

`--init FOLDER --decoder-only true` fine-tunes a released model's decoder alone. The encoder is
frozen, and with it every bit label and source token, so the model's transformer needs no
retraining; `varedit.train.export --transformer FOLDER` ships the pair. Why a decoder alone: a VAE
stopped while its joint training still improved has an undertrained decoder, and every dB it gains
in the edited region turns borderline edits into successes without touching the transformer.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from ..checkpoints import VAE_FILE, read_config
from ..vae.autoencoder import Decoder, Encoder
from ..vae.config import VAEConfig
from ..vae.layers import ResnetBlock
from ..vae.quantizer import BSQ, DOWN_MODE, UP_MODE
from .common import (
    LossLog,
    device,
    load_checkpoint,
    lr_at,
    records_for_step,
    save_checkpoint,
    to_tensor,
    to_uint8,
)
from .data import make_record
from .eval import score

# Default sizes: 64 px images, 8 px per token -> 8x8 latent, 16 bits per latent pixel (`--codebook-dim`).
# Width 48 (GroupNorm: 24 groups of 2 channels) rather than 32 (groups of one channel): a one-channel
# group normalises a flat background to zero, so flat-colour images lose their colour at every norm.
SHAPES_VAE = VAEConfig(codebook_dim=16, patch_size=8, base_ch=48, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
VAE_SIZES = ("codebook_dim", "base_ch")  # the options below that change the VAE's shapes
SHAPES_SCHEDULE = [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 6, 6), (1, 8, 8)]  # the official 1:1 template, K = 5


@dataclass
class VAETrainConfig:
    steps: int = 2500
    batch: int = 16  # images per step (source and target of batch/2 records)
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    commit: float = 0.25  # commitment loss weight
    entropy: float = 0.02  # BSQ entropy loss weight
    entropy_temp: float = 1.0  # inverse temperature of the soft bit probabilities
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 200
    eval_every: int = 250
    threads: int = 1
    init: str = ""  # start from this checkpoint's (or exported model folder's) weights, a fresh optimizer
    decoder_only: bool = False  # freeze encoder (and so every bit label); train the decoder only
    object_weight: float = 1.0  # reconstruction weight of object pixels (and 2 px around) vs background
    codebook_dim: int = SHAPES_VAE.codebook_dim  # bits per latent pixel
    base_ch: int = SHAPES_VAE.base_ch  # encoder/decoder width

    def vae_config(self) -> VAEConfig:
        return replace(SHAPES_VAE, codebook_dim=self.codebook_dim, base_ch=self.base_ch)


class ShapesVAE(nn.Module):
    """Encoder + decoder + multi-scale BSQ with training losses (same ops as `vae.quantizer`)."""

    def __init__(self, cfg: VAEConfig = SHAPES_VAE):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.bsq = BSQ(cfg.codebook_dim)
        for m in self.modules():  # residual branches start as identities: much faster early training
            if isinstance(m, ResnetBlock):
                nn.init.zeros_(m.conv2.conv.weight)
                nn.init.zeros_(m.conv2.conv.bias)

    def quantize(self, f_BdHW: torch.Tensor, schedule=SHAPES_SCHEDULE, temp: float = 1.0):
        """Multi-scale residual BSQ -> (summed codes (B, dq, H, W), commitment loss, entropy loss)."""
        z: torch.Tensor | float
        residual = f_BdHW.unsqueeze(2)  # (B, dq, 1, H, W)
        full = tuple(residual.shape[-3:])
        z, ent = 0.0, 0.0
        d = self.cfg.codebook_dim
        for grid in schedule:
            r = F.interpolate(residual, size=grid, mode=DOWN_MODE) if tuple(grid) != full else residual
            q, _ = self.bsq(r)
            u = F.normalize(r, dim=1)  # the value q straight-throughs
            p = torch.sigmoid(2 * temp * u * d**0.5)  # soft P(bit = 1), (B, dq, 1, h, w)
            ent = ent + _bin_entropy(p).sum(1).mean() - _bin_entropy(p.mean((0, 2, 3, 4))).sum()
            if tuple(grid) != full:
                q = F.interpolate(q, size=full, mode=UP_MODE)
            residual = residual - q.detach()
            z = z + q
        z = z.squeeze(2)
        commit = ((f_BdHW - z.detach()) ** 2).sum(1).mean()  # per token, summed over bits
        return z, commit, ent / len(schedule)

    def forward(self, x_B3HW: torch.Tensor, temp: float = 1.0):
        z, commit, ent = self.quantize(self.encoder(x_B3HW), temp=temp)
        return self.decoder(z), commit, ent


def _bin_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def image_batch(seed: int, step: int, batch: int) -> torch.Tensor:
    recs = records_for_step(seed, step, batch // 2)
    return to_tensor(np.stack([im for r in recs for im in (r.source, r.target)]))


def object_weights(x_B3HW: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, H, W), `weight` on objects and their 2 px rim, 1 elsewhere.

    Why: objects cover a few percent of a 64 px scene, so a plain mean spends the loss on flat
    background and the VAE rounds small shapes into blobs (a square and a circle of the small size
    decode alike), which caps every edit the transformer makes. The background is each image's
    median colour (it always covers most of the image)."""
    bg = x_B3HW.flatten(2).median(-1).values[..., None, None]
    obj = ((x_B3HW - bg).abs().sum(1, keepdim=True) > 0.1).float()
    return 1 + (weight - 1) * F.max_pool2d(obj, 5, stride=1, padding=2)


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, object_weight: float = 1.0) -> torch.Tensor:
    """L1 + MSE, a weighted mean over pixels (the plain mean when object_weight is 1)."""
    err = (y - x).abs() + (y - x) ** 2
    if object_weight == 1.0:
        return err.mean()
    w = object_weights(x, object_weight)
    return (err * w).mean() / w.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1), b).item()
    return 10 * np.log10(4 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(model: ShapesVAE, n: int = 64) -> float:
    model.eval()
    recs = [make_record(12345, i, "test") for i in range(n // 2)]
    x = to_tensor(np.stack([im for r in recs for im in (r.source, r.target)]))
    x = x.to(next(model.parameters()).device)
    y, _, _ = model(x)
    model.train()
    return psnr(y, x)


@torch.no_grad()
def oracle_success(model: nn.Module, n: int = 300, seed: int = 0, batch: int = 50) -> float:
    """Share of the benchmark's held-out edits that the VAE's own reconstruction of the target
    passes (`varedit.train.eval`'s success rule): the ceiling of any transformer trained on this VAE,
    what `varedit.train.eval --oracle` reports for an exported folder. Reconstruction PSNR alone hides
    it: a VAE can score well on flat backgrounds and still round the small shapes edits depend on."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    ok = 0
    for start in range(0, n, batch):
        recs = [make_record(seed, i, "test") for i in range(start, min(n, start + batch))]
        y, _, _ = model(to_tensor(np.stack([r.target for r in recs])).to(dev))
        ok += sum(score(r, out)["success"] for r, out in zip(recs, to_uint8(y), strict=True))
    model.train(was_training)
    return ok / n


def checkpoint_vae_config(state: dict) -> VAEConfig:
    """The sizes of the VAE in a training checkpoint, as its run's options recorded them."""
    run = state.get("extra", {}).get("config", {})
    return VAETrainConfig(**{k: v for k, v in run.items() if k in VAE_SIZES}).vae_config()


def build(init: str | Path = "", cfg: VAEConfig = SHAPES_VAE) -> ShapesVAE:
    """A fresh VAE, or one with the weights of a training checkpoint or an exported model folder
    (whose recorded sizes, not `cfg`, decide)."""
    if init and Path(init).is_dir():
        model = ShapesVAE(read_config(Path(init)).vae)
        model.load_state_dict(load_file(Path(init) / VAE_FILE) | {"bsq.mask": model.bsq.mask})
        return model
    if not init:
        return ShapesVAE(cfg)
    state = torch.load(init, map_location="cpu", weights_only=False)
    model = ShapesVAE(checkpoint_vae_config(state))
    model.load_state_dict(state["modules"]["vae"])
    return model


def train(cfg: VAETrainConfig, out: Path) -> ShapesVAE:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dev = device()
    model = build(cfg.init, cfg.vae_config()).to(dev)
    cfg = replace(cfg, codebook_dim=model.cfg.codebook_dim, base_ch=model.cfg.base_ch)  # what --init gave
    if cfg.decoder_only:  # the transformer's labels depend only on the encoder: it can keep training
        model.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    ckpt, log = out / "ckpt.pt", LossLog(out / "log.jsonl")
    step = 0
    if ckpt.exists():
        step = load_checkpoint(ckpt, {"vae": model}, opt)["step"]
        print(f"resumed from {ckpt} at step {step}")
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc="vae")
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        x = image_batch(cfg.seed, step, cfg.batch).to(dev)
        y, commit, ent = model(x, cfg.entropy_temp)
        rec = reconstruction_loss(y, x, cfg.object_weight)
        loss = rec + cfg.commit * commit + cfg.entropy * ent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        bar.set_postfix(rec=f"{rec.item():.4f}", psnr=f"{psnr(y.detach(), x):.1f}")
        values = {
            "loss": loss.item(),
            "rec": rec.item(),
            "commit": float(commit.detach()),
            "ent": float(ent.detach()),
        }
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            values["test_psnr"] = evaluate(model)
            values["test_oracle"] = oracle_success(model)
        if step % 10 == 0 or "test_psnr" in values:
            log.write(step, **values, sec=time.time() - t0)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(ckpt, step + 1, {"vae": model}, opt, {"config": asdict(cfg)})
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/vae"))
    for name, value in asdict(VAETrainConfig()).items():
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    train(VAETrainConfig(**args), out)


if __name__ == "__main__":
    main()
