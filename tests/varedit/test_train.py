"""Training code paths: a step learns, checkpoints resume exactly, export loads in the pipeline."""

import copy
import json
from collections import Counter
from dataclasses import replace

import pytest
import torch
from PIL import Image

from varedit.checkpoints import read_folder
from varedit.serving import Example, SamplingDefaults, Serving
from varedit.train import transformer as T
from varedit.train.common import kind_cycle, load_checkpoint, records_for_step, save_checkpoint
from varedit.train.data import make_record
from varedit.train.vae import SHAPES_VAE, ShapesVAE, image_batch
from varedit.transformer import VAREditTransformer
from varedit.vae import VAE, SelfCorrection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    torch.manual_seed(0)
    vae = VAE(SHAPES_VAE).eval().requires_grad_(False)
    text = T.TextCache(T.make_text_encoder(tmp_path_factory.mktemp("t5")))
    return vae, text


def _model_and_opt(lr=3e-3):
    torch.manual_seed(1)
    model = VAREditTransformer(T.shapes_config(depth=1, width=64, heads=2))
    return model, torch.optim.AdamW(model.parameters(), lr=lr)


def test_one_step_reduces_the_loss_on_a_fixed_batch(parts):
    vae, text = parts
    cfg = T.TrainConfig(text_drop=0.0)
    model, opt = _model_and_opt()
    recs = records_for_step(0, 0, 4)
    w = T.token_weights()
    enc = T.encode_records(recs, vae)
    t, src, x, labels = T.batch_tensors(enc, vae, text, None)
    before = T.bit_loss(model(t, src, x, T.SCHEDULE), labels, w).item()
    for _ in range(3):
        T.train_step(model, opt, vae, text, None, w, enc, 3e-3, cfg)
    after = T.bit_loss(model(t, src, x, T.SCHEDULE), labels, w).item()
    assert after < before - 0.01, (before, after)


def test_labels_replay_through_the_sampler_update(parts):
    """The teacher-forcing inputs are exactly what inference will feed back (no flips)."""
    vae, text = parts
    recs = records_for_step(0, 1, 2)
    _, _, x, labels = T.batch_tensors(T.encode_records(recs, vae), vae, text, None)
    sched = [(1, h, w) for h, w in T.SCHEDULE]
    n = [h * w for h, w in T.SCHEDULE]
    f_hat, start, inputs = None, 0, []
    for si, n_k in enumerate(n):
        f_hat, nxt = vae.next_scale_input(si, labels[:, start : start + n_k], f_hat, sched)
        start += n_k
        if nxt is not None:
            inputs.append(nxt)
    torch.testing.assert_close(torch.cat(inputs, 1), x, atol=1e-5, rtol=0)


def test_resume_is_exact(parts, tmp_path):
    vae, text = parts
    cfg = T.TrainConfig(text_drop=0.5)
    flip = SelfCorrection(2, 0.3)
    w = T.token_weights()

    batches = T.Batches(vae, seed=0, batch=2, pool=4)

    def run(model, opt, steps):
        for s in steps:
            T.train_step(model, opt, vae, text, flip, w, batches(s), 1e-3, cfg)

    torch.manual_seed(5)
    model, opt = _model_and_opt()
    run(model, opt, [0, 1])
    save_checkpoint(tmp_path / "c.pt", 2, {"model": model}, opt)
    run(model, opt, [2, 3])
    straight = copy.deepcopy(model.state_dict())

    model2, opt2 = _model_and_opt()
    assert load_checkpoint(tmp_path / "c.pt", {"model": model2}, opt2)["step"] == 2
    run(model2, opt2, [2, 3])
    for k, v in straight.items():
        assert torch.equal(v, model2.state_dict()[k]), k


def test_vae_step_reduces_reconstruction_loss():
    torch.manual_seed(0)
    m = ShapesVAE()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x = image_batch(0, 0, 4)
    losses = []
    for _ in range(4):
        y, commit, ent = m(x)
        loss = (y - x).abs().mean() + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert set(m.state_dict()) - {"bsq.mask"} <= set(VAE(SHAPES_VAE).state_dict())


def test_init_continues_an_exported_model_folder(parts, tmp_path):
    """`--init FOLDER` starts from the folder's transformer and VAE, and refuses another variant."""
    from varedit.checkpoints import CheckpointError, save_pretrained

    vae, _ = parts
    model, _ = _model_and_opt()
    folder = save_pretrained(tmp_path / "model", model.cfg, model, vae)
    cfg = T.TrainConfig(depth=1, width=64, heads=2, init=str(folder))
    vae2, _, model2 = T.build(cfg, tmp_path / "missing-vae.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    for k, v in vae.state_dict().items():
        assert torch.equal(v, vae2.state_dict()[k]), k
    with pytest.raises(CheckpointError):
        T.init_state(folder, T.shapes_config(depth=2, width=64, heads=2))


def test_grow_appends_identity_blocks(parts, tmp_path):
    """`--grow` with a deeper `--depth` continues from the folder's function exactly; new blocks train."""
    from varedit.checkpoints import CheckpointError, save_pretrained

    vae, text = parts
    model, _ = _model_and_opt()
    folder = save_pretrained(tmp_path / "model", model.cfg, model, vae)
    deeper = VAREditTransformer(T.shapes_config(depth=3, width=64, heads=2))
    deeper.load_state_dict(T.init_state(folder, deeper.cfg, grow=True))
    t, src, x, labels = T.batch_tensors(T.encode_records(records_for_step(0, 0, 2), vae), vae, text, None)
    with torch.no_grad():
        assert torch.equal(deeper(t, src, x, T.SCHEDULE), model(t, src, x, T.SCHEDULE))
    T.bit_loss(deeper(t, src, x, T.SCHEDULE), labels, T.token_weights()).backward()
    assert deeper.blocks[2].ffn.fc2.weight.grad.abs().sum() > 0  # the zero projections still learn
    with pytest.raises(CheckpointError):  # growth changes the depth only
        T.init_state(folder, T.shapes_config(depth=3, width=128, heads=2), grow=True)


def test_ema_is_checkpointed_resumed_and_exported(parts, tmp_path):
    """With `--ema` a stopped and resumed run ends with the same average, and export ships it."""
    from varedit.checkpoints import save_pretrained

    vae, _ = parts
    model, _ = _model_and_opt()
    # the T5 is made up front: building it reseeds torch, which would give the first run (the one
    # that built it) another data stream than the later ones
    T.make_text_encoder(tmp_path / "t5")
    folder = save_pretrained(tmp_path / "model", model.cfg, model, vae, text_encoder=tmp_path / "t5")
    cfg = dict(
        depth=1, width=64, heads=2, init=str(folder), batch=2, pool=0, ema=0.5, eval_every=10**6, ckpt_every=1
    )
    T.train(T.TrainConfig(steps=3, **cfg), None, tmp_path / "straight")
    T.train(T.TrainConfig(steps=2, **cfg), None, tmp_path / "resumed")
    T.train(T.TrainConfig(steps=3, **cfg), None, tmp_path / "resumed")
    straight, resumed = (
        torch.load(tmp_path / run / "ckpt.pt", weights_only=False) for run in ("straight", "resumed")
    )
    shipped = T.trained_weights(straight)
    for k, v in shipped.items():
        assert torch.equal(v, T.trained_weights(resumed)[k]), k
    assert any(not torch.equal(v, straight["modules"]["model"][k]) for k, v in shipped.items())


def test_object_weights_mark_objects_and_their_rim():
    from varedit.train.common import to_tensor
    from varedit.train.data import make_record
    from varedit.train.vae import object_weights, reconstruction_loss

    rec = make_record(0, 3, "train")
    x = to_tensor(rec.source[None])
    w = object_weights(x, 5.0)[0, 0]
    bg = (rec.source == rec.source[0, 0]).all(-1)  # exact background colour
    obj = torch.from_numpy(~bg)
    assert obj.any() and (w[obj] == 5.0).all()
    far = torch.nn.functional.max_pool2d(obj[None, None].float(), 11, stride=1, padding=5)[0, 0] == 0
    assert far.any() and (w[far] == 1.0).all()
    torch.manual_seed(0)
    y = x + 0.1 * torch.randn_like(x)
    plain = torch.nn.functional.l1_loss(y, x) + torch.nn.functional.mse_loss(y, x)
    assert torch.allclose(reconstruction_loss(y, x), plain)
    y_obj = torch.where(obj, y, x)  # error on objects only: weighting them makes it count more
    assert reconstruction_loss(y_obj, x, 5.0) > 2 * reconstruction_loss(y_obj, x)


def test_vae_init_from_an_exported_folder(parts, tmp_path):
    from varedit.checkpoints import save_pretrained
    from varedit.train.vae import build

    vae, _ = parts
    model, _ = _model_and_opt()
    folder = save_pretrained(tmp_path / "model", model.cfg, model, vae)
    other_sizes = replace(SHAPES_VAE, codebook_dim=8)  # ignored: the folder's config.json decides
    trained = build(folder, other_sizes).state_dict()
    for k, v in vae.state_dict().items():
        if k.startswith(("encoder.", "decoder.")):
            assert torch.equal(v, trained[k]), k


def test_vae_sizes_travel_from_the_vae_checkpoint_to_the_transformer(tmp_path):
    """A VAE trained with other sizes (--codebook-dim/--base-ch) is rebuilt from its checkpoint, and
    the transformer trained on it predicts that many bits per token."""
    from dataclasses import asdict

    from varedit.train.vae import VAETrainConfig, build
    from varedit.train.vae import train as train_vae

    run = VAETrainConfig(codebook_dim=8, base_ch=32)
    m = build("", run.vae_config())
    save_checkpoint(
        tmp_path / "vae.pt", 0, {"vae": m}, torch.optim.AdamW(m.parameters()), {"config": asdict(run)}
    )
    vae = T.load_trained_vae(tmp_path / "vae.pt")
    assert (vae.config.codebook_dim, vae.config.base_ch) == (8, 32)
    assert build(tmp_path / "vae.pt").cfg == run.vae_config()  # --init CKPT: its own sizes too
    tuned = VAETrainConfig(steps=1, batch=2, init=str(tmp_path / "vae.pt"), decoder_only=True)
    train_vae(tuned, tmp_path / "tuned")  # the sizes are not repeated, yet recorded
    assert T.load_trained_vae(tmp_path / "tuned" / "ckpt.pt").config == run.vae_config()
    for k, v in m.state_dict().items():
        if k.startswith(("encoder.", "decoder.")):
            assert torch.equal(v, vae.state_dict()[k]), k
    cfg = T.TrainConfig(depth=1, width=64, heads=2, text_encoder=str(tmp_path / "t5"))
    _, _, model = T.build(cfg, tmp_path / "vae.pt")
    assert model.cfg.vae == vae.config and model.word_embed.in_features == 8


def test_last_scale_weight_scales_the_finest_tokens_only():
    plain, heavy = T.token_weights(), T.token_weights(last_scale=3.0)
    last = T.SCHEDULE[-1][0] * T.SCHEDULE[-1][1]
    assert torch.isclose(heavy.sum(), torch.tensor(1.0))
    ratio = heavy / plain  # one factor on the coarse tokens, three times it on the finest ones
    assert torch.allclose(ratio[-last:], 3 * ratio[0]) and torch.allclose(ratio[:-last], ratio[0])
    assert ratio[0] < 1


def test_kind_mix_sets_how_often_each_edit_kind_is_trained():
    """`--kind-mix` draws kinds by weight; without it the records are the generator's own."""
    mixed = records_for_step(0, 3, 24, kind_cycle("recolor=3,add=2,remove=1"))
    assert Counter(r.kind for r in mixed) == {"recolor": 12, "add": 8, "remove": 4}
    plain = records_for_step(0, 3, 12, kind_cycle(""))
    assert [r.instruction for r in plain] == [make_record(0, j, "train").instruction for j in range(36, 48)]
    with pytest.raises(ValueError, match="kind=weight"):
        kind_cycle("recolour=3")


def test_transfer_starts_a_new_bit_width_from_a_folder(parts, tmp_path):
    """`--transfer FOLDER` with a VAE of another bit width: the folder's T5 and every transformer
    weight but the bit-width layers come over; another variant is refused."""
    from dataclasses import asdict

    from varedit.checkpoints import CheckpointError, save_pretrained
    from varedit.train.vae import VAETrainConfig, build

    vae, _ = parts
    model, _ = _model_and_opt()
    T.make_text_encoder(tmp_path / "t5")
    folder = save_pretrained(tmp_path / "model", model.cfg, model, vae, text_encoder=tmp_path / "t5")
    run = VAETrainConfig(codebook_dim=8)
    m = build("", run.vae_config())
    save_checkpoint(
        tmp_path / "vae8.pt", 0, {"vae": m}, torch.optim.AdamW(m.parameters()), {"config": asdict(run)}
    )
    cfg = T.TrainConfig(depth=1, width=64, heads=2, transfer=str(folder), text_encoder=str(tmp_path / "none"))
    _, _, new = T.build(cfg, tmp_path / "vae8.pt")
    assert new.word_embed.in_features == 8 and new.head.out_features == 16
    old = model.state_dict()
    fresh = {
        k for k, v in new.state_dict().items() if not (v.shape == old[k].shape and torch.equal(v, old[k]))
    }
    assert fresh == {"word_embed.weight", "head.weight", "head.bias"}
    assert not (tmp_path / "none").exists()  # the folder's T5, not a new one
    with pytest.raises(CheckpointError):
        T.transfer_state(folder, VAREditTransformer(T.shapes_config(depth=2, width=64, heads=2)))


def test_vae_oracle_success_scores_reconstructions_of_the_targets():
    """A VAE that reconstructs perfectly passes every held-out edit; one that returns the source
    (the edit undone) passes none."""
    import numpy as np

    from varedit.train.common import to_tensor
    from varedit.train.data import make_record
    from varedit.train.vae import oracle_success

    class Lookup(torch.nn.Module):
        def __init__(self, use_source: bool):
            super().__init__()
            self.p, self.use_source = torch.nn.Parameter(torch.zeros(1)), use_source
            recs = [make_record(0, i, "test") for i in range(12)]
            self.table = {r.target.tobytes(): r for r in recs}

        def forward(self, x):
            imgs = ((x + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            recs = [self.table[im.tobytes()] for im in imgs]
            return to_tensor(np.stack([r.source if self.use_source else r.target for r in recs])), 0.0, 0.0

    assert oracle_success(Lookup(False), n=12, batch=5) == 1.0
    assert oracle_success(Lookup(True), n=12, batch=5) == 0.0


def test_text_lr_trains_the_t5_and_export_ships_it(parts, tmp_path):
    """`--text-lr`: the T5 learns with the transformer, its batched features are the pipeline's
    per-prompt ones, export writes the trained (averaged) T5 into the model folder, and the
    in-training evaluation scores exactly that exported pair."""
    from varedit.checkpoints import save_pretrained
    from varedit.text import TextEncoder
    from varedit.train.export import export

    vae, _ = parts
    model, _ = _model_and_opt()
    T.make_text_encoder(tmp_path / "t5")
    folder = save_pretrained(tmp_path / "model", model.cfg, model, vae, text_encoder=tmp_path / "t5")
    prompts = ["make the red square green", "remove the blue circle in the image"]
    frozen = TextEncoder.from_pretrained(folder / "text_encoder", dtype=torch.float32).encode(prompts)
    batched = T.TrainableText.from_folder(folder / "text_encoder")(prompts)
    torch.testing.assert_close(batched.feats_BTC, frozen.feats_BTC, atol=1e-5, rtol=0)
    assert torch.equal(batched.lens_B, frozen.lens_B)

    cfg = T.TrainConfig(
        depth=1,
        width=64,
        heads=2,
        init=str(folder),
        batch=2,
        pool=0,
        ema=0.5,
        steps=2,
        text_lr=1e-2,
        eval_every=2,
    )
    T.train(cfg, None, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    start = TextEncoder.from_pretrained(folder / "text_encoder", dtype=torch.float32).model.state_dict()
    shipped = T.trained_weights(state, "text")
    assert any(not torch.equal(v, start[k]) for k, v in shipped.items())
    out = export(folder, tmp_path / "run" / "ckpt.pt", folder / "text_encoder", tmp_path / "exported")
    loaded = TextEncoder.from_pretrained(out / "text_encoder", dtype=torch.float32).model.state_dict()
    for k, v in shipped.items():
        assert torch.equal(loaded[k], v), k
    exported = VAREditTransformer(model.cfg)
    exported.load_state_dict(T.init_state(out, exported.cfg))
    logged = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    scored = T.evaluate(exported, T.TrainableText.from_folder(out / "text_encoder"), T.load_trained_vae(out))
    assert logged["bit_acc"] == pytest.approx(scored["bit_acc"], abs=1e-6)


def test_decoder_only_fine_tune_ships_into_a_released_folder(parts, tmp_path):
    """`vae --decoder-only` on a folder keeps its encoder (every bit label), and export with that
    folder as `--transformer` writes the tuned decoder beside the folder's unchanged transformer."""
    from safetensors.torch import load_file

    from varedit.checkpoints import VAE_FILE, save_pretrained
    from varedit.train.export import export
    from varedit.train.vae import VAETrainConfig
    from varedit.train.vae import train as train_vae

    vae, _ = parts
    model, _ = _model_and_opt()
    T.make_text_encoder(tmp_path / "t5")
    (tmp_path / "pictures" / "examples").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "pictures" / "examples" / "red.png")
    serving = Serving(
        (model.cfg.resolution,), description="shapes", examples=(Example("make it blue", "examples/red.png"),)
    )
    folder = save_pretrained(
        tmp_path / "model",
        model.cfg,
        model,
        vae,
        text_encoder=tmp_path / "t5",
        serving=serving,
        examples_from=tmp_path / "pictures",
    )
    train_vae(
        VAETrainConfig(steps=2, batch=2, lr=1e-2, warmup=0, init=str(folder), decoder_only=True),
        tmp_path / "dec",
    )
    sampling = SamplingDefaults(cfg=2.5, tau=0.4)
    tuned = tmp_path / "dec" / "ckpt.pt"
    out = export(tuned, folder, folder / "text_encoder", tmp_path / "shipped", sampling)
    assert read_folder(out)[1] == replace(serving, sampling=sampling)  # what it says of itself stays
    assert (out / "examples" / "red.png").read_bytes() == (folder / "examples" / "red.png").read_bytes()

    before, after = load_file(folder / VAE_FILE), load_file(out / VAE_FILE)
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k.startswith("encoder."))
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith("decoder."))
    shipped = VAREditTransformer(model.cfg)
    shipped.load_state_dict(T.init_state(out, model.cfg))
    for k, v in model.state_dict().items():
        assert torch.equal(v, shipped.state_dict()[k]), k
    assert (out / "text_encoder" / "config.json").exists()

    # a VAE with another encoder would give the transformer other bit labels: refused
    eight_bits = replace(vae.config, codebook_dim=8)
    cfg8 = T.shapes_config(depth=1, width=64, heads=2, vae=eight_bits)
    narrower = save_pretrained(tmp_path / "other", cfg8, VAREditTransformer(cfg8), VAE(eight_bits))
    retrained = copy.deepcopy(vae)
    with torch.no_grad():
        next(retrained.encoder.parameters()).add_(0.01)
    save_checkpoint(tmp_path / "joint.pt", 0, {"vae": retrained}, torch.optim.AdamW(retrained.parameters()))
    for vae_ckpt, target in ((tmp_path / "dec" / "ckpt.pt", narrower), (tmp_path / "joint.pt", folder)):
        with pytest.raises(ValueError, match="encoder"):
            export(vae_ckpt, target, folder / "text_encoder", tmp_path / "refused")
