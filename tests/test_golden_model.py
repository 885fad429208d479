"""Parity with the official code on the tiny golden sets (tests/data/golden, see its README).

Every model here is loaded from the official-format files (infinity_T*.pth, vae_T*.pth, config.json)
through varedit's official loader.

Tolerance for float stages: 1e-5 everywhere except isolated tokens that sit on a bfloat16 rounding
tie in cross-attention. The official code rounds q, k, v and the output of every cross-attention
to bf16 even in float32 (errata E1), so a 1-ulp difference upstream (another SDPA kernel, another
summation order) can move one token's value by one bf16 step; the golden README (section 5) sees
the same ~1e-3 outliers when the official code itself runs with 2 threads instead of 1. We allow at
most two such token rows per tensor, each below 5e-3 (observed: 2.2e-3). Bits, codes and pixels
must match exactly (on one thread, like the references).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from varedit.checkpoints import load_official_golden
from varedit.sampling import generate
from varedit.text import TextEncoder, TextFeatures

GOLDEN = Path(__file__).parent / "data" / "golden"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_close_but_isolated(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5,
                              max_outlier_rows: int = 2, outlier_atol: float = 5e-3) -> None:
    err_rows = (actual - expected).abs().flatten(0, -2).amax(-1)  # per token row
    bad = err_rows > atol
    assert int(bad.sum()) <= max_outlier_rows, f"{int(bad.sum())} rows above {atol}: {err_rows[bad].tolist()}"
    assert float(err_rows.max()) <= outlier_atol, float(err_rows.max())


def read_golden(name: str, case: str) -> tuple[dict, dict]:
    path = GOLDEN / name / f"{case}.safetensors"
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(path), meta


@pytest.fixture(scope="module", params=["T1", "T2"])
def golden_model(request):
    torch.manual_seed(0)
    cfg, model, vae = load_official_golden(GOLDEN / request.param)
    return request.param, cfg, model, vae


def schedule_of(meta: dict) -> list[tuple[int, int]]:
    return [(h, w) for _, h, w in meta["scale_schedule"]]


@pytest.mark.parametrize("prefix", ["", "bsc."])
def test_teacher_forced_logits_match_official(golden_model, prefix):
    name, cfg, model, vae = golden_model
    g, meta = read_golden(name, "golden_forward")
    text = TextFeatures.from_compact(g["input.text.kv_compact"], meta["lens"])
    with torch.no_grad():
        logits = model(text, g["source_x_BLC_wo_prefix"], g[prefix + "target_x_BLC_wo_prefix"],
                       schedule_of(meta))
    assert logits.shape == g[prefix + "logits"].shape
    assert_close_but_isolated(logits, g[prefix + "logits"])


def test_teacher_forcing_inputs_come_from_the_vae(golden_model):
    name, cfg, model, vae = golden_model
    g, meta = read_golden(name, "golden_forward")
    tf = vae.teacher_forcing(g["tgt_raw_features"], schedule_of(meta))
    torch.testing.assert_close(tf.x_BLd, g["target_x_BLC_wo_prefix"], atol=1e-6, rtol=0)
    for k, labels in enumerate(tf.labels):
        assert torch.equal(labels, g[f"gt_bits.{k}"].long())


def _infer_cases():
    return [("T1", "golden_infer_cfg3_tau0.5"), ("T2", "golden_infer_cfg3_tau0.5"),
            ("T2", "golden_infer_cfg1_tau1")]


@pytest.mark.parametrize(("name", "case"), _infer_cases())
def test_sampling_reproduces_official_bits_codes_and_image(name, case):
    cfg, model, vae = load_official_golden(GOLDEN / name)
    g, meta = read_golden(name, case)
    sched = schedule_of(meta)
    u8 = g["input.src_img_u8"].permute(2, 0, 1).float() / 255
    src = vae.img_to_source_tokens((u8 + u8 - 1)[None], sched)
    torch.testing.assert_close(src, g["src_img_prefix"], atol=1e-5, rtol=0)
    text = TextFeatures.from_compact(g["input.text.kv_compact"], meta["lens"])
    gen = torch.Generator().manual_seed(meta["g_seed"])
    out = generate(model, vae, text, src, sched, [gen], cfg=meta["cfg"], tau=meta["tau"],
                   top_k=meta["top_k"], top_p=meta["top_p"], keep_logits=True)
    for k in range(len(sched)):
        assert_close_but_isolated(out.logits[k], g[f"get_logits.{k}"])
        assert torch.equal(vae.tokens_to_bits(out.bits[k], sched[k]), g[f"idx_Bld.{k}"].long()), f"scale {k}"
    assert torch.equal(out.f_hat.squeeze(2), g["summed_codes"])
    img = vae.decode(out.f_hat)
    if "decoded" in g:
        torch.testing.assert_close(img, g["decoded"], atol=1e-5, rtol=0)
    u8_bgr = ((img + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(-1)
    assert torch.equal(u8_bgr, g["img_u8_bgr"])


def test_text_encoder_matches_official_encode_prompt():
    g, meta = read_golden("T1", "golden_text")
    enc = TextEncoder.from_pretrained(GOLDEN / "T5tiny")
    ids = enc.tokenizer(text=[meta["prompt"]], max_length=512, padding="max_length", truncation=True,
                        return_tensors="pt")
    assert torch.equal(ids.input_ids, g["input_ids"]) and torch.equal(ids.attention_mask, g["attention_mask"])
    text = enc.encode([meta["prompt"]])
    assert text.lens_B.tolist() == meta["lens"]
    torch.testing.assert_close(text.feats_BTC[0], g["kv_compact"], atol=0, rtol=0)


def test_end_to_end_with_the_real_text_encoder():
    """golden_e2e: the official gen_one_img with the tiny T5 and its tokenizer, from the prompt."""
    cfg, model, vae = load_official_golden(GOLDEN / "T1")
    g, meta = read_golden("T1", "golden_e2e_cfg3_tau0.5")
    sched = schedule_of(meta)
    text = TextEncoder.from_pretrained(GOLDEN / "T5tiny").encode([meta["prompt"]])
    u8 = g["input.src_img_u8"].permute(2, 0, 1).float() / 255
    src = vae.img_to_source_tokens((u8 + u8 - 1)[None], sched)
    out = generate(model, vae, text, src, sched, [torch.Generator().manual_seed(meta["g_seed"])],
                   cfg=meta["cfg"], tau=meta["tau"])
    for k in range(len(sched)):
        assert torch.equal(vae.tokens_to_bits(out.bits[k], sched[k]), g[f"idx_Bld.{k}"].long()), f"scale {k}"
    u8_bgr = ((vae.decode(out.f_hat) + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(-1)
    assert torch.equal(u8_bgr, g["img_u8_bgr"])
