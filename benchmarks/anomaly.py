"""Anomaly protocol suite: every scorer beside PCA-64 and raw-pixel 1-NN, default by worst row.

    nice -n 5 python benchmarks/anomaly.py [--protocols elpv-mono,elpv-poly,neu-oneclass,
        neu-synthetic,shapes] [--neu-classes 6] [--digits 10] [--n-test 60] [--no-write]

Protocols (train on normal images only; calibration = 20% of the training
normals held out, the rest is the reference the scorers learn from):

- elpv-mono / elpv-poly: ../shared/datasets/elpv, its README's split: the
  p = 0 cells of one type shuffled with random.Random(0), the first 80% train,
  test = the other 20% + every p = 1 cell.
- neu-oneclass: NEU-CLS, per class: 80% train, test = `n-test` of its other
  20% + as many images of the other five classes; mean over classes.
- neu-synthetic: the same held-out normals against copies of them with a
  pasted scratch, spot or foreign patch of 2-5% of the area
  (training/defects.py); mean over classes; also the localization (heatmap
  maximum inside the defect, 4 px margin).
- shapes: scikit-learn's digits (8x8, upscaled to 64x64), per digit: 80%
  train, test = its other 20% + as many other digits; mean over digits.

Per protocol and scorer: AUROC, AUPR, and TPR / FPR on the test set at the
scorer's own threshold calibrated on the held-out normals for a target FPR
of 0.01 and 0.05 (a note when the calibration set is too small for 0.01).
Baselines in the same run: PCA-64 reconstruction error and raw-pixel 1-NN
distance on 64x64 pixels, calibrated the same way. `detector`'s parts are
also reported alone (`detector:pca`, ...). Scan throughput of each scorer on
300x300 images (ELPV), one image per call as a scan does.

`--parts pca,gauss,texture,nn,pca2,gauss2` (or `...,seg`) fits the detector
with candidate parts, reported as the VARIANTS rules over the same pass;
`--dump-raw F.npz` saves its raw part scores per split (calibration, test
normal, test anomalous) for measuring further rules offline; with
`--synthetic draem,generic` also on synthetic anomalies made from the
calibration normals (`synthetic_anomalies`), for rules that weigh the parts by
how well they see those (docs/anomaly.md, "part weights from synthetic
anomalies"). The
localization is also reported for other heatmap rules (MAP_RULES) over the
detector's standardized part maps (`part_maps`).

The scorers that need a trained autoencoder (mse, ssim, knn, ...) are
measured by benchmarks/anomaly_models.py; the scorers here use the model only
for its tile size, so an untrained one is built. Rewrites docs/anomaly.md's
"## Protocol suite" section and docs/benchmarks.md's "## Anomaly protocol suite".
Skips a protocol whose data set is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's

# a worktree beside the main checkout points here with LATENTSIGHT_DATASETS=/work/shared/datasets
DATA = Path(os.environ.get("LATENTSIGHT_DATASETS") or ROOT.parent / "shared" / "datasets")
PROTOCOLS = ("elpv-mono", "elpv-poly", "neu-oneclass", "neu-synthetic", "shapes")
SCORERS = ["detector"]  # --with-texture adds the previous default (detector:texture ~ it)
BASELINES = ("pca64", "1nn")
# Other combination rules of the detector's parts, measured from the same pass (the raw part
# scores): name -> (parts, combine, spread). One part alone: any rule ranks the same.
VARIANTS = {
    "detector:pca": (("pca",), "max", "q90"),
    "detector:gauss": (("gauss",), "max", "q90"),
    "detector:texture": (("texture",), "max", "q90"),
    "detector:nn": (("nn",), "max", "q90"),
    "detector:pca+gauss+texture": (("pca", "gauss", "texture"), "l2", "q90"),
    "detector:mean": (("pca", "gauss", "texture", "nn"), "mean", "q90"),
    "detector:max": (("pca", "gauss", "texture", "nn"), "max", "q90"),
    "detector:l2-std": (("pca", "gauss", "texture", "nn"), "l2", "std"),
    "detector:pca+gauss+texture:l2-std": (("pca", "gauss", "texture"), "l2", "std"),
    "detector:pca+gauss+texture:max-q90": (("pca", "gauss", "texture"), "max", "q90"),
    "detector-v1+nn": (("pca", "gauss", "texture", "nn"), "max", "std"),
    # the default before this rule (version 1): max of (s - median) / std, three parts
    "detector-v1": (("pca", "gauss", "texture"), "max", "std"),
    # candidate fine-grid parts (measured with --parts ...,pca2,gauss2)
    "detector:pca2": (("pca2",), "max", "q90"),
    "detector:gauss2": (("gauss2",), "max", "q90"),
    "detector+pca2": (("pca", "gauss", "texture", "nn", "pca2"), "l2", "q90"),
    "detector+gauss2": (("pca", "gauss", "texture", "nn", "gauss2"), "l2", "q90"),
    "detector+pca2+gauss2": (("pca", "gauss", "texture", "nn", "pca2", "gauss2"), "l2", "q90"),
    # candidate synthetic-anomaly segmentation part (--parts pca,gauss,texture,nn,seg)
    "detector:seg": (("seg",), "max", "q90"),
    "detector+seg": (("pca", "gauss", "texture", "nn", "seg"), "l2", "q90"),
    # candidate image-level parts (--parts pca,gauss,texture,nn,pcamean,nncos): the PCA-64
    # baseline's whole-image mean error on the grid, and a 1-NN of per-image normalized grids
    "detector:pcamean": (("pcamean",), "max", "q90"),
    "detector:nncos": (("nncos",), "max", "q90"),
    "detector:pca+gauss+texture+nn": (("pca", "gauss", "texture", "nn"), "l2", "q90"),
    "detector+pcamean": (("pca", "gauss", "texture", "nn", "pcamean"), "l2", "q90"),
    "detector+nncos": (("pca", "gauss", "texture", "nn", "nncos"), "l2", "q90"),
    "detector+pcamean+nncos": (("pca", "gauss", "texture", "nn", "pcamean", "nncos"), "l2",
                               "q90"),
    "detector:pcamean+gauss+texture+nn": (("pcamean", "gauss", "texture", "nn"), "l2", "q90"),
    # the default before logq90 and nncos (format 2 as first shipped): l2 of q90 parts
    "detector-v2": (("pca", "gauss", "texture", "nn"), "l2", "q90"),
    "detector+nncos:q90": (("pca", "gauss", "texture", "nn", "nncos"), "l2", "q90"),
    "detector:pca+gauss+texture+nn:logq90": (("pca", "gauss", "texture", "nn"), "l2", "logq90"),
    "detector+pcamean+nncos:logq90": (("pca", "gauss", "texture", "nn", "pcamean", "nncos"),
                                      "l2", "logq90"),
    # candidate random-feature PaDiM part (--parts pca,gauss,texture,nn,nncos,padim)
    "detector:padim": (("padim",), "max", "q90"),
    "detector+padim": (("pca", "gauss", "texture", "nn", "nncos", "padim"), "l2", "logq90"),
    "detector+padim-gauss": (("pca", "texture", "nn", "nncos", "padim"), "l2", "logq90"),
    "detector:padim+texture": (("padim", "texture"), "l2", "logq90"),
    "detector:padim+texture+nncos": (("padim", "texture", "nncos"), "l2", "logq90"),
    "detector:padim+pca+texture": (("padim", "pca", "texture"), "l2", "logq90"),
    # `padimstd` (the padim features of each image standardized first: blind to its
    # brightness and contrast; in the default since session 8) and the default before it
    "detector:padimstd": (("padimstd",), "max", "q90"),
    "detector-v7": (("pca", "gauss", "texture", "nncos", "padim"), "l2", "logq90"),
    "detector:padimstd-for-padim": (("pca", "gauss", "texture", "nncos", "padimstd"), "l2",
                                    "logq90"),
}
# Heatmap rules measured for the localization (NEU synthetic): name -> (parts, combine,
# spread), over the parts' standardized maps (`part_maps`).
MAP_RULES = {
    "map:texture": (("texture",), "max", "q90"),
    "map:v1 (max, std; pca+gauss+texture)": (("pca", "gauss", "texture"), "max", "std"),
    "map:l2 q90 (pca+gauss+texture)": (("pca", "gauss", "texture"), "l2", "q90"),
    "map:max q90 (pca+gauss+texture; format 2 as first shipped)": (
        ("pca", "gauss", "texture"), "max", "q90"),
}
DETECTOR_PARTS = tuple(VARIANTS)
SECTION = "## Protocol suite"
BENCH_SECTION = "## Anomaly protocol suite (issue 13)"


# ---- data ---------------------------------------------------------------------------------


def read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def elpv(kind: str) -> tuple[list, list, list] | None:
    d = DATA / "elpv"
    if not (d / "labels.csv").is_file():
        return None
    rows = [ln.split() for ln in (d / "labels.csv").read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if r[2] == kind]
    normal = [r[0] for r in rows if float(r[1]) == 0]
    bad = [r[0] for r in rows if float(r[1]) == 1]
    random.Random(0).shuffle(normal)
    n = int(0.8 * len(normal))
    return ([read_gray(d / f) for f in normal[:n]], [read_gray(d / f) for f in normal[n:]],
            [read_gray(d / f) for f in bad])


def neu_classes() -> dict[str, list[Path]] | None:
    d = DATA / "neu-cls"
    if not d.is_dir():
        return None
    return {c.name: sorted(c.iterdir()) for c in sorted(d.iterdir()) if c.is_dir()}


def digits64() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize(
        (64, 64), Image.BILINEAR)) for im in d.images]
    return np.stack(imgs), d.target


# ---- baselines ----------------------------------------------------------------------------


def pixels64(imgs: list[np.ndarray]) -> np.ndarray:
    from latentsight.embedder.images import resize

    return np.stack([resize(p, 64).astype(np.float32).ravel() / 255 for p in imgs])


class PixelBaseline:
    """PCA-64 reconstruction error or raw-pixel 1-NN distance on 64x64 pixels."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def fit(self, calib: list[np.ndarray], reference: list[np.ndarray]) -> PixelBaseline:
        from sklearn.decomposition import PCA

        self.ref_ = pixels64(reference)
        if self.kind == "pca64":
            self.pca_ = PCA(min(64, len(self.ref_) - 1), random_state=0).fit(self.ref_)
        self.cal_ = self.decision_function(calib)
        return self

    def decision_function(self, imgs: list[np.ndarray]) -> np.ndarray:
        x = pixels64(imgs)
        if self.kind == "pca64":
            rec = self.pca_.inverse_transform(self.pca_.transform(x))
            return ((rec - x) ** 2).mean(1)
        d = torch.cdist(torch.from_numpy(x), torch.from_numpy(self.ref_))
        return d.min(1).values.numpy().astype(np.float64)

    def threshold_for_fpr(self, fpr: float) -> float:
        return float(np.quantile(self.cal_, 1 - fpr, method="higher"))


# ---- scoring one split ----------------------------------------------------------------------


def tiny_encoder(tile: int):
    from latentsight.embedder.encoder import Encoder
    from latentsight.embedder.models import create

    torch.manual_seed(0)
    return Encoder(create("ae", image_size=tile, depth=3, width=8, latent_dim=16), device="cpu")


DET_PARAMS: dict[str, Any] = {}  # --parts: the detector's parts for the whole run
RAW: dict[str, list] = {}  # --dump-raw: raw part scores per protocol split
SYNTH: list[str] = []  # --synthetic: also dump the parts' raw scores on synthetic anomalies


def fit_all(train: list[np.ndarray], seed: int) -> dict[str, Any]:
    """Every scorer and baseline fitted on one training split (20% held out to calibrate)."""
    from latentsight.embedder.detector import choose_geometry
    from latentsight.embedder.scoring import make_scorer

    perm = np.random.default_rng(seed).permutation(len(train))
    n_cal = max(2, int(round(0.2 * len(train))))
    calib = [train[i] for i in sorted(perm[:n_cal])]
    ref = [train[i] for i in sorted(perm[n_cal:])]
    geo = choose_geometry([p.shape[:2] for p in ref])
    tile = min(64, min(min(p.shape[:2]) for p in ref) // 8 * 8)
    enc = tiny_encoder(tile)
    out: dict[str, Any] = {"_geometry": geo, "_n_cal": len(calib)}
    for name in SCORERS:
        t0 = time.perf_counter()
        extra = DET_PARAMS if name == "detector" else {}
        out[name] = make_scorer(name, enc, scale=geo["scale"], fpr=0.05, **extra).fit(
            calib, reference=ref)
        out[f"_fit_s:{name}"] = time.perf_counter() - t0
    for name in BASELINES:
        out[name] = PixelBaseline(name).fit(calib, ref)
    for kind in SYNTH:
        out[f"_synth:{kind}"] = synthetic_anomalies(calib, seed, kind)
    return out


def synthetic_anomalies(imgs: list[np.ndarray], seed: int, kind: str = "draem",
                        copies: int = 2) -> list[np.ndarray]:
    """`copies` copies of each image with a synthetic anomaly at the image's own size.

    "draem": embedder/synthetic.py's masks (smooth noise, large regions) filled with another
    image's content, procedural noise or a brightness change (images of one shape are
    batched: the donors); "generic": small defects of the common kinds, one per copy in turn:
    a thin scar (a line 1-3% of the short side wide, 15-50% long, darker or brighter by 1-3
    of the image's standard deviations, or another image's content: CutPaste-scar), a spot
    (a disk 2-5% of the side across, likewise) or a small smooth-noise region (0.5-3% of
    the area) with another image's content, procedural noise or a brightness change.
    """
    from latentsight.embedder.synthetic import synthesize

    gen = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(imgs):
        groups.setdefault(p.shape, []).append(i)
    out = []
    for idx in groups.values():
        x = torch.from_numpy(np.stack([np.atleast_3d(imgs[i]).transpose(2, 0, 1)
                                       for i in idx])).float() / 255
        for c in range(copies):
            if kind == "draem":
                xa, _m = synthesize(x, gen, keep_normal=0.0)
            else:
                xa = torch.stack([_generic(x, j, (c + j) % 3, rng) for j in range(len(x))])
            a = (xa.clamp(0, 1) * 255).round().to(torch.uint8).numpy().transpose(0, 2, 3, 1)
            out += [im[:, :, 0] if imgs[0].ndim == 2 else im for im in a]
    return out


def _generic(x: torch.Tensor, j: int, which: int, rng: np.random.Generator) -> torch.Tensor:
    """One small synthetic defect on image j of x (B, C, h, w): 0 scar, 1 spot, 2 region."""
    from latentsight.embedder.synthetic import smooth_noise

    img = x[j]
    _, h, w = img.shape
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if which == 0:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0, np.pi)
        half = rng.uniform(0.15, 0.5) * side / 2
        width = max(1.0, rng.uniform(0.01, 0.03) * side)
        along = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        across = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        mask = (np.abs(along) <= half) & (np.abs(across) <= width / 2)
    elif which == 1:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = max(1.0, rng.uniform(0.01, 0.025) * side)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    else:
        g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
        n = smooth_noise(1, h, w, g)[0, 0].numpy()
        mask = n >= np.quantile(n, 1 - rng.uniform(0.005, 0.03))
    m = torch.from_numpy(mask.astype(np.float32))[None]
    fill_kind = int(rng.integers(3))
    sd = float(img.std()) + 1e-3
    if fill_kind == 0:  # darker or brighter by 1-3 standard deviations
        fill = img + float(rng.choice([-1, 1]) * rng.uniform(1, 3)) * sd
    elif fill_kind == 1:  # another image's content, shifted
        k = int(rng.integers(len(x)))
        fill = torch.roll(x[k], (int(rng.integers(h)), int(rng.integers(w))), (1, 2))
    else:  # procedural noise at the image's level
        fill = img.mean() + sd * 2 * torch.randn(img.shape[0], h, w,
                                                 generator=torch.Generator().manual_seed(
                                                     int(rng.integers(1 << 31))))
    return img * (1 - m) + m * fill.clamp(0, 1)


def variant(det, raw: np.ndarray, name: str) -> np.ndarray:
    """A VARIANTS rule applied to raw part scores (N, P), standardized on the calibration
    normals' raw part scores as the detector does."""
    from latentsight.embedder.detector import _combine_z, fit_standardization, standardize

    parts, combine, spread = VARIANTS[name]
    idx = [det.parts.index(p) for p in parts]
    loc, sp = fit_standardization(det.part_scores_[:, idx], spread)
    return _combine_z(standardize(raw[:, idx], loc, sp, spread), combine, axis=1)


def has_parts(det, name: str) -> bool:
    return all(p in det.parts for p in VARIANTS[name][0])


def score_all(fitted: dict[str, Any], imgs: list[np.ndarray]) -> dict[str, np.ndarray]:
    out = {n: np.asarray(fitted[n].decision_function(imgs))
           for n in (*SCORERS, *BASELINES) if n != "detector"}
    det = fitted["detector"]
    raw = det.part_raw(imgs)
    fitted.setdefault("_raw", []).append(raw)
    out["detector"] = det._combine(raw) / det.scale_
    for name in VARIANTS:
        if has_parts(det, name):
            out[name] = variant(det, raw, name)
    return out


def part_threshold(det, name: str, fpr: float) -> float:
    cal = variant(det, det.part_scores_, name)
    return float(np.quantile(cal, 1 - fpr, method="higher"))


def thresholds(fitted: dict[str, Any], name: str, fpr: float) -> float:
    if name in VARIANTS:
        return part_threshold(fitted["detector"], name, fpr)
    return float(fitted[name].threshold_for_fpr(fpr))


def metrics(normal: np.ndarray, anomalous: np.ndarray, thr: dict[float, float]
            ) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    s = np.r_[normal, anomalous]
    out = {"auroc": float(roc_auc_score(y, s)), "aupr": float(average_precision_score(y, s))}
    for f, t in thr.items():
        out[f"tpr@{f}"] = float((anomalous > t).mean())
        out[f"fpr@{f}"] = float((normal > t).mean())
    return out


def evaluate(fitted, normal_imgs, anomalous_imgs, key: str = "") -> dict[str, dict[str, float]]:
    sn, sa = score_all(fitted, normal_imgs), score_all(fitted, anomalous_imgs)
    if key:
        det = fitted["detector"]
        RAW[key] = [list(det.parts), det.part_scores_, *fitted["_raw"][-2:]]
        RAW[key].append({k: det.part_raw(fitted[f"_synth:{k}"]) for k in SYNTH})
    return {n: metrics(sn[n], sa[n], {f: thresholds(fitted, n, f) for f in (0.01, 0.05)})
            for n in sn}


def map_rule(det, z: dict[str, np.ndarray], parts, combine: str, spread: str) -> np.ndarray:
    """A heatmap rule over the detector's standardized part maps `z`, restandardized by
    the calibration normals with `spread` (the maps are brought back to raw values first)."""
    from latentsight.embedder.detector import _combine_z, fit_standardization, standardize

    maps = []
    for p in parts:
        i = det.parts.index(p)
        x = z[p] * det.part_spread_[i] + det.part_loc_[i]
        raw = np.exp(x) if det.spread == "logq90" else x
        loc, sp = fit_standardization(det.part_scores_[:, i : i + 1], spread)
        maps.append(standardize(raw, loc[0], sp[0], spread))
    return _combine_z(np.stack(maps), combine, axis=0)


def mean_rows(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {n: {k: float(np.mean([r[n][k] for r in rows])) for k in rows[0][n]}
            for n in rows[0]}


# ---- protocols --------------------------------------------------------------------------------


def run_elpv(kind: str, args) -> tuple[dict, dict] | None:
    data = elpv(kind)
    if data is None:
        return None
    train, normal, bad = data
    if args.max_train:
        train = train[: args.max_train]
    if args.max_test:  # a subset run: the first (shuffled) test normals and defects
        rng = np.random.default_rng(args.seed)
        normal = [normal[i] for i in sorted(rng.permutation(len(normal))[: args.max_test])]
        bad = [bad[i] for i in sorted(rng.permutation(len(bad))[: args.max_test])]
    fitted = fit_all(train, args.seed)
    res = evaluate(fitted, normal, bad, key=f"elpv-{kind}")
    info = {"geometry": fitted["_geometry"], "n_cal": fitted["_n_cal"],
            "n_train": len(train), "n_normal": len(normal), "n_anomalous": len(bad),
            "fit_s": {n: fitted[f"_fit_s:{n}"] for n in SCORERS}, "fitted": fitted,
            "sample": normal[:20] + bad[:20]}
    return res, info


def run_neu(args, want: set[str]) -> dict[str, tuple[dict, dict]]:
    from latentsight.training.defects import KINDS, paste_defect, peak_inside

    files = neu_classes()
    if files is None:
        return {}
    rng = np.random.default_rng(args.seed)
    classes = list(files)[: args.neu_classes]
    px = {c: [read_gray(f) for f in fs] for c, fs in files.items()}
    one, syn, loc = [], [], {n: [] for n in (*SCORERS, *MAP_RULES)}
    n_cal = n_train = 0
    for c in classes:
        t0 = time.perf_counter()
        perm = rng.permutation(len(px[c]))
        n_tr = int(0.8 * len(perm))
        train = [px[c][i] for i in perm[:n_tr]][: args.max_train or None]
        normal = [px[c][i] for i in perm[n_tr:]][: args.n_test]
        others = [(o, i) for o in px if o != c for i in range(len(px[o]))]
        pick = rng.choice(len(others), len(normal), replace=False)
        other_px = [px[others[j][0]][others[j][1]] for j in pick]
        fitted = fit_all(train, args.seed)
        n_cal, n_train = fitted["_n_cal"], len(train)
        if "neu-oneclass" in want:
            one.append(evaluate(fitted, normal, other_px, key=f"neu-oneclass/{c}"))
        if "neu-synthetic" in want:
            defect, masks = [], []
            for n, img in enumerate(normal):
                o = others[int(rng.integers(len(others)))]
                d, m = paste_defect(img, KINDS[n % len(KINDS)], rng,
                                    area=float(rng.uniform(0.02, 0.05)), donor=px[o[0]][o[1]])
                defect.append(d)
                masks.append(m)
            syn.append(evaluate(fitted, normal, defect, key=f"neu-synthetic/{c}"))
            for n in SCORERS:
                loc[n].append(np.mean([peak_inside(m, mask, margin=4) for m, mask in zip(
                    fitted[n].anomaly_map(defect), masks, strict=True)]))
            det = fitted["detector"]
            zmaps = [det.part_maps(d) for d in defect]
            for n, (parts, combine, spread) in MAP_RULES.items():
                loc[n].append(np.mean([peak_inside(map_rule(det, z, parts, combine, spread),
                                                   mask, margin=4)
                                       for z, mask in zip(zmaps, masks, strict=True)]))
        print(f"  neu {c}: {time.perf_counter() - t0:.0f}s", flush=True)
    base = {"n_cal": n_cal, "n_train": n_train, "n_normal": args.n_test,
            "classes": classes, "geometry": fitted["_geometry"]}
    out = {}
    if one:
        out["neu-oneclass"] = (mean_rows(one), {**base, "n_anomalous": args.n_test})
    if syn:
        out["neu-synthetic"] = (mean_rows(syn), {**base, "n_anomalous": args.n_test,
                                                 "loc": {n: float(np.mean(v))
                                                         for n, v in loc.items()}})
    return out


def run_shapes(args) -> tuple[dict, dict]:
    imgs, target = digits64()
    rng = np.random.default_rng(args.seed)
    rows = []
    digits = list(range(10))[: args.digits]
    for d in digits:
        idx = rng.permutation(np.flatnonzero(target == d))
        n_tr = int(0.8 * len(idx))
        train = [imgs[i] for i in idx[:n_tr]]
        normal = [imgs[i] for i in idx[n_tr:]]
        other = rng.choice(np.flatnonzero(target != d), len(normal), replace=False)
        fitted = fit_all(train, args.seed)
        rows.append(evaluate(fitted, normal, [imgs[i] for i in other], key=f"shapes/{d}"))
    return mean_rows(rows), {"n_cal": fitted["_n_cal"], "n_train": len(train),
                             "n_normal": len(normal), "n_anomalous": len(normal),
                             "digits": digits, "geometry": fitted["_geometry"]}


def throughput(fitted: dict[str, Any], sample: list[np.ndarray]) -> dict[str, float]:
    """Images/s of decision_function, one image per call (as a scan calls it), with 1 and
    2 torch threads; the baselines measured the same way are the reference."""
    out = {}
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n in (*SCORERS, *BASELINES):
            sc = fitted[n]
            sc.decision_function(sample[:2])
            t0 = time.perf_counter()
            for p in sample:
                sc.decision_function([p])
            out[f"{n} ({threads} thread{'s' if threads > 1 else ''})"] = \
                len(sample) / (time.perf_counter() - t0)
    torch.set_num_threads(before)
    out["_load"] = os.getloadavg()[0]
    return out


# ---- report ---------------------------------------------------------------------------------


TIE = 0.01  # worst-protocol AUROCs this close are a tie, broken by the next-worst protocol


def choose_default(results: dict[str, tuple[dict, dict]]) -> tuple[str, dict[str, float]]:
    """The scorer whose worst AUROC over the protocols is highest; scorers within TIE of
    it are ranked by their next-worst protocol (and so on: leximin)."""
    names = [n for n in (*SCORERS, *DETECTOR_PARTS) if all(n in r for r, _ in results.values())]
    ranks = {n: sorted(r[n]["auroc"] for r, _ in results.values()) for n in names}
    worst = {n: v[0] for n, v in ranks.items()}
    top = max(worst.values())
    tied = [n for n in names if worst[n] >= top - TIE]
    return max(tied, key=lambda n: ranks[n][1:]), worst


def report(results, speed, args, total_s) -> str:
    from latentsight.embedder.scoring import DEFAULT_SCORER

    best, worst = choose_default(results)
    names = [n for n in (*SCORERS, *BASELINES, *DETECTOR_PARTS)
             if all(n in r for r, _ in results.values())]
    lines = [SECTION, "",
             f"`python benchmarks/anomaly.py` (seed {args.seed}, torch threads "
             f"{torch.get_num_threads()}, {total_s / 60:.1f} min on a shared 2-core machine, "
             f"load average {os.getloadavg()[0]:.1f}). Threshold = the scorer's own, "
             "calibrated on held-out training normals for the target FPR; TPR/FPR measured "
             "on the test set. Baselines on 64x64 pixels, same split, calibrated the same way.",
             ""]
    for proto, (res, info) in results.items():
        g = info.get("geometry", {})
        extra = ""
        if "classes" in info:
            extra = f", mean over {len(info['classes'])} classes"
        if "digits" in info:
            extra = f", mean over digits {info['digits'][0]}-{info['digits'][-1]}"
        note = ""
        if info["n_cal"] < 100:
            note = (f" {info['n_cal']} calibration normals: FPR 0.01 is below their "
                    f"resolution (1/{info['n_cal']}), so its threshold is their maximum.")
        lines += [f"### {proto}", "",
                  f"train {info['n_train']} normals ({info['n_cal']} held out to calibrate), "
                  f"test {info['n_normal']} normal + {info['n_anomalous']} anomalous{extra}; "
                  f"geometry chosen from the data: grid {g.get('grid')}, scale "
                  f"{g.get('scale')}.{note}", "",
                  "| scorer | AUROC | AUPR | TPR @1% | FPR @1% | TPR @5% | FPR @5% |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for n in names:
            r = res[n]
            mark = " **(default)**" if n == DEFAULT_SCORER else ""
            lines.append(f"| {n}{mark} | {r['auroc']:.3f} | {r['aupr']:.3f} | "
                         f"{r['tpr@0.01']:.3f} | {r['fpr@0.01']:.3f} | {r['tpr@0.05']:.3f} | "
                         f"{r['fpr@0.05']:.3f} |")
        if "loc" in info:
            lines += ["", "Localization (heatmap maximum inside the defect, 4 px margin): "
                      + ", ".join(f"{n} {v:.3f}" for n, v in info["loc"].items()) + "."]
        lines.append("")
    lines += ["### Summary (AUROC; the default is chosen by its worst protocol)", "",
              "| scorer | " + " | ".join(results) + " | worst |",
              "|---" * (len(results) + 2) + "|"]
    for n in names:
        row = [results[p][0][n]["auroc"] for p in results]
        mark = " **(default)**" if n == DEFAULT_SCORER else ""
        lines.append(f"| {n}{mark} | " + " | ".join(f"{v:.3f}" for v in row)
                     + f" | {min(row):.3f} |")
    lines += ["", "Worst-protocol AUROC: " + ", ".join(f"{n} {v:.3f}" for n, v in worst.items())
              + f"; the highest (ties within {TIE} broken by the next-worst protocol) is "
              f"**{best}**"
              + (" (the default)." if best == DEFAULT_SCORER else
                 f" (the default is {DEFAULT_SCORER}: update DEFAULT_SCORER).")]
    if speed:
        load = speed.get("_load")
        lines += ["", f"Scan throughput, decision_function one 300x300 ELPV image per call "
                  f"(no decoding or catalog writes; load average {load:.1f} while measured): "
                  + ", ".join(f"{n} {v:.1f} images/s" for n, v in speed.items()
                              if not n.startswith("_")) + "."]
    fits = [f"{p} {info['fit_s'][n]:.0f} s ({info['n_train']} normals)"
            for p, (_, info) in results.items() if "fit_s" in info for n in info["fit_s"]]
    if fits:
        lines += ["", "Fit time of the default (reference + calibration, 1 thread): "
                  + ", ".join(fits) + "."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    if section in old:
        head, rest = old.split(section, 1)
        nxt = rest.find("\n## ")
        old = head.rstrip() + "\n\n" + (rest[nxt + 1 :] if nxt >= 0 else "")
    path.write_text(old.rstrip() + "\n\n" + text.replace(SECTION, section, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neu-classes", type=int, default=6)
    ap.add_argument("--digits", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=60, help="NEU held-out normals per class")
    ap.add_argument("--max-train", type=int, default=0, help="cap training normals (0: all)")
    ap.add_argument("--max-test", type=int, default=0,
                    help="cap ELPV test normals and defects, each (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--with-texture", action="store_true",
                    help="also run the texture scorer on its own (doubles the run time)")
    ap.add_argument("--json-out", default="", help="also dump the results to this JSON file")
    ap.add_argument("--parts", default="",
                    help="the detector's parts for this run, comma-separated (default: its "
                         "defaults); e.g. pca,gauss,texture,nn,pca2,gauss2")
    ap.add_argument("--padim", default="",
                    help="the padim part's covariance and dimensions, e.g. position:32")
    ap.add_argument("--dump-raw", default="",
                    help="save the detector's raw part scores (calibration, test normal, test "
                         "anomalous) per protocol split to this .npz file")
    ap.add_argument("--synthetic", default="",
                    help="with --dump-raw, also dump the parts' raw scores on synthetic "
                         "anomalies made from the calibration normals (two per image) of "
                         "these kinds: draem, generic (comma-separated)")
    ap.add_argument("--merge", default="",
                    help="comma-separated JSON dumps of earlier runs: report them, run nothing")
    args = ap.parse_args()
    if args.with_texture:
        SCORERS.insert(0, "texture")
    if args.merge:
        torch.set_num_threads(args.threads)  # the header reports the runs' thread count
        results, speed, total = {}, {}, 0.0
        for f in args.merge.split(","):
            doc = json.loads(Path(f).read_text())
            results.update({k: tuple(v) for k, v in doc["results"].items()})
            speed = speed or doc["speed"]
            total += doc["total_s"]
        finish(results, speed, args, total)
        return
    SYNTH.extend(filter(None, args.synthetic.split(",")))
    if args.parts:
        DET_PARAMS["parts"] = tuple(args.parts.split(","))
    if args.padim:
        cov, _, dims = args.padim.partition(":")
        DET_PARAMS.update(padim_cov=cov, **({"padim_dims": int(dims)} if dims else {}))
    torch.set_num_threads(args.threads)
    want = set(args.protocols.split(","))
    t0 = time.perf_counter()
    results: dict[str, tuple[dict, dict]] = {}
    speed: dict[str, float] = {}
    for kind in ("mono", "poly"):
        if f"elpv-{kind}" in want:
            r = run_elpv(kind, args)
            if r is None:
                print(f"skipped elpv-{kind}: no data at {DATA / 'elpv'}")
                continue
            results[f"elpv-{kind}"] = r
            if not speed:
                speed = throughput(r[1]["fitted"], r[1]["sample"])
            print(f"elpv-{kind} done at {time.perf_counter() - t0:.0f}s: " + ", ".join(
                f"{n} {v['auroc']:.3f}" for n, v in r[0].items()), flush=True)
    if want & {"neu-oneclass", "neu-synthetic"}:
        got = run_neu(args, want)
        if not got:
            print(f"skipped NEU: no data at {DATA / 'neu-cls'}")
        results.update(got)
        print(f"neu done at {time.perf_counter() - t0:.0f}s", flush=True)
    if "shapes" in want:
        results["shapes"] = run_shapes(args)
        print(f"shapes done at {time.perf_counter() - t0:.0f}s", flush=True)
    if not results:
        print("no protocol ran")
        return
    total = time.perf_counter() - t0
    if args.json_out:
        clean = {k: (r, {a: b for a, b in i.items() if a not in ("fitted", "sample")})
                 for k, (r, i) in results.items()}
        Path(args.json_out).write_text(json.dumps(
            {"results": clean, "speed": speed, "total_s": total}, default=float))
    if args.dump_raw:
        flat = {}
        for k, (parts, cal, nor, ano, syn) in RAW.items():
            flat.update({f"{k}|cal": cal, f"{k}|normal": nor, f"{k}|anomalous": ano})
            flat.update({f"{k}|synth:{kind}": v for kind, v in syn.items()})
            flat[f"{k}|parts"] = np.asarray(parts)
        np.savez(args.dump_raw, **flat)
    finish(results, speed, args, total)


def finish(results, speed, args, total) -> None:
    text = report(results, speed, args, total)
    print(text)
    if not args.no_write:
        write_section(ROOT / "docs" / "anomaly.md", SECTION, text)
        write_section(ROOT / "docs" / "benchmarks.md", BENCH_SECTION, text)


if __name__ == "__main__":
    main()
