"""Train the VAREdit transformer of the small model (teacher forcing, as VAREdit trains).

One step, for a batch of generated records:
  1. source image -> raw VAE features at the finest grid (the reference tokens, unquantized);
  2. target image -> per-scale clean bit labels and the inputs of scales 1..K-1, built with bitwise
     self-correction: the bits of the first scales are randomly flipped before they are accumulated,
     so later residuals (and labels) are computed against a corrupted sum and the model learns to
     repair its own sampling mistakes;
  3. instruction -> frozen T5 features; with probability `text_drop` a sample's text is replaced by
     the learned null text (what CFG uses as the unconditional branch at inference);
  4. the transformer's teacher-forced forward ([source | SOS | scales 1..K-1], SAR in block 0);
  5. loss = per-bit 2-way cross-entropy, averaged over a token's bits, tokens weighted by
     1/sqrt(tokens of their scale) and normalised per sequence (coarse scales count more per token).

The T5 encoder is frozen by default, like the frozen flan-t5-xl of VAREdit. Ours starts random,
and a random T5 barely encodes word order: "make the red square green" and "make the green square
red" get features with cosine similarity 0.9997, so the text alone hardly tells a recolour's source
colour from its target. `--text-lr` trains the T5 along with the transformer. On the shapes task
that makes held-out colour pairs go the right way far more often than a frozen T5 does with the same
kind mix (the model card has the measurements), although the trained T5 still does not encode word
order: a colour word's row grows more alike in either role, not less.

    python -m varedit.train.transformer --vae runs/vae/ckpt.pt --out runs/tf --steps 6000

To continue training an exported model (the training run's optimizer state need not exist), start
from its folder: transformer weights, VAE (so the same bit labels) and T5 (the same text features):

    python -m varedit.train.transformer --init models/varedit-shapes-64 --out runs/tf-ft --edit-weight 4

To train on a new VAE (e.g. more bits per token) without learning the instruction again, start the
blocks from an exported model and only the bit-width layers fresh:

    python -m varedit.train.transformer --vae runs/vae32/ckpt.pt --transfer models/varedit-shapes-64 \
        --depth 6 --out runs/tf32

With `--grow true --depth N` the continued model gets extra blocks that start as the identity (more
capacity, no progress lost); `--ema 0.999` keeps a moving average of the weights, which is what the
checkpoint's evaluation reports and what export ships (late checkpoints swing less).
`--kind-mix recolor=3,add=3,...` trains the edit kinds in those proportions instead of alike, so
the steps go to the kinds the model still gets wrong.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .. import checkpoints as ckpts
from ..config import VAREditConfig
from ..text import TextEncoder, TextFeatures
from ..transformer import VAREditTransformer
from ..vae import VAE, SelfCorrection
from ..vae.config import VAEConfig
from .common import (
    LossLog,
    device,
    kind_cycle,
    load_checkpoint,
    lr_at,
    records_for_step,
    save_checkpoint,
    to_tensor,
)
from .data import EDIT_KINDS, Record, make_record
from .text import build_text_encoder, build_tokenizer, save_text
from .vae import SHAPES_VAE, checkpoint_vae_config

SCHEDULE = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]  # token grids of 64 px at 8 px per token
AVERAGE_OF = {"model": "ema", "text": "text_ema"}  # checkpoint names of the trained modules' averages
T5_WIDTH = 128


def shapes_config(
    depth: int = 4, width: int = 128, heads: int = 4, vae: VAEConfig = SHAPES_VAE
) -> VAREditConfig:
    """The small model: the 2B recipe (no patchify) at 64 px, T5 width 128, on the VAE it is trained on."""
    return VAREditConfig(
        name="shapes-64",
        depth=depth,
        width=width,
        num_heads=heads,
        text_channels=T5_WIDTH,
        text_maxlen=32,
        block_chunks=depth,
        vae=vae,
        resolution=64,
        text_encoder="text_encoder",
    )


@dataclass
class TrainConfig:
    steps: int = 6000
    batch: int = 32
    pool: int = 16384  # records in the training pool (0: fresh records every step)
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 2.0
    text_drop: float = 0.1  # cond_drop_rate: null text for CFG
    edit_weight: float = 1.0  # loss weight multiplier of tokens inside the edit mask (1: official loss)
    last_scale_weight: float = 1.0  # loss weight multiplier of the finest scale's tokens (1: official loss)
    flip_layers: int = 4  # bitwise self-correction on scales 0..flip_layers-1
    flip_strength: float = 0.2  # max flip probability
    reweight: bool = True  # per-scale token weights 1/sqrt(l_k)
    depth: int = 4
    width: int = 128
    heads: int = 4
    seed: int = 0
    text_encoder: str = "runs/text_encoder"  # HF folder of the frozen T5 (created if missing)
    ckpt_every: int = 200
    eval_every: int = 250
    threads: int = 1
    init: str = ""  # an exported model folder: start from its weights, VAE and T5 (a fresh optimizer)
    grow: bool = False  # with init: `depth` may exceed the folder's; new blocks start as the identity
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: none); export uses it
    transfer: str = ""  # an exported folder: its T5, and its transformer where shapes fit (VAE from --vae)
    compile: bool = False  # torch.compile the training forward (~1.3x faster steps on CPU, ~2 min to compile)
    text_lr: float = 0.0  # peak learning rate of the T5 trained with the transformer (0: frozen, as VAREdit)
    kind_mix: str = ""  # e.g. "recolor=3,add=3,resize=2,move=2,remove=1,background=1" ("": all kinds alike)


def load_trained_vae(path: str | Path) -> VAE:
    """A VAE from a `varedit.train.vae` checkpoint, a plain VAE state dict or an exported model folder."""
    if Path(path).is_dir():
        return ckpts.load_vae(Path(path) / ckpts.VAE_FILE, ckpts.read_config(Path(path)))
    state = torch.load(path, map_location="cpu", weights_only=False)
    sd = state["modules"]["vae"] if "modules" in state else state
    sd = {k: v for k, v in sd.items() if not k.startswith("bsq.")}
    vae = VAE(checkpoint_vae_config(state))  # a plain state dict records none: the default sizes
    missing, unexpected = vae.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("lfq.mask") for k in missing), (missing, unexpected)
    return vae.eval().requires_grad_(False)


def init_state(folder: Path, cfg: VAREditConfig, grow: bool = False) -> dict[str, torch.Tensor]:
    """Float32 transformer weights of an exported model folder, checked against `cfg` (same variant).

    With `grow`, `cfg` may have more blocks than the folder's model: the extra blocks go after the
    trained ones with zero output projections (self-attention, cross-attention, FFN), so every new
    block starts as the identity and the grown model computes exactly what the folder's model did."""
    saved = ckpts.read_config(folder)
    deeper = replace(saved, depth=cfg.depth, block_chunks=cfg.block_chunks) == cfg and cfg.depth > saved.depth
    if saved != cfg and not (grow and deeper):
        raise ckpts.CheckpointError(f"{folder} holds another configuration than the one being trained")
    state = ckpts.load_transformer_safetensors(folder / ckpts.TRANSFORMER_FILE, saved).float().state_dict()
    for name, value in VAREditTransformer(cfg).state_dict().items():
        if name not in state:  # a block beyond the saved depth
            zero = name.endswith(
                (
                    ".sa.proj.weight",
                    ".sa.proj.bias",
                    ".ca.proj.weight",
                    ".ca.proj.bias",
                    ".ffn.fc2.weight",
                    ".ffn.fc2.bias",
                )
            )
            state[name] = torch.zeros_like(value) if zero else value
    return state


def transfer_state(folder: Path, model: VAREditTransformer) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Start `model` (same variant, another VAE) from an exported folder's transformer: every weight
    whose shape fits is copied, the rest (the bit-width sides of `word_embed` and `head`) keep their
    fresh init. Returns the state dict and the names left fresh.

    Why: a VAE with more bits per token changes only the transformer's input and output layers;
    what the blocks learned (reading the instruction, attending to the source through SAR, where
    each edit kind acts) does not depend on the bit width, so a new transformer need not learn it
    again from scratch."""
    saved = ckpts.read_config(folder)
    if replace(saved, vae=model.cfg.vae) != model.cfg:
        raise ckpts.CheckpointError(f"{folder} holds another transformer than the one being trained")
    old = ckpts.load_transformer_safetensors(folder / ckpts.TRANSFORMER_FILE, saved).float().state_dict()
    state, fresh = model.state_dict(), []
    for name, value in state.items():
        if old[name].shape == value.shape:
            state[name] = old[name]
        else:
            fresh.append(name)
    return state, fresh


class TrainableText(torch.nn.Module):
    """The T5 of a model folder in float32, trained with the transformer: a batch's features with
    gradients, the same rows `TextEncoder.encode` gives each prompt (T5 masks the padding)."""

    def __init__(self, tokenizer, t5: torch.nn.Module):
        super().__init__()
        self.tokenizer, self.t5 = tokenizer, t5

    @classmethod
    def from_folder(cls, folder: str | Path) -> TrainableText:
        enc = make_text_encoder(folder, dtype=torch.float32)
        return cls(enc.tokenizer, enc.model.requires_grad_(True))

    def forward(self, prompts: list[str]) -> TextFeatures:
        batch = self.tokenizer(prompts, padding=True, max_length=32, truncation=True, return_tensors="pt")
        ids_BT, mask_BT = batch.input_ids.to(self.t5.device), batch.attention_mask.to(self.t5.device)
        feats_BTC = self.t5(input_ids=ids_BT, attention_mask=mask_BT).last_hidden_state
        return TextFeatures(feats_BTC * mask_BT[..., None], mask_BT.sum(1))


class TextCache:
    """Frozen T5 features per instruction, computed once (the vocabulary of instructions is finite)."""

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.cache = encoder, {}

    def __call__(self, prompts: list[str]) -> TextFeatures:
        for p in prompts:
            if p not in self.cache:
                self.cache[p] = self.encoder.encode([p]).feats_BTC[0].clone()
        return TextFeatures.from_list([self.cache[p] for p in prompts])


def make_text_encoder(
    folder: str | Path = "runs/text_encoder", seed: int = 0, dtype: torch.dtype = torch.float16
) -> TextEncoder:
    """The T5 + tokenizer, written once as an HF folder and loaded exactly as the pipeline loads it
    (local folder, float16 weights), so a frozen T5 gives training the features inference will see;
    a trained one (`TrainableText`) loads in float32."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        tok = build_tokenizer()
        save_text(tok, build_text_encoder(len(tok), d_model=T5_WIDTH, seed=seed), folder)
    return TextEncoder.from_pretrained(folder, dtype=dtype, max_length=32)


def token_weights(schedule=SCHEDULE, reweight: bool = True, last_scale: float = 1.0) -> torch.Tensor:
    """(L,) weights of the target tokens, summing to 1; the finest scale's tokens count `last_scale`
    times more (it decides the detail the VAE decodes, and loses the most edits: see
    `varedit.train.eval --oracle-scales`)."""
    n = [h * w for h, w in schedule]
    w = torch.cat([torch.full((n_k,), (n[-1] / n_k) ** 0.5 if reweight else 1.0) for n_k in n])
    w[-n[-1] :] *= last_scale
    return w / w.sum()


@dataclass
class Encoded:
    """A batch of records through the frozen VAE encoder."""

    instructions: list[str]
    source_BLd: torch.Tensor  # source reference tokens (raw features, finest grid)
    target_BdHW: torch.Tensor  # raw features of the target image
    edit_BL: torch.Tensor  # 1 for target tokens (all scales) whose area overlaps the edit mask


@torch.no_grad()
def encode_records(records: list[Record], vae: VAE) -> Encoded:
    dev = next(vae.parameters()).device
    src = vae.img_to_source_tokens(to_tensor(np.stack([r.source for r in records])).to(dev))
    tgt = vae.encode_features(to_tensor(np.stack([r.target for r in records])).to(dev))
    mask = torch.from_numpy(np.stack([r.mask for r in records])).float()[:, None]  # (B, 1, H, W)
    edit = torch.cat([F.adaptive_max_pool2d(mask, hw).flatten(1) for hw in SCHEDULE], 1)  # (B, L)
    return Encoded([r.instruction for r in records], src, tgt, edit.to(dev))


class Batches:
    """Training batches by step. With `pool` > 0 the data is a fixed pool of `pool` records cycled
    in the same groups every epoch, and each group's encoder features are cached after first use
    (the encoder is frozen, so this changes nothing but the speed; self-correction flips are still
    drawn fresh every step)."""

    def __init__(self, vae: VAE, seed: int, batch: int, pool: int, kinds: list[str] = EDIT_KINDS):
        self.vae, self.seed, self.batch, self.kinds = vae, seed, batch, kinds
        self.groups = pool // batch if pool else 0
        self.cache: dict[int, Encoded] = {}

    def __call__(self, step: int) -> Encoded:
        key = step % self.groups if self.groups else step
        if key not in self.cache:
            enc = encode_records(records_for_step(self.seed, key, self.batch, self.kinds), self.vae)
            if not self.groups:
                return enc
            self.cache[key] = enc
        return self.cache[key]


def batch_tensors(enc: Encoded, vae: VAE, text: TextCache, flip: SelfCorrection | None):
    """Encoded batch -> (text features, source tokens, target inputs, labels (B, L, d))."""
    with torch.no_grad():
        tf = vae.teacher_forcing(enc.target_BdHW, [(1, h, w) for h, w in SCHEDULE], flip=flip)
    return text(enc.instructions).to(enc.source_BLd.device), enc.source_BLd, tf.x_BLd, torch.cat(tf.labels, 1)


def bit_loss(logits_BLV: torch.Tensor, labels_BLd: torch.Tensor, weights_L: torch.Tensor) -> torch.Tensor:
    """weights: (L,) or per sample (B, L), each summing to 1."""
    B, L, d = labels_BLd.shape
    ce = F.cross_entropy(logits_BLV.reshape(B * L * d, 2), labels_BLd.reshape(-1), reduction="none")
    return (ce.view(B, L, d).mean(-1) * weights_L).sum(-1).mean()


@torch.no_grad()
def evaluate(model, text, vae, n: int = 64) -> dict[str, float]:
    """Teacher-forced bit accuracy on held-out records: overall and at the finest scale."""
    model.eval()
    recs = [make_record(999, i, "test") for i in range(n)]
    t, src, x, labels = batch_tensors(encode_records(recs, vae), vae, text, None)
    logits = model(t, src, x, SCHEDULE)
    pred = logits.view(*labels.shape, 2).argmax(-1)
    model.train()
    ok = (pred == labels).float()
    tok_ok = ok.min(-1).values  # every bit of a token right
    return {
        "bit_acc": ok.mean().item(),
        "tok_acc": tok_ok.mean().item(),
        "last_tok_acc": tok_ok[:, -64:].mean().item(),
    }


def build(cfg: TrainConfig, vae_path: Path) -> tuple[VAE, TextCache | TrainableText, VAREditTransformer]:
    """The frozen VAE, the T5 (frozen unless `cfg.text_lr`) and the transformer to train. With
    `cfg.init` all three come from that exported folder: its transformer was trained on exactly
    these bit labels and text features."""
    text_dir = Path(cfg.text_encoder)
    if cfg.init:
        vae_path, text_dir = Path(cfg.init), Path(cfg.init) / ckpts.TEXT_ENCODER_DIR
    elif cfg.transfer:  # the transferred blocks read the text features of that folder's T5
        text_dir = Path(cfg.transfer) / ckpts.TEXT_ENCODER_DIR
    vae = load_trained_vae(vae_path)
    text = TrainableText.from_folder(text_dir) if cfg.text_lr else TextCache(make_text_encoder(text_dir))
    model = VAREditTransformer(shapes_config(cfg.depth, cfg.width, cfg.heads, vae.config))
    if cfg.init:
        model.load_state_dict(init_state(Path(cfg.init), model.cfg, cfg.grow))
    elif cfg.transfer:
        state, fresh = transfer_state(Path(cfg.transfer), model)
        model.load_state_dict(state)
        print(f"transferred from {cfg.transfer}; fresh: {', '.join(fresh) or 'none'}")
    return vae, text, model


def train(cfg: TrainConfig, vae_path: Path, out: Path) -> VAREditTransformer:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dev = device()
    vae, text, model = build(cfg, vae_path)
    vae, model = vae.to(dev), model.to(dev).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    trained = {"model": model}  # checkpoint name -> module the optimizer updates
    if cfg.text_lr:
        text = text.to(dev)
        trained["text"] = text.t5
        groups.append(
            {"params": list(text.t5.parameters()), "weight_decay": 0.0, "lr_scale": cfg.text_lr / cfg.lr}
        )
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.97))
    averages = (
        {k: AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) for k, m in trained.items()}
        if cfg.ema
        else {}
    )  # a trained T5 is averaged like its reader
    modules = trained | {AVERAGE_OF[k]: a for k, a in averages.items()}
    ckpt, log = out / "ckpt.pt", LossLog(out / "log.jsonl")
    step = 0
    if ckpt.exists():
        step = load_checkpoint(ckpt, modules, opt)["step"]
        print(f"resumed from {ckpt} at step {step}")
    weights = token_weights(reweight=cfg.reweight, last_scale=cfg.last_scale_weight).to(dev)
    flip = SelfCorrection(cfg.flip_layers, cfg.flip_strength) if cfg.flip_layers > 0 else None
    batches = Batches(vae, cfg.seed, cfg.batch, cfg.pool, kind_cycle(cfg.kind_mix))
    forward = torch.compile(model) if cfg.compile else model  # shares the weights the optimizer updates
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc="transformer")
    t0 = time.time()
    for step in bar:
        loss = train_step(
            forward,
            opt,
            vae,
            text,
            flip,
            weights,
            batches(step),
            lr_at(step, cfg.steps, cfg.lr, cfg.warmup),
            cfg,
        )
        for k, average in averages.items():
            average.update_parameters(trained[k])
        bar.set_postfix(loss=f"{loss:.4f}")
        values = {"loss": loss}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            values.update(evaluate(*shipped(model, text, averages), vae))
        if step % 10 == 0 or len(values) > 1:
            log.write(step, **values, sec=time.time() - t0)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(ckpt, step + 1, modules, opt, {"config": asdict(cfg)})
    return shipped(model, text, averages)[0]


def shipped(
    model: VAREditTransformer, text: TextCache | TrainableText, averages: dict[str, AveragedModel]
) -> tuple[VAREditTransformer, TextCache | TrainableText]:
    """The transformer and text reader export would ship: the moving averages where the run keeps them."""
    if "text" in averages:
        text = TrainableText(text.tokenizer, averages["text"].module)
    return (averages["model"].module if averages else model), text


def trained_weights(state: dict, part: str = "model") -> dict[str, torch.Tensor] | None:
    """The weights to ship from a training checkpoint: the moving average when the run kept one.
    `part`: "model" (the transformer) or "text" (the T5, None when it stayed frozen)."""
    average = state["modules"].get(AVERAGE_OF[part])
    if average is None:
        return state["modules"].get(part)
    return {k.removeprefix("module."): v for k, v in average.items() if k != "n_averaged"}


def train_step(model, opt, vae, text, flip, weights, enc: Encoded, lr, cfg: TrainConfig) -> float:
    """One optimisation step on an encoded batch; returns the loss before the update.
    `model` may be the compiled wrapper of the trained module (clipping walks the optimizer's parameters)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    t, src, x, labels = batch_tensors(enc, vae, text, flip)
    null_B = torch.rand(len(enc.instructions)) < cfg.text_drop
    if cfg.edit_weight != 1.0:  # the edited tokens are a small share of the loss: count them more
        weights = weights * (1 + (cfg.edit_weight - 1) * enc.edit_BL)
        weights = weights / weights.sum(1, keepdim=True)
    loss = bit_loss(model(t, src, x, SCHEDULE, null_B), labels, weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
    opt.step()
    return loss.item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", type=Path, default=Path("runs/vae/ckpt.pt"))
    p.add_argument("--out", type=Path, default=Path("runs/tf"))
    for name, value in asdict(TrainConfig()).items():
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = vars(p.parse_args(argv))
    vae_path, out = args.pop("vae"), args.pop("out")
    train(TrainConfig(**args), vae_path, out)


if __name__ == "__main__":
    main()
