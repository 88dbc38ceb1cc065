"""The conditional GAN: shapes, conditioning, every loss, EMA, checkpoints, metrics, gates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latentsight.training.gan import GANConfig, GANTrainConfig, load_gan, save_gan, train_gan
from latentsight.training.gan.diffaug import diff_augment
from latentsight.training.gan.metrics import fid, precision_recall
from latentsight.training.gan.model import ConditionalGAN, Discriminator, Generator
from latentsight.training.gan.study import ClassifierConfig, Condition, run_study, stratified_split
from latentsight.training.gan.synth import MemorizationGate
from latentsight.training.gan.train import diagnose

CLASSES = ["a", "b", "c"]


def _data(n_per: int = 12, size: int = 16, channels: int = 1):
    """Three easy classes: dark, bright, and left-bright halves (uint8, (N, C, S, S))."""
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for c in range(3):
        base = torch.zeros(n_per, channels, size, size)
        if c == 1:
            base += 0.8
        if c == 2:
            base[..., : size // 2] = 0.9
        noise = torch.rand(n_per, channels, size, size, generator=g) * 0.2
        xs.append(((base + noise).clamp(0, 1) * 255).to(torch.uint8))
        ys.append(torch.full((n_per,), c))
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize(("size", "channels"), [(32, 1), (64, 3), (16, 1)])
def test_shapes(size, channels):
    cfg = GANConfig(classes=CLASSES, image_size=size, channels=channels, g_width=8, d_width=8)
    g, d = Generator(config=cfg), Discriminator(config=cfg)
    z, y = torch.randn(5, cfg.z_dim), torch.tensor([0, 1, 2, 0, 1])
    x = g(z, y)
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x, y).shape == (5,)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="image_size"):
        GANConfig(classes=CLASSES, image_size=48).validate()
    with pytest.raises(ValueError, match="classes"):
        GANConfig(classes=[]).validate()


def test_conditioning_changes_output_per_label():
    torch.manual_seed(0)
    g = Generator(config=GANConfig(classes=CLASSES, image_size=16, g_width=8)).eval()
    z = torch.randn(1, 64).repeat(3, 1)  # the same noise for every label
    x = g(z, torch.tensor([0, 1, 2]))
    assert (x[0] - x[1]).abs().mean() > 1e-3 and (x[1] - x[2]).abs().mean() > 1e-3
    d = Discriminator(config=GANConfig(classes=CLASSES, image_size=16, d_width=8))
    img = x[:1].repeat(3, 1, 1, 1).detach()
    out = d(img, torch.tensor([0, 1, 2]))
    assert len(set(out.tolist())) == 3  # the projection term depends on the label


@pytest.mark.parametrize("loss", ["ns", "hinge", "wgan-gp"])
def test_a_few_steps_run_for_each_loss(loss):
    x, y = _data()
    cfg = GANTrainConfig(steps=6, batch_size=8, loss=loss, log_every=2, device="cpu")
    res = train_gan(x, y, CLASSES, cfg, gan=GANConfig(image_size=16, g_width=8, d_width=8),
                    progress=False)
    assert len(res.history) == 3
    assert all(np.isfinite([h["d_loss"], h["g_loss"]]).all() for h in res.history)
    assert set(res.diagnostics["diversity"]) == set(CLASSES)
    assert res.model.sample(torch.tensor([0, 2])).shape == (2, 1, 16, 16)


def test_ema_differs_from_raw_weights_and_checkpoint_round_trips(tmp_path):
    x, y = _data()
    cfg = GANTrainConfig(steps=5, batch_size=8, device="cpu", sample_every=0)
    res = train_gan(x, y, CLASSES, cfg, gan=GANConfig(image_size=16, g_width=8, d_width=8),
                    grid_dir=tmp_path / "grids", progress=False)
    raw = dict(res.model.generator.named_parameters())
    diffs = [float((p - raw[n]).detach().abs().max()) for n, p in res.model.ema.named_parameters()]
    assert max(diffs) > 1e-6
    assert (tmp_path / "grids" / "step_000005.png").is_file()
    sha = save_gan(res.model, tmp_path / "ckpt", {"name": "t"})
    back = load_gan(tmp_path / "ckpt", expected_sha256=sha)
    y3 = torch.tensor([0, 1, 2])
    a = res.model.sample(y3, generator=torch.Generator().manual_seed(3))
    b = back.sample(y3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_ema_update_moves_towards_generator():
    m = ConditionalGAN(config=GANConfig(classes=CLASSES, image_size=16, g_width=8, d_width=8))
    with torch.no_grad():
        for p in m.generator.parameters():
            p.add_(1.0)
    before = next(m.ema.parameters()).clone()
    m.update_ema(0.9)
    after, target = next(m.ema.parameters()), next(m.generator.parameters())
    assert torch.allclose(after, 0.9 * before + 0.1 * target, atol=1e-6)


def test_diffaugment_keeps_shape_and_lets_gradients_through():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = diff_augment(x * 2 - 1)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diagnose_flags_collapsed_samples_and_discriminator():
    x, y = _data()
    m = ConditionalGAN(config=GANConfig(classes=CLASSES, image_size=16, g_width=8, d_width=8))
    with torch.no_grad():  # a generator whose output ignores z: every sample of a label alike
        m.ema.fc[0].weight[:, :64] = 0
    hist = [{"step": i, "d_loss": 0.01, "g_loss": 0.5 + 0.2 * i, "d_real": 5, "d_fake": -5}
            for i in range(20)]
    out = diagnose(m, hist, x, y, loss="hinge")
    assert out["d_loss_collapse"] and out["g_loss_climbing"]
    assert set(out["low_diversity_labels"]) == set(CLASSES)
    assert len(out["warnings"]) == 3
    calm = [{"step": i, "d_loss": 1.8, "g_loss": 0.3, "d_real": 0, "d_fake": 0} for i in range(20)]
    assert not diagnose(m, calm, x, y, loss="hinge")["d_loss_collapse"]


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    values = [fid(a, a + rng.normal(size=a.shape) * s) for s in (0.1, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > 0
    assert values[-1] > 10 * values[0]


def test_precision_recall_detect_missing_modes_and_junk():
    rng = np.random.default_rng(1)
    real = np.concatenate([rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 10])
    one_mode = rng.normal(size=(200, 4))  # covers half of the real data
    p, r = precision_recall(real, one_mode)
    assert p > 0.8 and r < 0.65
    p2, _ = precision_recall(real, rng.normal(size=(200, 4)) + 50)  # junk far away
    assert p2 == 0.0
    p3, r3 = precision_recall(real, real.copy())
    assert p3 == 1.0 and r3 == 1.0


def test_gate_rejects_an_exact_copy_of_a_training_image():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(20, 32)).astype(np.float32)
    gate = MemorizationGate(ref)
    assert gate.min_distance > 0
    fresh = rng.normal(size=(5, 32)).astype(np.float32)
    near = ref[:3] + rng.normal(size=(3, 32)).astype(np.float32) * 1e-3
    rejected = gate(np.concatenate([ref[:2], near, fresh]))
    assert rejected.tolist() == [True] * 5 + [False] * 5


def test_augmentation_study_reports_every_class_and_condition():
    x, y = _data(n_per=10)
    tr, te = stratified_split(y.numpy(), 0.3, seed=0)
    assert set(y[te].tolist()) == {0, 1, 2} and not set(tr) & set(te)
    conds = [Condition("real"), Condition("classic", classic=True),
             Condition("extra", extra_x=x[tr][:4], extra_y=y[tr][:4])]
    res = run_study(x[tr], y[tr], x[te], y[te], CLASSES, conds, seeds=(0, 1),
                    cfg=ClassifierConfig(steps=15, batch_size=8, width=4))
    assert set(res) == {"real", "classic", "extra"}
    assert res["extra"]["n_train"] == len(tr) + 4
    for r in res.values():
        assert set(r["per_class"]) == set(CLASSES) and len(r["per_seed"]) == 2
        assert all(0 <= v["f1_mean"] <= 1 for v in r["per_class"].values())


def test_local_inception_checkpoint_is_loaded_from_safetensors(tmp_path):
    from latentsight.embedder.errors import ModelError
    from latentsight.training.gan.metrics import inception_features
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    feats = inception_features(path)
    assert "inception_v3" in feats.name
    out = feats(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2048) and np.isfinite(out).all()
    wrong = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(3)}, str(wrong))
    with pytest.raises(ModelError, match="not inception_v3 weights"):
        inception_features(wrong)


def _saved_gan(tmp_path):
    m = ConditionalGAN(config=GANConfig(classes=CLASSES, image_size=16, g_width=8, d_width=8))
    d = tmp_path / "gan"
    return m, d, save_gan(m, d, {"name": "g"})


@pytest.mark.parametrize(("edit", "match"), [
    (lambda doc: {**doc, "config": {**doc["config"], "g_width": "8"}}, "'g_width' must be int"),
    (lambda doc: {**doc, "config": {**doc["config"], "evil": 1}}, "unknown GAN config field"),
    (lambda doc: {**doc, "kind": "ae"}, "unknown model kind 'ae'"),
    (lambda doc: {**doc, "config": {**doc["config"], "image_size": 10}}, "invalid GAN config"),
    (lambda doc: {**doc, "pad": "x" * (1 << 20)}, "byte limit for a config"),
])
def test_load_gan_checks_the_config_like_an_encoder_checkpoint(tmp_path, edit, match):
    import json

    from latentsight.embedder.errors import ModelError

    _, d, _ = _saved_gan(tmp_path)
    doc = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(edit(doc)))
    with pytest.raises(ModelError, match=match):
        load_gan(d)


def test_gan_rows_are_home_relative_and_old_absolute_rows_still_load(tmp_path):
    import shutil
    from types import SimpleNamespace

    from latentsight.index.home import Home
    from latentsight.training.gan.train import gan_dir

    old = Home(tmp_path / "old-home")
    model, _, sha = _saved_gan(old.models_dir)  # HOME/models/gan
    rel = SimpleNamespace(checkpoint_path=old.rel(old.models_dir / "gan"))
    assert rel.checkpoint_path == "models/gan"
    absolute = SimpleNamespace(checkpoint_path=str(old.models_dir / "gan"))
    shutil.move(old.root, tmp_path / "moved-home")
    moved = Home(tmp_path / "moved-home")
    for row in (rel, absolute):
        assert gan_dir(moved, row) == moved.models_dir / "gan"
        back = load_gan(gan_dir(moved, row), expected_sha256=sha)
        assert back.config == model.config


def test_a_trained_generator_beats_an_untrained_one_and_noise_on_fid():
    """FID on 2x2-pooled pixels: training must bring every class closer to its real images."""
    import torch.nn.functional as F
    from latentsight.training.gan.metrics import compare_sets

    torch.manual_seed(0)
    x, y = _data(n_per=24)
    gcfg = GANConfig(image_size=16, g_width=8, d_width=8)
    res = train_gan(x, y, CLASSES, GANTrainConfig(steps=200, batch_size=16, device="cpu",
                                                  sample_every=0, seed=0),
                    gan=gcfg, progress=False)
    untrained = ConditionalGAN(config=GANConfig(classes=CLASSES, image_size=16, g_width=8,
                                                d_width=8))

    def feats(t: torch.Tensor) -> np.ndarray:
        return F.avg_pool2d(t.float(), 8).reshape(len(t), -1).numpy()  # (N, 4)

    g = torch.Generator().manual_seed(1)
    for c, name in enumerate(CLASSES):
        real = feats(x[y == c]) / 255.0
        ys = torch.full((24,), c)
        trained = compare_sets(real, feats(res.model.sample(ys, generator=g)))
        before = compare_sets(real, feats(untrained.sample(ys, generator=g)))
        noise = compare_sets(real, np.random.default_rng(c).random(real.shape))
        assert trained["fid"] < 0.5 * before["fid"], (name, trained, before)
        assert trained["fid"] < 0.5 * noise["fid"], (name, trained, noise)
