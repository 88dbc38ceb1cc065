"""The scorer contract, parametrized over every registered scorer, and detection quality.

One scanning model is trained once per session (`anomaly_home`); every test
here only fits calibrations on it.
"""

from __future__ import annotations

import numpy as np
import pytest
from latentsight.embedder.scoring import DEFAULT_SCORER, SCORERS, make_scorer, scorer_from_state
from latentsight.index.manager import load_scorer
from latentsight.training.defects import paste_defect, peak_inside
from sklearn.metrics import roc_auc_score

from tests.imagegen import normal_textures, texture

FPR = 0.1
# detector configurations beside the registered scorers' defaults, under the same contract:
# name -> (scorer, options)
CONFIGS = {"detector+pcamean+nncos": ("detector", {
    "parts": ("pca", "gauss", "texture", "nn", "pcamean", "nncos")}),
    # the default before session 7 (nn) with padim's other covariance (shared by positions)
    "detector+nn+padim-shared": ("detector", {
        "parts": ("pca", "gauss", "texture", "nn", "nncos", "padim"), "padim_cov": "shared",
        "padim_dims": 64})}
CASES = sorted(SCORERS) + sorted(CONFIGS)


def build(name, encoder, **kwargs):
    scorer, options = CONFIGS.get(name, (name, {}))
    return make_scorer(scorer, encoder, **options, **kwargs)


@pytest.fixture(scope="module")
def encoder(anomaly_home):
    enc, _ = load_scorer(anomaly_home, anomaly_home.catalog.model("scan-test"), "cpu")
    return enc


@pytest.fixture(scope="module")
def reference():
    return normal_textures(30, seed=11)


@pytest.fixture(scope="module")
def fitted(encoder, reference):
    """Every scorer fitted once on 30 held-out normals (the kNN bank from 30 others)."""
    calib = normal_textures(30, seed=12)
    out = {}
    for name in CASES:
        sc = build(name, encoder, fpr=FPR)
        ret = sc.fit(calib, reference=reference)
        assert ret is sc  # fit returns self
        out[name] = sc
    return out


@pytest.fixture(scope="module")
def defects():
    """Normal textures with a scratch or a spot (8% of the area) and their masks."""
    rng = np.random.default_rng(5)
    imgs, masks = [], []
    for i, base in enumerate(normal_textures(24, seed=13)):
        d, m = paste_defect(base, ("scratch", "spot")[i % 2], rng, area=0.08)
        imgs.append(d)
        masks.append(m)
    return imgs, masks


@pytest.mark.parametrize("name", CASES)
def test_contract(name, fitted):
    sc = fitted[name]
    assert sc.decision_scores_.shape == (30,)
    assert sc.labels_.shape == (30,)
    np.testing.assert_array_equal(sc.labels_, sc.decision_scores_ > sc.threshold_)
    assert sc.threshold_ == pytest.approx(1.0)  # normalization: the threshold maps to 1.0
    imgs = normal_textures(5, seed=20) + [np.full((20, 50), 128, np.uint8)]
    rgb = np.stack([texture("stripes_h", np.random.default_rng(0), 40)] * 3, axis=-1)
    imgs.append(rgb[:, :36])  # RGB, non-square
    scores = sc.decision_function(imgs)
    assert scores.shape == (len(imgs),) and scores.dtype == np.float64
    np.testing.assert_array_equal(sc.predict(imgs), (scores > sc.threshold_).astype(int))
    maps = sc.anomaly_map(imgs)
    assert [m.shape for m in maps] == [im.shape[:2] for im in imgs]
    for im in imgs[:2]:
        s, m = sc.score_and_map(im)
        assert s == pytest.approx(sc.decision_function([im])[0], rel=1e-5)
        assert m.shape == im.shape[:2]


@pytest.mark.parametrize("name", CASES)
def test_calibrated_fpr_on_held_out_normals_is_near_target(name, fitted):
    sc = fitted[name]
    held_out = normal_textures(160, seed=30)
    fpr = float(sc.predict(held_out).mean())
    # Two-sided: a threshold set too high (nothing ever flagged) fails as well as one too low.
    # The lower bound is loose because the calibration on 30 normals is conservative: measured
    # 2-3% achieved for the 10% target (mse, ssim, knn over 160 held-out normals).
    assert FPR / 10 <= fpr <= FPR + 0.15, f"{name}: {fpr:.3f} of held-out normals flagged, " \
        f"target {FPR}"
    # a threshold derived for another rate from the stored calibration scores
    assert sc.threshold_for_fpr(0.5) < sc.threshold_


@pytest.mark.parametrize("name", CASES)
def test_state_round_trip_gives_the_same_scores(name, fitted, encoder):
    sc = fitted[name]
    again = scorer_from_state(encoder, sc.state(), sc.arrays())
    imgs = normal_textures(3, seed=40)
    np.testing.assert_allclose(again.decision_function(imgs), sc.decision_function(imgs),
                               rtol=1e-5)


def test_texture_state_saved_before_log_eps_keeps_raw_energies(encoder, reference):
    raw = make_scorer("texture", encoder, fpr=FPR, log_eps=0).fit(
        normal_textures(30, seed=12), reference=reference)
    state = raw.state()
    del state["params"]["log_eps"]  # as stored by models trained before the option existed
    again = scorer_from_state(encoder, state, raw.arrays())
    assert again.log_eps == 0
    imgs = normal_textures(3, seed=41)
    np.testing.assert_allclose(again.decision_function(imgs), raw.decision_function(imgs),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="'log_eps' option must be >= 0"):
        make_scorer("texture", encoder, log_eps=-1).fit(normal_textures(4, seed=1))


def test_kdtree_bank_search_is_exact(fitted, monkeypatch):
    """`texture`'s 12-number descriptors go to a k-d tree; it must match the brute force."""
    import latentsight.embedder.scoring as scoring

    sc = fitted["texture"]
    assert sc._tree is not None
    imgs = normal_textures(3, seed=42)
    rng = np.random.default_rng(0)
    d, _ = paste_defect(imgs[0], "scratch", rng, area=0.05)
    imgs.append(d)
    with_tree = sc.decision_function(imgs)
    monkeypatch.setattr(scoring, "KDTREE_MAX_DIM", 0)
    sc._set_bank(sc.bank_)
    assert sc._tree is None
    try:
        np.testing.assert_allclose(sc.decision_function(imgs), with_tree, rtol=1e-4)
    finally:
        monkeypatch.undo()
        sc._set_bank(sc.bank_)


@pytest.mark.parametrize("name", CASES)
def test_validation_happens_in_fit(name, encoder):
    sc = build(name, encoder, fpr=0.7)  # the constructor only stores it
    with pytest.raises(ValueError, match="'fpr' option must be in"):
        sc.fit(normal_textures(4, seed=1))
    with pytest.raises(RuntimeError, match="not fitted"):
        sc.decision_function(normal_textures(1, seed=1))


def test_unknown_scorer_is_a_clear_error(encoder):
    with pytest.raises(ValueError, match="Unknown scorer 'nope'"):
        make_scorer("nope", encoder)


def test_default_scorer_finds_and_localizes_pasted_defects(fitted, defects):
    sc = fitted[DEFAULT_SCORER]
    imgs, masks = defects
    normal = sc.decision_function(normal_textures(24, seed=50))
    anomalous = sc.decision_function(imgs)
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    auc = roc_auc_score(y, np.r_[normal, anomalous])
    inside = [peak_inside(m, mask, margin=1) for m, mask in zip(sc.anomaly_map(imgs), masks,
                                                                strict=True)]
    assert auc >= 0.9, f"AUROC {auc:.3f}"
    assert np.mean(inside) >= 0.8, f"heatmap maximum inside the defect for {np.mean(inside):.2f}"


def test_small_defect_in_large_non_square_image_is_flagged(fitted):
    sc = fitted[DEFAULT_SCORER]
    rng = np.random.default_rng(7)
    wide = normal_textures(3, seed=60, size=(48, 112))  # 48x112: 3 x 7 tiles of 16
    clean = sc.decision_function(wide)
    d, mask = paste_defect(wide[0], "spot", rng, area=0.02)  # a spot about 12 pixels across
    score, amap = sc.score_and_map(d)
    assert score > sc.threshold_ and score > clean.max()
    assert peak_inside(amap, mask, margin=2)
