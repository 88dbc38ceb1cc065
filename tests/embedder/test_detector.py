"""The default detector on small dark defects in a texture; geometry from the data.

The contract (fit/decision_function/predict/maps/state) is covered for every
registered scorer, `detector` included, by tests/embedder/test_scoring.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from latentsight.embedder.detector import MIN_SCALE, choose_geometry
from latentsight.embedder.scoring import DEFAULT_SCORER, make_scorer, scorer_from_state
from latentsight.index.scan import load_scorer
from latentsight.training.defects import peak_inside
from sklearn.metrics import roc_auc_score

SIDE = 48


def grain(rng: np.random.Generator, size: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    """A busy random texture: blurred noise grains plus faint stripes, mid-gray."""
    h, w = size
    noise = rng.normal(0, 1, (h + 4, w + 4))
    k = np.ones(3) / 3
    noise = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, noise)
    noise = np.apply_along_axis(lambda c: np.convolve(c, k, "same"), 0, noise)[2:-2, 2:-2]
    yy = np.arange(h)[:, None]
    img = 140 + 45 * noise + 12 * np.sin(2 * np.pi * yy / rng.uniform(6, 9) + rng.uniform(0, 6))
    return np.clip(img, 0, 255).astype(np.uint8)


def dark_defect(img: np.ndarray, kind: str, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A thin dark crack (a random walk 1-2 px wide) or a small dark spot, and its mask."""
    h, w = img.shape
    mask = np.zeros((h, w), bool)
    if kind == "crack":
        y, x = rng.uniform(8, h - 8), rng.uniform(8, w - 8)
        ang = rng.uniform(0, np.pi)
        for _ in range(18):
            ang += rng.normal(0, 0.3)
            y = float(np.clip(y + np.sin(ang), 1, h - 2))
            x = float(np.clip(x + np.cos(ang), 1, w - 2))
            mask[int(y), int(x)] = mask[int(y) + 1, int(x)] = True
    else:
        cy, cx = rng.uniform(6, h - 6, 2)
        yy, xx = np.mgrid[0:h, 0:w]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2.5, 3.5) ** 2
    out = img.astype(np.float64)
    out[mask] = rng.uniform(25, 45)
    return out.astype(np.uint8), mask


@pytest.fixture(scope="module")
def encoder(anomaly_home):
    enc, _ = load_scorer(anomaly_home, anomaly_home.catalog.model("scan-test"), "cpu")
    return enc


@pytest.fixture(scope="module")
def grain_default(encoder):
    rng = np.random.default_rng(3)
    ref = [grain(rng) for _ in range(40)]
    calib = [grain(rng) for _ in range(30)]
    return make_scorer(DEFAULT_SCORER, encoder, fpr=0.05).fit(calib, reference=ref)


def test_default_finds_and_localizes_small_dark_cracks_and_spots(grain_default):
    sc = grain_default
    rng = np.random.default_rng(4)
    normal = [grain(rng) for _ in range(24)]
    bad, masks = [], []
    for i in range(24):
        d, m = dark_defect(grain(rng), ("crack", "spot")[i % 2], rng)
        bad.append(d)
        masks.append(m)
    assert max(m.mean() for m in masks) < 0.03  # small: under 3% of the image
    s_n, s_a = sc.decision_function(normal), sc.decision_function(bad)
    auc = roc_auc_score(np.r_[np.zeros(24), np.ones(24)], np.r_[s_n, s_a])
    inside = [peak_inside(m, mask, margin=2) for m, mask in zip(sc.anomaly_map(bad), masks,
                                                                strict=True)]
    assert auc >= 0.9, f"AUROC {auc:.3f}"
    assert np.mean(inside) >= 0.8, f"heatmap maximum inside the defect for {np.mean(inside):.2f}"


def test_geometry_from_non_square_images_of_mixed_sizes():
    sizes = [(100, 300), (120, 340), (90, 280), (1000, 1500), (110, 320)]
    g = choose_geometry(sizes)
    assert g["median_size"] == [110, 320]
    gh, gw = g["grid"]
    assert gw == 64 and gh == round(64 * 110 / 320)  # the median aspect, long side 64 cells
    assert g["scale"] == pytest.approx(256 / 320)
    big = choose_geometry([(2000, 3000)] * 3)
    assert big["scale"] == MIN_SCALE  # never downscaled so far that a small defect vanishes
    small = choose_geometry([(40, 30)] * 3)
    assert small["scale"] == 1.0 and small["grid"] == [40, 30]  # no more cells than pixels
    with pytest.raises(ValueError, match="at least one image size"):
        choose_geometry([])


def test_detector_fits_and_scores_mixed_non_square_sizes(encoder):
    rng = np.random.default_rng(8)
    sizes = [(40, 72), (44, 80), (36, 64), (48, 96)]
    ref = [grain(rng, sizes[i % 4]) for i in range(24)]
    calib = [grain(rng, sizes[i % 4]) for i in range(16)]
    sc = make_scorer("detector", encoder, fpr=0.1).fit(calib, reference=ref)
    assert sc.geometry_["grid"] == [round(64 * 42 / 76), 64]
    imgs = [grain(rng, (30, 100)), grain(rng, (64, 64))]
    maps = sc.anomaly_map(imgs)
    assert [m.shape for m in maps] == [(30, 100), (64, 64)]
    again = scorer_from_state(encoder, sc.state(), sc.arrays())
    np.testing.assert_allclose(again.decision_function(imgs), sc.decision_function(imgs),
                               rtol=1e-5)
    assert again.geometry_ == sc.geometry_


def test_detector_parts_and_validation(encoder):
    rng = np.random.default_rng(9)
    imgs = [grain(rng) for _ in range(12)]
    for parts in (("pca",), ("gauss", "texture"), ("nn",), ("pcamean",), ("nncos",),
                  ("pca", "pcamean", "nncos")):
        sc = make_scorer("detector", encoder, parts=parts, fpr=0.1).fit(imgs)  # two-fold
        scores, z = sc.part_decision(imgs[:2])
        assert set(z) == set(parts)
        np.testing.assert_allclose(scores, sc.decision_function(imgs[:2]), rtol=1e-6)
        again = scorer_from_state(encoder, sc.state(), sc.arrays())
        np.testing.assert_allclose(again.decision_function(imgs[:3]),
                                   sc.decision_function(imgs[:3]), rtol=1e-5)
    with pytest.raises(ValueError, match="'parts' must be a non-empty subset"):
        make_scorer("detector", encoder, parts=("nope",)).fit(imgs)


def test_detector_saved_before_combine_and_spread_loads_with_the_old_rule(encoder):
    """A state of format 1 (no "version", no combine/spread params) keeps max of (s - median)
    / std over its parts, not the newer defaults: its scores are unchanged after loading."""
    rng = np.random.default_rng(10)
    imgs = [grain(rng) for _ in range(12)]
    sc = make_scorer("detector", encoder, parts=("pca", "gauss", "texture"), combine="max",
                     spread="std", fpr=0.1).fit(imgs)
    state = sc.state()
    del state["version"], state["params"]["combine"], state["params"]["spread"]
    old = scorer_from_state(encoder, state, sc.arrays())
    assert (old.combine, old.spread) == ("max", "std")
    test = [grain(rng) for _ in range(3)] + [dark_defect(grain(rng), "spot", rng)[0]]
    np.testing.assert_allclose(old.decision_function(test), sc.decision_function(test),
                               rtol=1e-5)
    assert old.anomaly_map(test[-1:])[0].shape == (SIDE, SIDE)
    with pytest.raises(ValueError, match="'combine' and 'spread'"):
        make_scorer("detector", encoder, combine="median").fit(imgs)


def test_detector_saved_before_the_l2_rule_still_loads_and_scores_the_same():
    """tests/embedder/data/detector_v1.*: a version-1 detector (max of std-standardized parts)
    saved by the code before `combine`/`spread`/`nn`, with the scores it gave."""
    import json
    from pathlib import Path

    from latentsight.embedder.encoder import Encoder
    from latentsight.embedder.models import create
    from safetensors.numpy import load_file

    data = Path(__file__).parent / "data"
    state = json.loads((data / "detector_v1.json").read_text())
    arrays = load_file(str(data / "detector_v1.safetensors"))
    enc = Encoder(create("ae", image_size=32, depth=3, width=8, latent_dim=16), device="cpu")
    sc = scorer_from_state(enc, state, arrays)
    assert (sc.combine, sc.spread) == ("max", "std")
    rng = np.random.default_rng(3)
    test = [np.clip(120 + 40 * rng.normal(size=(32, 32)), 0, 255).astype(np.uint8)
            for _ in range(4)]
    test[0][10:14, 10:20] = 10
    np.testing.assert_allclose(sc.decision_function(test), state["expected_scores"], rtol=1e-5)
    assert sc.state()["version"] == 2 and sc.state()["params"]["combine"] == "max"


def test_heatmap_comes_from_the_parts_that_localize(grain_default):
    """The image-level parts (`nn`, `nncos`: distances to one whole nearest image) have no
    place in the map, nor `padimstd` (it localized worse): the map is each pixel's largest
    standardized localizing part, so its maximum still falls in a small dark spot even when
    they are part of the score."""
    sc = grain_default
    assert {"nncos", "padim", "padimstd"} <= set(sc.parts)  # the default's parts
    rng = np.random.default_rng(11)
    img, mask = dark_defect(grain(rng), "spot", rng)
    z = sc.part_maps(img)
    assert set(z) == set(sc.parts) - {"nn", "nncos", "padimstd"}
    expected = np.maximum(np.stack(list(z.values())).max(0), 0) / sc.scale_
    amap = sc.anomaly_map([img])[0]
    np.testing.assert_allclose(amap, expected, rtol=1e-4, atol=1e-6)
    assert peak_inside(amap, mask, margin=2)
    # a spot far brighter in the map than the clean texture around it: not flattened
    assert amap[mask].max() > 2 * np.median(amap)
    only_nn = make_scorer("detector", sc.encoder, parts=("nn",), fpr=0.1).fit(
        [grain(rng) for _ in range(8)])
    flat = only_nn.anomaly_map([img])[0]
    assert flat.shape == img.shape and np.ptp(flat) == 0  # no localizing part: a flat map
    assert flat[0, 0] == pytest.approx(only_nn.decision_function([img])[0], rel=1e-5)


def test_detector_saved_in_format_2_loads_and_scores_the_same():
    """tests/embedder/data/detector_v2.*: the format-2 default (l2 of q90-standardized
    pca/gauss/texture/nn), saved by the code before the heatmap change and the optional
    parts, with its scores. Same scores now; the map comes from the localizing parts."""
    import json
    from pathlib import Path

    from latentsight.embedder.encoder import Encoder
    from latentsight.embedder.models import create
    from safetensors.numpy import load_file

    data = Path(__file__).parent / "data"
    state = json.loads((data / "detector_v2.json").read_text())
    arrays = load_file(str(data / "detector_v2.safetensors"))
    enc = Encoder(create("ae", image_size=32, depth=3, width=8, latent_dim=16), device="cpu")
    sc = scorer_from_state(enc, state, arrays)
    assert (sc.combine, sc.spread, sc.parts) == ("l2", "q90", ("pca", "gauss", "texture", "nn"))
    rng = np.random.default_rng(3)
    test = [np.clip(120 + 40 * rng.normal(size=(32, 32)), 0, 255).astype(np.uint8)
            for _ in range(4)]
    test[0][10:14, 10:20] = 10
    np.testing.assert_allclose(sc.decision_function(test), state["expected_scores"], rtol=1e-5)
    mask = np.zeros((32, 32), bool)
    mask[10:14, 10:20] = True
    assert peak_inside(sc.anomaly_map(test[:1])[0], mask, margin=2)
    assert set(sc.part_maps(test[0])) == {"pca", "gauss", "texture"}


def test_detector_saved_by_session_7_loads_and_scores_the_same():
    """tests/embedder/data/detector_v7.*: the session-7 default (pca, gauss, texture, nncos,
    padim; padim on 8 dimensions to keep the file small), saved by the code before `padimstd`
    (commit 9cf0e82), with its scores. It loads with its five parts and scores the same."""
    import json
    from pathlib import Path

    from latentsight.embedder.encoder import Encoder
    from latentsight.embedder.models import create
    from safetensors.numpy import load_file

    data = Path(__file__).parent / "data"
    state = json.loads((data / "detector_v7.json").read_text())
    arrays = load_file(str(data / "detector_v7.safetensors"))
    enc = Encoder(create("ae", image_size=16, depth=2, width=8, latent_dim=16), device="cpu")
    sc = scorer_from_state(enc, state, arrays)
    assert sc.parts == ("pca", "gauss", "texture", "nncos", "padim")
    assert (sc.padim_cov, sc.padim_dims) == ("position", 8)
    rng = np.random.default_rng(3)
    test = [np.clip(120 + 40 * rng.normal(size=(24, 24)), 0, 255).astype(np.uint8)
            for _ in range(4)]
    test[0][8:12, 6:16] = 10
    np.testing.assert_allclose(sc.decision_function(test), state["expected_scores"], rtol=1e-5)
    assert sc.decision_function(test[:1])[0] > 1.0  # the dark bar is flagged
    assert set(sc.part_maps(test[0])) == {"pca", "gauss", "texture", "padim"}


def test_detector_seg_part_trains_saves_and_loads(encoder):
    """The optional `seg` part (synthetic-anomaly segmentation net, embedder/synthetic.py):
    trained on the reference normals, saved as arrays, loads to the same scores and maps."""
    import torch
    from latentsight.embedder.synthetic import synthesize

    rng = np.random.default_rng(12)
    ref, calib = [grain(rng) for _ in range(10)], [grain(rng) for _ in range(6)]
    sc = make_scorer("detector", encoder, parts=("pca", "seg"), seg_steps=4,
                     fpr=0.1).fit(calib, reference=ref)
    again = scorer_from_state(encoder, sc.state(), sc.arrays())
    test = [grain(rng), dark_defect(grain(rng), "spot", rng)[0]]
    np.testing.assert_allclose(again.decision_function(test), sc.decision_function(test),
                               rtol=1e-5)
    assert set(sc.part_maps(test[1])) == {"pca", "seg"}
    x = torch.rand(6, 1, 24, 24)
    xa, m = synthesize(x, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and m.shape == (6, 1, 24, 24)
    assert torch.equal(xa * (1 - m), x * (1 - m))  # only inside the masks
    assert 0 <= float(xa.min()) and float(xa.max()) <= 1
    # keep_normal=0 (the benchmark's synthetic anomalies): every image gets one
    _, m0 = synthesize(x, torch.Generator().manual_seed(0), keep_normal=0.0)
    assert (m0.sum((1, 2, 3)) > 0).all()


def test_detector_padim_part_localizes_saves_and_loads(encoder):
    """The optional `padim` part (per-position Gaussians of random convolutional features,
    embedder/padim.py): a dark spot scores above every normal and its map peaks on the spot;
    the features are fixed by the seed; saved as arrays, it loads to the same scores."""
    import torch
    from latentsight.embedder import padim

    rng = np.random.default_rng(14)
    ref, calib = [grain(rng) for _ in range(24)], [grain(rng) for _ in range(8)]
    sc = make_scorer("detector", encoder, parts=("padim",), padim_cov="shared",
                     padim_dims=padim.DIMS, fpr=0.1).fit(calib, reference=ref)
    normals = [grain(rng) for _ in range(6)]
    bad, mask = dark_defect(grain(rng), "spot", rng)
    s_norm, s_bad = sc.decision_function(normals), sc.decision_function([bad])[0]
    assert s_bad > s_norm.max()
    assert peak_inside(sc.anomaly_map([bad])[0], mask, margin=3)
    again = scorer_from_state(encoder, sc.state(), sc.arrays())
    np.testing.assert_allclose(again.decision_function([*normals, bad]),
                               [*s_norm, s_bad], rtol=1e-5)
    # a model saved before the `padim_cov` option (shared, 64 dims) loads as what it holds,
    # though the default is now one covariance per position on 32 dims
    old = sc.state()
    old["params"] = {k: v for k, v in old["params"].items()
                     if k not in ("padim_cov", "padim_dims")}
    again = scorer_from_state(encoder, old, sc.arrays())
    assert (again.padim_cov, again.padim_dims) == ("shared", padim.DIMS)
    np.testing.assert_allclose(again.decision_function([bad]), [s_bad], rtol=1e-5)
    # one covariance per position (PaDiM's own), on 16 of the 64 feature dimensions
    pos = make_scorer("detector", encoder, parts=("padim",), padim_cov="position",
                      padim_dims=16, fpr=0.1).fit(calib, reference=ref)
    assert pos.arrays()["padim_precision"].shape[1:] == (16, 16)
    assert pos.decision_function([bad])[0] > pos.decision_function(normals).max()
    np.testing.assert_allclose(
        scorer_from_state(encoder, pos.state(), pos.arrays()).decision_function([bad]),
        pos.decision_function([bad]), rtol=1e-5)
    a, b = padim.feature_net(1, 0), padim.feature_net(1, 0)
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(a(x, (4, 4)), b(x, (4, 4)))
    # only the kept channels of the second layer are computed: the same features as all
    # 96 channels of both layers pooled, then the kept ones taken
    with torch.no_grad():
        h1 = torch.relu(a.c1((x - 0.5) / 0.25))
        full = torch.cat([torch.nn.functional.adaptive_avg_pool2d(h, (4, 4))
                          for h in (h1, torch.relu(a.c2(h1)))], 1)[:, a.keep]
        for dims in (padim.DIMS, padim.POSITION_DIMS, 3):
            torch.testing.assert_close(a(x, (4, 4), dims), full[:, :dims], rtol=1e-5,
                                       atol=1e-6)
    assert not torch.equal(a(x, (4, 4)), padim.feature_net(1, 1)(x, (4, 4)))
    with pytest.raises(ValueError, match="at least 2 training images"):
        padim.fit_padim(a, [torch.rand(1, 1, 16, 16)], (4, 4))


def test_padimstd_is_blind_to_a_whole_image_brightness_and_sees_a_dark_spot(encoder):
    """`padimstd`: the padim features of each image standardized first. A copy of a normal
    image made brighter and flatter scores as the image does under it (and moves `padim`'s
    scores more); a dark spot still stands out; both parts share one feature net and save
    and load together; the heatmap comes from `padim`, not from `padimstd`."""
    rng = np.random.default_rng(21)
    ref, calib = [grain(rng) for _ in range(24)], [grain(rng) for _ in range(8)]
    sc = make_scorer("detector", encoder, parts=("padim", "padimstd"), fpr=0.1).fit(
        calib, reference=ref)
    normals = [grain(rng) for _ in range(6)]
    shifted = [np.clip(p.astype(np.float64) * 0.5 + 110, 0, 255).astype(np.uint8)
               for p in normals]
    bad, mask = dark_defect(grain(rng), "spot", rng)
    _, z = sc.part_decision([*normals, *shifted, bad])
    n = len(normals)
    moved = {p: np.abs(z[p][n : 2 * n] - z[p][:n]) for p in ("padim", "padimstd")}
    assert moved["padimstd"].max() < 0.25  # uint8 rounding only; normals spread over ~7
    assert moved["padim"].mean() > 2 * moved["padimstd"].mean()
    assert z["padimstd"][-1] > z["padimstd"][:n].max()
    # it scores images; the heatmap keeps the parts that localize best (MAP_PARTS)
    assert "padimstd" not in sc.part_maps(bad)
    assert peak_inside(sc.anomaly_map([bad])[0], mask, margin=3)
    again = scorer_from_state(encoder, sc.state(), sc.arrays())
    np.testing.assert_allclose(again.decision_function([*normals, bad]),
                               sc.decision_function([*normals, bad]), rtol=1e-5)
    assert {"padim_mean", "padimstd_mean", "padimstd_precision"} <= set(sc.arrays())


def test_image_level_parts_pcamean_and_nncos(encoder):
    """`pcamean` is the whole grid's mean squared PCA reconstruction error (the PCA-64
    baseline's statistic, where `pca` takes the pooled maximum); `nncos` is the 1-NN distance
    of zero-mean unit-norm grids, blind to brightness and contrast where `nn` is not. Both
    are image-level: not in the heatmap's parts."""
    rng = np.random.default_rng(13)
    ref, calib = [grain(rng) for _ in range(12)], [grain(rng) for _ in range(8)]
    sc = make_scorer("detector", encoder, parts=("pca", "nn", "pcamean", "nncos"),
                     fpr=0.1).fit(calib, reference=ref)
    img, _ = dark_defect(grain(rng), "spot", rng)
    raw = sc.part_raw([img])[0]
    # the 48x48 grid is the image itself (repeated per channel: (C, H, W) flattened)
    x = np.tile(img.astype(np.float64).ravel() / 255, encoder.channels)
    d = x - sc.grid_mean_
    v = sc.grid_components_.astype(np.float64)
    r = d - (d @ v.T) @ v
    assert raw[2] == pytest.approx(float(np.mean(r * r)), rel=1e-4)
    assert raw[2] < raw[0]  # the mean of the error map, below its pooled maximum
    # an affine copy of a reference image (half the contrast, brighter): far from every
    # reference in raw pixels, at (almost) zero distance once each grid is normalized
    copy = np.clip(0.5 * ref[3].astype(np.float64) + 70, 0, 255).round().astype(np.uint8)
    raw_copy, raw_ref = sc.part_raw([copy, ref[3]])
    assert raw_ref[1] == pytest.approx(0, abs=1e-3) and raw_ref[3] == pytest.approx(0, abs=1e-3)
    assert raw_copy[3] < 0.05 < 10 * raw_copy[3] < raw_copy[1]
    assert set(sc.part_maps(img)) == {"pca"}
    again = scorer_from_state(encoder, sc.state(), sc.arrays())
    np.testing.assert_allclose(again.part_raw([img, copy]), sc.part_raw([img, copy]),
                               rtol=1e-5, atol=1e-7)


def test_logq90_standardizes_the_parts_on_a_log_scale():
    """The default spread: log scores, median and 90% quantile of the calibration normals.
    A power of a part's scores (a part on another scale of the same evidence) gives the same
    z; the linear q90 rule does not."""
    from latentsight.embedder.detector import (
        SPREADS,
        DetectorScorer,
        fit_standardization,
        standardize,
    )

    assert SPREADS[0] == "logq90" and DetectorScorer.__init__.__kwdefaults__["spread"] == "logq90"
    rng = np.random.default_rng(0)
    cal = rng.lognormal(size=(200, 2))
    test = rng.lognormal(size=(50, 2)) * 3
    z = standardize(test, *fit_standardization(cal, "logq90"), "logq90")
    z3 = standardize(test**3, *fit_standardization(cal**3, "logq90"), "logq90")
    np.testing.assert_allclose(z, z3, rtol=1e-9, atol=1e-9)
    zl = standardize(test, *fit_standardization(cal, "q90"), "q90")
    zl3 = standardize(test**3, *fit_standardization(cal**3, "q90"), "q90")
    assert not np.allclose(zl, zl3, rtol=1e-3)
    # the calibration normals' own median sits at 0 and their 90% quantile at 1
    zc = standardize(cal, *fit_standardization(cal, "logq90"), "logq90")
    np.testing.assert_allclose(np.median(zc, 0), 0, atol=1e-9)
    np.testing.assert_allclose(np.quantile(zc, 0.9, axis=0), 1, atol=1e-9)
    # a score of 0 (a duplicate of a normal image) stays finite
    assert np.isfinite(standardize(np.zeros((1, 2)), *fit_standardization(cal, "logq90"),
                                   "logq90")).all()
