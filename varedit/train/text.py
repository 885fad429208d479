"""A word-level T5 tokenizer and a small T5 encoder, built offline for the synthetic task.

The official models read instructions with flan-t5-xl (`T5TokenizerFast` + `T5EncoderModel`).
The small model keeps exactly that interface -- a Hugging Face folder loaded with
`from_pretrained(folder, local_files_only=True)` -- but its vocabulary is the generator's
~50 words, so the tokenizer is a WordLevel model built from `data.vocabulary()` with T5's
special tokens at T5's ids (pad 0, </s> 1, <unk> 2) and `</s>` appended to every sequence.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from .data import vocabulary

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5


def build_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """WordLevel tokenizer: lower-cased, split on whitespace and punctuation, `</s>` appended."""
    words = words if words is not None else vocabulary()
    vocab = {t: i for i, t in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_text_encoder(
    vocab_size: int, d_model: int = 128, layers: int = 2, heads: int = 2, d_ff: int = 256, seed: int = 0
) -> T5EncoderModel:
    """A small T5 encoder (same code path as flan-t5: relative attention, RMSNorm, gated-gelu)."""
    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_decoder_layers=0,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(cfg).eval()


def save_text(tokenizer: PreTrainedTokenizerFast, encoder: T5EncoderModel, folder: str | Path) -> None:
    """Write tokenizer + encoder into one HF folder (like flan-t5-xl/)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    encoder.save_pretrained(folder, safe_serialization=True)
