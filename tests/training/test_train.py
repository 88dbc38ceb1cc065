"""Training options: augmentations, the InfoNCE auxiliary objective, every model through train()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from latentsight.training.train import (
    TrainConfig,
    crop_rotate,
    info_nce,
    make_view,
    train,
)


def test_crop_rotate_is_identity_without_crop_or_rotation():
    x = torch.rand(3, 1, 16, 16)
    y = crop_rotate(x, torch.Generator().manual_seed(0), crop_scale=1.0, rotate_deg=0.0)
    assert torch.allclose(x, y, atol=1e-5)


def test_crops_zoom_in_and_stay_in_range():
    yy = torch.arange(32.0)[None, None, :, None].expand(4, 1, 32, 32) / 31  # vertical ramp
    y = crop_rotate(yy, torch.Generator().manual_seed(0), crop_scale=0.5, rotate_deg=0.0)
    assert y.shape == yy.shape and y.min() >= 0.0 and y.max() <= 1.0
    span = y[:, 0, -1, 0] - y[:, 0, 0, 0]  # the ramp covers less range after a zoom-in
    assert (span < 0.97).all() and (span > 0.4).all()


def test_views_differ_and_are_seeded():
    x = torch.rand(8, 1, 16, 16)
    cfg = TrainConfig(crop_scale=0.5, rotate_deg=10.0)
    a = make_view(x, cfg, torch.Generator().manual_seed(1))
    b = make_view(x, cfg, torch.Generator().manual_seed(1))
    c = make_view(x, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_info_nce_rewards_matching_views():
    torch.manual_seed(0)
    a = torch.randn(16, 64)
    matched = info_nce(a, a + 0.01 * torch.randn(16, 64), 0.2)
    shuffled = info_nce(a, a[torch.randperm(16)], 0.2)
    assert float(matched) < 0.5 and float(shuffled) > 2.0


@pytest.mark.parametrize("field,value", [("aux", "simclr"), ("crop_scale", 1.5),
                                         ("rotate_deg", 90.0), ("jitter", 1.5),
                                         ("noise", -0.1)])
def test_bad_train_options_are_rejected(tmp_path, field, value):
    from latentsight.index.home import Home

    with pytest.raises(ValueError, match=field):
        train(Home(tmp_path), TrainConfig(**{field: value}), progress=False)


@pytest.mark.parametrize("kind,model_config", [
    ("vae", {"image_size": 32, "depth": 3, "width": 8, "latent_dim": 16}),
    ("vit", {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "heads": 2,
             "decoder_dim": 16}),
])
def test_every_kind_trains_with_augmentations_and_aux(tmp_path, texture_dir, kind, model_config):
    from latentsight.embedder.encoder import Encoder
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths

    home = Home(tmp_path)
    ingest_paths(home, [texture_dir], labels_from_folders=True, progress=False, workers=0)
    cfg = TrainConfig(model=kind, epochs=2, batch_size=16, device="cpu", name=f"t-{kind}",
                      crop_scale=0.6, rotate_deg=8.0, aux="infonce", model_config=model_config)
    res = train(home, cfg, progress=False)
    row = home.catalog.model(f"t-{kind}")
    assert row.kind == kind and row.active and res.metrics["epochs_run"] == 2
    enc = Encoder.from_checkpoint(res.checkpoint, device="cpu",
                                  expected_sha256=row.checkpoint_sha256)
    assert enc.embed_files(sorted(texture_dir.rglob("*.png"))[:3]).shape == (3, enc.embed_dim)
    val = [h["val_loss"] for h in res.metrics["history"]]
    assert len(val) == 2 and val[-1] < val[0], val  # it learned something
    assert res.metrics["val_loss"] == min(val)  # the best epoch's checkpoint is kept


# ---- geometry from the data and the pixel-PCA option (issue 14) ---------------------------


def test_input_geometry_follows_the_images_median_aspect():
    from latentsight.training.train import choose_input

    mc, rec = choose_input([(600, 240)] * 3 + [(500, 250)], {}, "ae")  # median aspect 2.5
    assert (mc["image_width"], mc["resize"]) == (160, "pad")  # 64 x 2.5, a multiple of 16
    assert (rec["height"], rec["width"], rec["median_aspect"]) == (64, 160, 2.5)
    mc, _ = choose_input([(240, 600)], {"image_size": 32, "patch_size": 8}, "vit")
    assert (mc["image_size"], mc["image_width"]) == (80, 32)  # portrait: rows follow
    mc, rec = choose_input([(200, 200), (210, 200)], {}, "vae")  # square enough: square
    assert "image_width" not in mc and rec["width"] == rec["height"] == 64
    mc, _ = choose_input([(4000, 100)], {"depth": 3}, "ae")
    assert mc["image_width"] == 4 * 64  # at most MAX_ASPECT short sides


def test_train_records_a_non_square_input_and_a_pixel_pca(tmp_path):
    """100x40 images (a 600x240 tile's aspect): the model's input is 40x16, recorded in
    the checkpoint and the catalog; an image is not squashed; the embedding carries the
    pixel-PCA part, and eval retrieval reports both."""
    import numpy as np
    from latentsight.embedder.encoder import Encoder
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.training.evaluate import evaluate_retrieval
    from PIL import Image

    rng = np.random.default_rng(0)
    for lab, base in (("dark", 30), ("bright", 170)):
        (tmp_path / lab).mkdir()
        for i in range(6):
            img = (rng.random((40, 100)) * 60 + base).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / lab / f"{i}.png")
    home = Home(tmp_path / "home")
    ingest_paths(home, [tmp_path / "dark", tmp_path / "bright"], labels_from_folders=True,
                 progress=False, workers=0)
    mc = {"image_size": 16, "depth": 2, "width": 8, "latent_dim": 8}
    # the plain pixel PCA (the default standardizes: brightness, all these labels differ by,
    # would be left out) and no brightness jitter
    res = train(home, TrainConfig(epochs=1, batch_size=8, device="cpu", name="rect",
                                  pixel_pca=3, pixel_pca_standardize=False, jitter=0.0,
                                  model_config=mc), progress=False)
    assert res.metrics["input_geometry"]["width"] == 40
    row = home.catalog.model("rect")
    assert (row.config["image_size"], row.config["image_width"]) == (16, 40)
    enc = Encoder.from_checkpoint(res.checkpoint, device="cpu",
                                  expected_sha256=row.checkpoint_sha256)
    img = np.zeros((40, 100), np.uint8)
    img[:, 50:] = 255  # the right half bright: it stays the right half
    x = enc.prepare(img)[0]
    assert x.shape == (16, 40) and x[:, :19].max() == 0 and x[:, 21:].min() == 255
    assert enc.embed_dim == enc.model.embed_dim == 3 + enc.model.embed_learned(
        torch.zeros(1, 1, 16, 40)).shape[1]
    assert np.abs(enc.model.pixel_pca.components.numpy()).sum() > 0  # fitted
    out = evaluate_retrieval(home, model="rect", k=5, device="cpu", progress=False)
    assert out["input"] == {"height": 16, "width": 40, "resize": "pad"}
    assert out["pixel_pca"] == 3 and out["macro_precision_at_k"] > 0.6  # two easy labels
    with pytest.raises(ValueError, match="geometry"):
        train(home, TrainConfig(geometry="round"), progress=False)


# ---- the default recipe: whole images vs tile crops (issue 14) -----------------------------


def test_default_train_is_the_search_recipe_and_crops_keep_theirs(tmp_path, texture_dir):
    """TrainConfig's defaults: whole images get the recipe benchmarks/retrieval.py picks
    (PCA-64 of standardized pixels beside the learned part, photometric views, no flips);
    tile-crop (scan) training keeps no pixel PCA, flips and turns, no photometric views.
    Both checkpoints record the values used."""
    import json

    import numpy as np
    from latentsight.embedder.encoder import Encoder
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.manager import build_index
    from latentsight.index.search import Searcher

    home = Home(tmp_path / "home")
    ingest_paths(home, [texture_dir], labels_from_folders=True, progress=False, workers=0)
    mc = {"image_size": 16, "depth": 2, "width": 8, "latent_dim": 8}
    res = train(home, TrainConfig(epochs=1, batch_size=16, device="cpu", name="dflt",
                                  model_config=mc), progress=False)
    row = home.catalog.model("dflt")
    assert row.config["pixel_pca"] == 64 and row.config["pixel_pca_standardize"] is True
    state = json.loads((Path(res.checkpoint) / "config.json").read_text())["train"]
    assert (state["augment"], state["jitter"], state["noise"]) == (False, 0.3, 0.12)
    assert (state["crop_scale"], state["rotate_deg"], state["aux"]) == (0.85, 20.0, "infonce")
    assert (state["pixel_pca"], state["pixel_pca_standardize"]) == (64, True)
    enc = Encoder.from_checkpoint(res.checkpoint, device="cpu",
                                  expected_sha256=row.checkpoint_sha256)
    learned = enc.model.embed_learned(torch.zeros(1, 1, 16, 16)).shape[1]
    assert enc.embed_dim == 64 + learned and enc.model.pixel_pca.standardize
    assert np.abs(enc.model.pixel_pca.components.numpy()).sum() > 0  # fitted
    build_index(home, row, device="cpu", progress=False, workers=0)
    first = home.catalog.images()[0]
    hits = Searcher(home, "dflt", device="cpu").search(first.id, k=3)
    assert hits[0].id == first.id and len(hits) == 3

    res = train(home, TrainConfig(epochs=1, batch_size=16, device="cpu", name="tiles",
                                  crops=True, aux="none", model_config=mc), progress=False)
    assert home.catalog.model("tiles").config["pixel_pca"] == 0
    state = json.loads((Path(res.checkpoint) / "config.json").read_text())["train"]
    assert (state["augment"], state["jitter"], state["noise"], state["pixel_pca"]) == (
        True, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match="pixel_pca"):  # asked for explicitly: refused
        train(home, TrainConfig(crops=True, pixel_pca=8, model_config=mc), progress=False)


def test_make_view_takes_the_kinds_defaults_for_fields_left_none():
    from latentsight.training.train import SCAN_DEFAULTS, resolve

    x = torch.full((4, 1, 16, 16), 0.5)
    cfg = TrainConfig(crop_scale=0.0, rotate_deg=0.0)  # photometric views only (search)
    view = make_view(x, cfg, torch.Generator().manual_seed(0))
    assert not torch.equal(view, x)  # jitter 0.3, noise 0.12 by default
    scan = TrainConfig(crop_scale=0.0, rotate_deg=0.0, crops=True)
    assert torch.equal(make_view(x, scan, torch.Generator().manual_seed(0)), x)  # flips only
    assert {k: getattr(resolve(scan), k) for k in SCAN_DEFAULTS} == SCAN_DEFAULTS
    given = resolve(TrainConfig(jitter=0.05, augment=True, pixel_pca=0))
    assert (given.jitter, given.augment, given.pixel_pca, given.noise) == (0.05, True, 0, 0.12)


def test_the_benchmarks_default_row_is_trains_default():
    """benchmarks/retrieval.py's DEFAULT_VARIANT spells out TrainConfig's defaults."""
    import importlib.util

    from latentsight.training.train import resolve

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("bench_retrieval",
                                                  root / "benchmarks" / "retrieval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    name = bench.DEFAULT_VARIANT
    assert name.startswith("pca(std)+")
    fields = bench.VARIANTS[name.removeprefix("pca(std)+")]
    cfg = resolve(TrainConfig())
    assert {k: getattr(cfg, k) for k in fields} == fields
    assert cfg.pixel_pca == 64 and cfg.pixel_pca_standardize
