"""Synthetic edit generator: determinism, masks, splits, tokenizer coverage."""

import numpy as np
import pytest

from varedit.train import data
from varedit.train.data import EDIT_KINDS, TEMPLATES, make_record


def test_records_are_deterministic_and_order_free():
    a = [make_record(7, i) for i in range(12)]
    b = [make_record(7, i) for i in reversed(range(12))][::-1]
    for ra, rb in zip(a, b, strict=True):
        assert ra.instruction == rb.instruction
        assert np.array_equal(ra.source, rb.source) and np.array_equal(ra.target, rb.target)
    assert make_record(8, 0).instruction != make_record(7, 0).instruction or not np.array_equal(
        make_record(8, 0).source, make_record(7, 0).source
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_kind_has_a_correct_mask(split):
    for i in range(24):
        r = make_record(3, i, split)
        assert r.source.shape == r.target.shape == (data.RES, data.RES, 3) and r.source.dtype == np.uint8
        changed = (r.source != r.target).any(-1)
        assert changed.any(), "an edit must change something"
        assert not changed[~r.mask].any(), "pixels outside the mask must be untouched"
        assert r.mask.sum() <= data._dilate(changed, data.MASK_DILATE).sum()
        assert r.kind == EDIT_KINDS[i % len(EDIT_KINDS)]


def test_mask_matches_the_scene_edit():
    r = make_record(0, 0, kind="recolor")
    src, tgt = r.meta["source_scene"], r.meta["target_scene"]
    (old,) = [o for o in src.objects if o not in tgt.objects]
    cov = data._coverage(old) > 0
    changed = (r.source != r.target).any(-1)
    assert np.array_equal(changed, cov), "a recolour changes exactly the object's pixels"
    assert r.meta["from"] in r.instruction and r.meta["to"] in r.instruction


def test_background_edit_keeps_objects():
    r = make_record(1, 5)
    assert r.kind == "background"
    inside = np.zeros_like(r.mask)
    for o in r.meta["source_scene"].objects:
        inside |= data._coverage(o) == 1
    assert np.array_equal(r.source[inside], r.target[inside])


def test_held_out_split_is_novel_but_in_vocabulary():
    train_words = {w for tr, _ in TEMPLATES.values() for t in tr for w in t.split() if "{" not in w}
    held_words = {w for _, ho in TEMPLATES.values() for t in ho for w in t.split() if "{" not in w}
    assert held_words <= train_words
    train_templates = {t for tr, _ in TEMPLATES.values() for t in tr}
    for i in range(60):
        tr = make_record(0, i, "train")
        assert tr.meta["template"] in train_templates
        assert (tr.kind, data.edit_combo(tr.kind, tr.meta)) not in data.HELD_OUT_COMBOS
        te = make_record(0, i, "test")
        novel_combo = (te.kind, data.edit_combo(te.kind, te.meta)) in data.HELD_OUT_COMBOS
        assert novel_combo or te.meta["template"] not in train_templates


def test_tokenizer_covers_every_instruction(tmp_path):
    from transformers import AutoTokenizer

    from varedit.train.text import build_text_encoder, build_tokenizer, save_text

    tok = build_tokenizer()
    save_text(tok, build_text_encoder(len(tok), d_model=32, layers=1, d_ff=32), tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for split in ("train", "test"):
        for i in range(30):
            ids = loaded(make_record(2, i, split).instruction).input_ids
            assert ids[-1] == 1 and 2 not in ids  # </s> appended, no <unk>
