"""One contract for every model in the registry, plus the VAE's and the ViT's own promises."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from latentsight.embedder.encoder import to_batch
from latentsight.embedder.images import decode_file
from latentsight.embedder.models import REGISTRY, create, load_checkpoint, save_checkpoint

# A tiny config per registered model (32x32 inputs). A new model without an entry
# here fails the contract test below, so it cannot join the registry untested.
TINY = {
    "ae": {"image_size": 32, "depth": 3, "width": 8, "latent_dim": 16},
    "vae": {"image_size": 32, "depth": 3, "width": 8, "latent_dim": 16},
    "vit": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2,
            "decoder_dim": 16},
}
KINDS = sorted(REGISTRY)


@pytest.fixture(scope="module")
def batch(texture_dir: Path) -> torch.Tensor:
    """All 48 fixture textures as a float batch (48, 1, 32, 32) in [0, 1]."""
    paths = sorted(texture_dir.rglob("*.png"))
    return to_batch([decode_file(p, mode="L").pixels for p in paths], 32, 1)


@pytest.fixture(scope="module")
def trained(batch: torch.Tensor) -> dict[str, tuple[torch.nn.Module, float, float]]:
    """Each model fitted once for 40 Adam steps: kind -> (model, eval loss before, after)."""
    out = {}
    for kind in KINDS:
        torch.manual_seed(0)
        model = create(kind, **TINY[kind])
        before = _eval_loss(model, batch)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for step in range(40):
            loss, _ = model.loss(batch, epoch=step / 4)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[kind] = (model.eval(), before, _eval_loss(model, batch))
    return out


@torch.no_grad()
def _eval_loss(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.eval()
    return float(model.loss(x)[0])


def test_every_registered_model_has_a_tiny_config():
    assert set(TINY) == set(REGISTRY)


@pytest.mark.parametrize("kind", KINDS)
def test_model_contract(kind, batch, trained, tmp_path):
    model, before, after = trained[kind]
    assert model.kind == kind and dataclasses.is_dataclass(model.config)
    x = batch[:5]
    with torch.no_grad():
        emb = model.embed(x)
        rec = model.reconstruct(x)
        total, parts = model.loss(x)
    # forward shapes and ranges
    assert emb.shape == (5, model.embed_dim) and torch.isfinite(emb).all()
    assert rec.shape == x.shape and rec.min() >= 0.0 and rec.max() <= 1.0
    assert total.ndim == 0 and torch.isfinite(total) and "rec" in parts
    # a few training steps lower the loss on the fixture
    assert after < 0.9 * before, (before, after)
    # embed is deterministic in eval mode
    with torch.no_grad():
        assert torch.equal(model.embed(x), emb)
        assert torch.equal(model.reconstruct(x), rec)
    # a checkpoint round trip rebuilds the model exactly
    sha = save_checkpoint(model, tmp_path / kind, {"name": kind})
    loaded, doc = load_checkpoint(tmp_path / kind, expected_sha256=sha)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert doc["kind"] == kind
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), emb)
        assert torch.equal(loaded.reconstruct(x), rec)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_accepts_the_training_progress_keyword(kind, batch):
    model = create(kind, **TINY[kind]).train()
    for epoch in (None, 0.0, 2.5):
        total, _ = model.loss(batch[:4], epoch=epoch)
        assert torch.isfinite(total)


# --- VAE ---------------------------------------------------------------------------------


def test_vae_kl_is_non_negative(batch, trained):
    torch.manual_seed(0)
    fresh = create("vae", **TINY["vae"]).eval()
    for model in (fresh, trained["vae"][0]):
        with torch.no_grad():
            _, parts = model.loss(batch)
        assert parts["kl"] >= 0.0
    # also where the posterior is far from the prior in both directions
    with torch.no_grad():
        fresh.to_stats.bias.fill_(3.0)
        assert fresh.loss(batch)[1]["kl"] > 0.0
        fresh.to_stats.bias.fill_(-3.0)
        assert fresh.loss(batch)[1]["kl"] > 0.0


def test_vae_beta_zero_is_the_plain_reconstruction_loss(batch):
    torch.manual_seed(1)
    model = create("vae", **TINY["vae"], beta=0.0, free_bits=0.5).eval()
    with torch.no_grad():
        total, parts = model.loss(batch)
        plain = F.mse_loss(model.reconstruct(batch), batch)
    assert float(total) == pytest.approx(float(plain), rel=1e-6)
    assert parts["kl"] > 0.0  # the KL is still measured, just not charged
    model.train()
    torch.manual_seed(2)
    total, parts = model.loss(batch, epoch=10.0)
    assert float(total.detach()) == pytest.approx(parts["rec"], rel=1e-6)


def test_vae_kl_warmup_ramps_beta_linearly():
    model = create("vae", **TINY["vae"], beta=2.0, kl_warmup_epochs=4.0)
    assert model.beta_at(0.0) == 0.0
    assert model.beta_at(1.0) == pytest.approx(0.5)
    assert model.beta_at(2.0) == pytest.approx(1.0)
    assert model.beta_at(4.0) == model.beta_at(9.0) == model.beta_at(None) == 2.0
    assert create("vae", **TINY["vae"], kl_warmup_epochs=0.0).beta_at(0.0) == 1.0


def test_vae_free_bits_floor_each_dimension(batch):
    model = create("vae", **TINY["vae"], beta=1.0, free_bits=50.0).eval()
    with torch.no_grad():
        total, parts = model.loss(batch)
    # every dimension's KL is far below 50 nats, so each is charged exactly the floor
    floor = 50.0 * model.config.latent_dim / batch[0].numel()
    assert float(total) == pytest.approx(parts["rec"] + floor, rel=1e-5)


def test_vae_embedding_is_the_posterior_mean(batch):
    model = create("vae", **TINY["vae"]).eval()
    with torch.no_grad():
        mu, _ = model.posterior(batch[:3])
        assert torch.equal(model.embed(batch[:3]), mu)


@pytest.mark.parametrize("field,value", [("beta", -1.0), ("free_bits", -0.1),
                                         ("kl_warmup_epochs", -2.0)])
def test_vae_rejects_negative_settings(field, value):
    with pytest.raises(ValueError, match=field):
        create("vae", **TINY["vae"], **{field: value})


# --- ViT (masked autoencoder) ------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.6, 0.75, 0.9])
def test_vit_masking_keeps_exactly_the_configured_ratio(ratio):
    model = create("vit", **{**TINY["vit"], "image_size": 40}, mask_ratio=ratio)  # 25 patches
    n = model.num_patches
    keep, masked = model.random_mask(64, generator=torch.Generator().manual_seed(0))
    expected = round(n * ratio)
    assert (masked.sum(1) == expected).all()
    assert keep.shape == (64, n - expected)
    # the kept patches are distinct and exactly the unmasked ones
    assert all(len(set(row.tolist())) == n - expected for row in keep)
    assert (~masked).gather(1, keep).all()
    # masks differ between images (random per image)
    if 0 < expected < n:
        assert len({tuple(r.tolist()) for r in masked}) > 1


def test_vit_patchify_round_trip(batch):
    model = create("vit", **TINY["vit"])
    p = model.patchify(batch[:2])
    assert p.shape == (2, model.num_patches, 64)
    assert torch.equal(p[0, 1], batch[0, 0, 0:8, 8:16].flatten())  # row-major patch order
    assert torch.equal(model.unpatchify(p), batch[:2])


def test_vit_reconstruction_never_copies_the_patch_it_predicts(batch, trained):
    model = trained["vit"][0]
    x = batch[:2].clone()
    patch = (slice(None), slice(None), slice(8, 16), slice(8, 16))
    with torch.no_grad():
        rec = model.reconstruct(x)
        x2 = x.clone()
        x2[patch] = 1.0 - x2[patch]  # change that one patch only
        rec2 = model.reconstruct(x2)
        x3 = 1.0 - x
        x3[patch] = x[patch]  # change everything but that patch
        rec3 = model.reconstruct(x3)
    assert torch.allclose(rec[patch], rec2[patch], atol=1e-6)  # its own pixels are not used
    assert not torch.allclose(rec[patch], rec3[patch], atol=1e-3)  # its neighbours' are


def test_vit_cls_pooling_and_norm_pix_targets(batch):
    model = create("vit", **TINY["vit"], pool="cls", norm_pix_loss=True).eval()
    with torch.no_grad():
        assert model.embed(batch[:3]).shape == (3, 32)
        t = model.targets(batch[:3])
    assert np.allclose(t.mean(-1).numpy(), 0.0, atol=1e-4)


@pytest.mark.parametrize("cfg,field", [({"patch_size": 7}, "image_size"),
                                       ({"mask_ratio": 1.0}, "mask_ratio"),
                                       ({"heads": 3}, "heads"), ({"pool": "max"}, "pool")])
def test_vit_rejects_bad_settings(cfg, field):
    with pytest.raises(ValueError, match=field):
        create("vit", **{**TINY["vit"], **cfg})


# ---- input geometry and the pixel-PCA part (issue 14) -------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rectangular_input_round_trips_through_a_checkpoint(kind, tmp_path):
    """A 32x80 input (a 600x240 image's aspect) is embedded and reconstructed at that shape,
    and the checkpoint rebuilds the same model."""
    from latentsight.embedder.encoder import Encoder

    torch.manual_seed(0)
    model = create(kind, **TINY[kind], image_width=80, resize="pad").eval()
    x = torch.rand(2, 1, 32, 80)
    assert model.reconstruct(x).shape == x.shape
    assert model.embed(x).shape == (2, model.embed_dim)
    save_checkpoint(model, tmp_path / kind, {})
    loaded, _ = load_checkpoint(tmp_path / kind)
    torch.testing.assert_close(loaded.embed(x), model.embed(x))
    enc = Encoder(loaded, device="cpu")
    px = (np.random.default_rng(0).random((240, 600)) * 255).astype(np.uint8)
    # native pixels from the decoding worker (a JPEG drafted no lower than the model's
    # longer side); fitted here
    assert enc.probe_want == (0, 1, max(enc.image_height, enc.image_width))
    assert enc.prepare(px).shape == (1, 32, 80)


def test_a_checkpoint_saved_before_geometry_loads_and_squashes_as_before(tmp_path):
    """A config.json without image_width / resize / pixel_pca (every model before issue 14):
    the same digest check, square input, and a 600x240 image is squashed exactly as
    images.prepare did."""
    import json

    from latentsight.embedder.encoder import Encoder
    from latentsight.embedder.images import prepare
    from latentsight.embedder.models import checkpoint_digest, sha256_file

    torch.manual_seed(0)
    model = create("ae", **TINY["ae"]).eval()
    save_checkpoint(model, tmp_path, {})
    doc = json.loads((tmp_path / "config.json").read_text())
    for new in ("image_width", "resize", "pixel_pca"):
        del doc["config"][new]
    (tmp_path / "config.json").write_text(json.dumps(doc))
    old_digest = checkpoint_digest("ae", doc["config"], sha256_file(tmp_path / "model.safetensors"))
    enc = Encoder.from_checkpoint(tmp_path, device="cpu", expected_sha256=old_digest)
    assert enc.legacy_input and enc.probe_want == (32, 1)
    px = (np.random.default_rng(1).random((240, 600)) * 255).astype(np.uint8)
    want = model.embed(torch.from_numpy(prepare(px, 32, 1))[None].float() / 255)
    np.testing.assert_allclose(enc.embed_pixels([px]), want.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(enc.prepare(px), prepare(px, 32, 1))


def test_pad_keeps_the_aspect_and_fills_with_the_mean():
    from latentsight.embedder.encoder import fit_pixels

    px = np.zeros((40, 160), np.uint8)
    px[:, 80:] = 200  # left half dark, right half bright
    out = fit_pixels(px, 32, 32, 1, "pad")[0]  # 160x40 fits as 32x8, rows 12..19
    assert out.shape == (32, 32)
    assert (out[:12] == 100).all() and (out[20:] == 100).all()  # the image's mean
    assert (out[12:20, :16] == 0).all() and (out[12:20, 16:] == 200).all()  # not squashed
    np.testing.assert_array_equal(fit_pixels(px, 8, 32, 1, "pad")[0], fit_pixels(
        px, 8, 32, 1, "squash")[0])  # same aspect: no padding


def test_pixel_pca_part_matches_principal_components(batch):
    """The pixel-PCA part is PCA of the fitted images (as scikit-learn finds it, up to sign)
    and the embedding is [unit(PCA), unit(learned)]."""
    from latentsight.embedder.models.inputs import fit_pixel_pca
    from sklearn.decomposition import PCA

    torch.manual_seed(0)
    model = create("ae", **TINY["ae"], pixel_pca=4).eval()
    assert model.embed_dim == create("ae", **TINY["ae"]).embed_dim + 4
    assert fit_pixel_pca(model, batch)
    with torch.no_grad():
        got = model.pixel_pca(batch).numpy()
        emb = model.embed(batch)
        learned = model.embed_learned(batch)
    ref = PCA(n_components=4, svd_solver="full").fit_transform(batch.flatten(1).numpy())
    np.testing.assert_allclose(np.abs(got), np.abs(ref), atol=2e-3)
    torch.testing.assert_close(emb[:, :4], F.normalize(torch.from_numpy(got), dim=1))
    torch.testing.assert_close(emb[:, 4:], F.normalize(learned, dim=1))


def test_standardized_pixel_pca_ignores_brightness_and_contrast_and_old_configs_load(batch,
                                                                                     tmp_path):
    """pixel_pca_standardize: the PCA part of x and of 0.5 x + 0.2 is the same (without it,
    it is not); a checkpoint config written without the field loads with it off."""
    from latentsight.embedder.models.inputs import fit_pixel_pca

    torch.manual_seed(0)
    x = batch.clamp(0.05, 0.95)
    dim = 0.5 * x + 0.2  # dimmer, lower contrast
    parts = {}
    for std in (False, True):
        model = create("ae", **TINY["ae"], pixel_pca=4, pixel_pca_standardize=std).eval()
        assert fit_pixel_pca(model, x)
        with torch.no_grad():
            parts[std] = (model.pixel_pca(x), model.pixel_pca(dim))
    torch.testing.assert_close(parts[True][0], parts[True][1], atol=1e-4, rtol=1e-4)
    assert (parts[False][0] - parts[False][1]).abs().max() > 0.1
    model = create("ae", **TINY["ae"], pixel_pca=4).eval()
    save_checkpoint(model, tmp_path / "old", meta={"name": "old"})
    cfg = tmp_path / "old" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["config"].pop("pixel_pca_standardize")  # as written before the field existed
    cfg.write_text(json.dumps(doc))
    loaded, _meta = load_checkpoint(tmp_path / "old")
    assert loaded.config.pixel_pca_standardize is False and not loaded.pixel_pca.standardize
