"""Text conditioning: the T5 encoder and the padded text-feature batch the transformer consumes.

The official pipeline tokenises with max length 512 (padding to 512, truncation), runs the T5 encoder
in float16 and keeps each prompt's real rows (`kv_compact`, `lens`). T5 masks padded keys, so
encoding a prompt on its own, without the padding, gives the same rows (checked against the golden
text tensors) at a fraction of the cost. Prompts are encoded one by one so that a prompt's features
do not depend on the other prompts of a batch.

Shapes: B prompts, T text tokens (padded to the longest), Ct5 text width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# the files a T5 tokenizer is read from: the fast tokenizer's, or the SentencePiece model
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


@dataclass
class TextFeatures:
    """T5 features of a batch of prompts, zero-padded to the longest prompt."""

    feats_BTC: torch.Tensor  # float32
    lens_B: torch.Tensor  # real tokens per prompt, including </s> (int64)

    @property
    def mask_BT(self) -> torch.Tensor:
        T = self.feats_BTC.shape[1]
        return torch.arange(T, device=self.lens_B.device)[None] < self.lens_B[:, None]

    @classmethod
    def from_compact(cls, kv_compact_NC: torch.Tensor, lens: list[int] | torch.Tensor) -> TextFeatures:
        """From the official compact form: all prompts' rows concatenated, and their lengths."""
        lens = [int(n) for n in lens]
        rows = torch.split(kv_compact_NC.float(), lens)
        return cls.from_list(list(rows))

    @classmethod
    def from_list(cls, feats: list[torch.Tensor]) -> TextFeatures:
        """From one (T_b, Ct5) tensor per prompt."""
        T = max(f.shape[0] for f in feats)
        out = feats[0].new_zeros(len(feats), T, feats[0].shape[1], dtype=torch.float32)
        for b, f in enumerate(feats):
            out[b, : f.shape[0]] = f
        lens = torch.tensor([f.shape[0] for f in feats], device=out.device)
        return cls(out, lens)

    @classmethod
    def cat(cls, parts: list[TextFeatures]) -> TextFeatures:
        """Batches one after another, zero-padded to the longest prompt of all."""
        T = max(p.feats_BTC.shape[1] for p in parts)
        feats = torch.cat([F.pad(p.feats_BTC, (0, 0, 0, T - p.feats_BTC.shape[1])) for p in parts])
        return cls(feats, torch.cat([p.lens_B for p in parts]))

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.feats_BTC.to(device), self.lens_B.to(device))


class TextEncoder:
    """A T5 encoder and its tokenizer, loaded from a local Hugging Face folder (never the network)."""

    def __init__(self, tokenizer, model, max_length: int = 512):
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float16,
        max_length: int = 512,
        tokenizer_path: str | Path | None = None,
    ) -> TextEncoder:
        """Load `T5EncoderModel` (float16, as the official loader) and its tokenizer from folders."""
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        tok_path = Path(tokenizer_path) if tokenizer_path else path
        for p in {path, tok_path}:
            if not p.is_dir():
                raise FileNotFoundError(f"text encoder folder not found: {p}")
        # transformers fills a missing file in silently: without config.json it builds a default T5
        # (and then fails on the weights with a RuntimeError), without tokenizer files an empty
        # tokenizer that turns every word into <unk>, so every instruction means the same
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {path} has no config.json")
        if not any((tok_path / name).is_file() for name in TOKENIZER_FILES):
            names = " or ".join(TOKENIZER_FILES)
            raise FileNotFoundError(f"text encoder folder {tok_path} has no tokenizer ({names})")
        tokenizer = AutoTokenizer.from_pretrained(tok_path, legacy=True, local_files_only=True)
        model, info = T5EncoderModel.from_pretrained(
            path, dtype=dtype, local_files_only=True, output_loading_info=True
        )
        # transformers fills missing weights with fresh random values and only logs it: every load
        # would then encode the same instruction differently. (Unexpected keys are fine: a full T5
        # folder such as flan-t5-xl also holds the decoder.)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(f"the T5 weights in {path} lack {len(missing)} tensors: {missing[:10]}")
        return cls(tokenizer, model.to(device).eval().requires_grad_(False), max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> TextFeatures:
        """Features of each prompt (its real tokens and </s>, as float32), padded into one batch."""
        feats = []
        for prompt in prompts:
            ids = self.tokenizer(
                text=[prompt], max_length=self.max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)  # (1, T)
            feats.append(self.model(input_ids=ids).last_hidden_state[0].float())  # (T, Ct5)
        return TextFeatures.from_list(feats)
