"""BSQ multi-scale VAE of VAREdit (Infinity's `infinity_vae_*`), computing what the official code does.

Public API (see `model.VAE` for the shape legend and layout conventions):

    vae = load_official_vae("infinity_vae_d32reg.pth")       # or VAE(VAEConfig.preset(...))
    sched = [(1, 1, 1), (1, 2, 2), ..., (1, 32, 32)]          # transformer token grids ((h, w) works too)

    # source image -> reference tokens at the finest scale (unquantized)
    src_BLd = vae.img_to_source_tokens(x_B3HW, sched)        # (B, l_K-1, d) float32

    # training: clean labels, or labels + inputs of scales 1..K-1 with self-correction
    labels = vae.img_to_labels(x_B3HW, sched)                 # [(B, l_k, d) int64]
    tf = vae.teacher_forcing(vae.encode_features(x_B3HW), sched, flip=SelfCorrection(13, 0.3, g))
    tf.x_BLd, tf.labels                                       # (B, L - l_0, d), [(B, l_k, d) int64]

    # inference: after sampling scale si's bits (B, l_si, d)
    f_hat, next_BLd = vae.next_scale_input(si, bits_Bld, f_hat, sched)  # f_hat=None at si=0;
    img_B3HW = vae.decode(f_hat)                              # next_BLd None after the last scale

    # the VAE's own encode/decode (official AutoEncoder.encode / decode_from_indices)
    enc = vae.encode(x_B3HW, sched); f_hat = vae.bits_to_f_hat(labels, sched)

d = vae.d_vae = codebook_dim (2B: 32) or 4 * codebook_dim with spatial patchify (8B: 56); a token's
bit j is the head's j-th logit pair; with patchify j = 4c + 2dy + dx (latent channel c, sub-pixel dy, dx).
"""

from .config import PRESETS, VAEConfig
from .loading import VAECheckpointError, config_from_state_dict, load_official_vae, remap_official_keys
from .model import VAE, BitFlip, TeacherForcing, VAEEncoding
from .patchify import map_to_tokens, tokens_to_vae_bits, vae_bits_to_tokens
from .quantizer import BSQ, MultiScaleBSQ, MultiScaleEncoding
from .teacher import SelfCorrection

__all__ = [
    "BSQ",
    "PRESETS",
    "VAE",
    "BitFlip",
    "MultiScaleBSQ",
    "MultiScaleEncoding",
    "SelfCorrection",
    "TeacherForcing",
    "VAECheckpointError",
    "VAEConfig",
    "VAEEncoding",
    "config_from_state_dict",
    "load_official_vae",
    "map_to_tokens",
    "remap_official_keys",
    "tokens_to_vae_bits",
    "vae_bits_to_tokens",
]
