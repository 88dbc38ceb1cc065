"""Train a scanning model on normal images only, calibrate its threshold, evaluate it.

    res = train_scorer(home, "good", TrainConfig(epochs=20))   # trains, calibrates, stores
    evaluate_anomaly(home, normal_label="good")                # AUROC, AUPR, F1, FPR

The catalog images labeled L (never synthetic ones) are split, seeded, into a
training part (the autoencoder learns from random tile crops of them; the
kNN memory bank is built from them) and a held-out calibration part: the
threshold is set on the held-out part only, for a target false-positive rate,
a contamination fraction, or given explicitly.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from latentsight.embedder.detector import choose_geometry
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.images import decode_file
from latentsight.embedder.progress import bar_disabled
from latentsight.embedder.scoring import DEFAULT_SCORER, SCORERS, make_scorer
from latentsight.index.catalog import ImageRow
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.manager import build_index, load_encoder, load_scorer, save_scorer
from latentsight.index.paths import from_catalog
from latentsight.training.train import TrainConfig, train

log = logging.getLogger(__name__)

# The default scanning model: 64-pixel tiles, features at 1/8 resolution for the kNN score.
SCAN_MODEL_CONFIG = {"image_size": 64, "depth": 3, "width": 32, "latent_dim": 128}
MAX_REFERENCE = 400  # training images whose tiles feed the kNN memory bank (sampled)


@dataclass
class ScorerResult:
    name: str
    scorer: str
    normal_label: str
    threshold: float
    n_train: int
    n_calib: int
    metrics: dict[str, Any]
    geometry: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        train = {k: v for k, v in self.metrics.items() if k not in ("history", "n_train")}
        return {**train, "name": self.name, "scorer": self.scorer,
                "normal_label": self.normal_label, "threshold": self.threshold,
                "n_train": self.n_train, "n_calib": self.n_calib, "geometry": self.geometry,
                "calibration": self.calibration}


# `--normal-label '*'`: every real catalog image, a background model. Defects are rare at any
# one place, so its map still points at them: what `index build --anomaly` needs to make
# defect images meet by defect kind when no label marks the normal ones (docs/benchmarks.md,
# retrieval across protocols); its threshold, calibrated on defects too, does not scan.
ALL_IMAGES = "*"


def is_background(model: Any) -> bool:
    """Whether a catalog model is a background model (`--normal-label '*'`)."""
    return ((model.metrics or {}).get("scoring") or {}).get("normal_label") == ALL_IMAGES


def normal_rows(home: Home, label: str) -> list[ImageRow]:
    """The real (non-synthetic) catalog images labeled `label` (every one for ALL_IMAGES)."""
    rows = home.catalog.images() if label == ALL_IMAGES else home.catalog.images(labels=[label])
    rows = [r for r in rows if not r.synthetic]
    if len(rows) < 4:
        msg = (f"Need at least 4 real catalog images to train a background model; found "
               f"{len(rows)}. Ingest images first: latentsight ingest FOLDER."
               if label == ALL_IMAGES else
               f"Need at least 4 catalog images labeled {label!r} to train and calibrate; "
               f"found {len(rows)}. Ingest normal images with --label {label}.")
        raise CatalogError(msg)
    return rows


def split_normals(rows: list[ImageRow], holdout: float, seed: int
                  ) -> tuple[list[ImageRow], list[ImageRow]]:
    """Seeded (train, calibration) split; at least 2 images on each side."""
    if not 0 < holdout < 1:
        msg = f"The 'holdout' option must be in (0, 1). Got {holdout} instead."
        raise ValueError(msg)
    perm = np.random.default_rng(seed).permutation(len(rows))
    n_cal = min(len(rows) - 2, max(2, int(round(len(rows) * holdout))))
    cal = sorted(perm[:n_cal].tolist())
    tr = sorted(perm[n_cal:].tolist())
    return [rows[i] for i in tr], [rows[i] for i in cal]


def decode_rows(rows: list[ImageRow], mode: str) -> list[np.ndarray]:
    out = []
    for r in rows:
        try:
            out.append(decode_file(from_catalog(r.path), mode=mode).pixels)
        except DecodeError as e:
            log.warning("skipped: %s", e)
    return out


def tile_size_for(rows: list[ImageRow], wanted: int, scale: float, depth: int) -> int:
    """The largest tile <= `wanted`, divisible by 2**depth, that fits the smallest image."""
    side = min(min(r.width, r.height) for r in rows) * scale
    step = 2**depth
    fit = int(side) // step * step
    return max(max(16, step), min(wanted, fit))


def train_scorer(
    home: Home,
    normal_label: str,
    cfg: TrainConfig | None = None,
    *,
    scorer: str = DEFAULT_SCORER,
    fpr: float = 0.01,
    contamination: float | None = None,
    threshold: float | None = None,
    holdout: float = 0.2,
    scale: float | None = None,
    scorer_params: dict[str, Any] | None = None,
    build: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> ScorerResult:
    """Train on the normal images labeled `normal_label`, calibrate on a held-out part, store.

    The model is trained on random tile crops (`cfg.crops`); its fitted scorer
    is stored with it (see index.manager.save_scorer) and, with `build`, its
    vector index is built so scans can show the nearest normal images.
    The working geometry (the scale of the local tiles and the global grid)
    is chosen from the training images' sizes (`choose_geometry`) unless
    `scale` is given; it is recorded in the result's `geometry`.
    """
    cfg = cfg or TrainConfig()
    rows = normal_rows(home, normal_label)
    tr_rows, cal_rows = split_normals(rows, holdout, cfg.seed)
    geometry = choose_geometry([(r.height, r.width) for r in tr_rows])
    if scale is None:
        scale = geometry["scale"]
    geometry["scale"] = scale
    mc = {**SCAN_MODEL_CONFIG, **cfg.model_config}
    mc["image_size"] = tile_size_for(rows, mc["image_size"], scale, mc.get("depth", 4))
    geometry["tile"] = mc["image_size"]
    # Reconstruction-only training on native-resolution tiles: the retrieval defaults
    # (InfoNCE, random resized crops, rotations) were not measured for scanning; the fields
    # left None (flips, photometric views, pixel PCA) take train.SCAN_DEFAULTS with crops.
    cfg = replace(cfg, crops=True, tile_scale=scale, image_ids=[r.id for r in tr_rows],
                  labels=[], model_config=mc, aux="none", crop_scale=0.0, rotate_deg=0.0)
    res = train(home, cfg, progress=progress)
    model = home.catalog.model(res.name)
    encoder = load_encoder(home, model, cfg.device)
    params = {"scale": scale, "fpr": fpr, "contamination": contamination,
              "threshold": threshold, **(scorer_params or {})}
    sc = make_scorer(scorer, encoder, **params)
    cal_px = decode_rows(cal_rows, encoder.mode)
    ref_rows = tr_rows
    if len(ref_rows) > MAX_REFERENCE:
        pick = np.random.default_rng(cfg.seed).choice(len(ref_rows), MAX_REFERENCE, replace=False)
        ref_rows = [ref_rows[i] for i in sorted(pick.tolist())]
    kwargs = {"reference": decode_rows(ref_rows, encoder.mode)} if _uses_reference(sc) else {}
    sc.fit(cal_px, **kwargs)
    extra = {"normal_label": normal_label, "train_ids": [r.id for r in tr_rows],
             "calib_ids": [r.id for r in cal_rows], "geometry": geometry}
    save_scorer(home, model, sc, extra)
    if build:
        build_index(home, home.catalog.model(res.name), device=cfg.device, progress=progress,
                    workers=workers)
    geometry.update(getattr(sc, "geometry_", {}), scale=scale, tile=mc["image_size"])
    return ScorerResult(name=res.name, scorer=scorer, normal_label=normal_label,
                        threshold=float(sc.threshold_), n_train=len(tr_rows),
                        n_calib=len(cal_px), metrics=res.metrics, geometry=geometry,
                        calibration=calibration_summary(sc))


def calibration_summary(sc: Any) -> dict[str, Any]:
    """The calibrated threshold, the spread of the calibration scores and achievable FPRs."""
    cal = np.asarray(sc.calibration_scores_, dtype=np.float64)
    n = len(cal)
    q = np.quantile(cal, [0.0, 0.5, 0.9, 1.0])
    out = {"n": n, "threshold": float(sc.threshold_), "min": float(q[0]),
           "median": float(q[1]), "p90": float(q[2]), "max": float(q[3]),
           "min_fpr": 1.0 / n if n else math.nan}
    for f in (0.01, 0.05):
        out[f"threshold@{f}"] = float(sc.threshold_for_fpr(f)) if f >= 1.0 / n else None
    return out


def fpr_note(n_calib: int, fpr: float) -> str | None:
    """A warning when `n_calib` normals cannot resolve `fpr`, with the achievable rate."""
    if n_calib * fpr >= 1:
        return None
    need = math.ceil(1 / fpr)
    return (f"{n_calib} held-out normals cannot resolve FPR {fpr:g} (need >= {need}); the "
            f"smallest achievable is {1 / n_calib:.3g}: the threshold is their maximum score.")


def _uses_reference(scorer: object) -> bool:
    parts = getattr(scorer, "parts", ())
    return getattr(scorer, "uses_reference", False) or any(
        getattr(SCORERS.get(p), "uses_reference", False) for p in parts)


def binary_metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, AUPR (average precision), F1/precision/recall at `threshold`, achieved FPR.

    y: 1 = anomalous, 0 = normal; scores: higher = more anomalous.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    pred = scores > threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    both = len(set(y.tolist())) == 2
    return {
        "auroc": float(roc_auc_score(y, scores)) if both else math.nan,
        "aupr": float(average_precision_score(y, scores)) if both else math.nan,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "precision": prec, "recall": rec,
        "fpr": fp / max(1, int((y == 0).sum())),
        "threshold": float(threshold),
    }


def at_fpr(sc: Any, scores: np.ndarray, y: np.ndarray,
           rates: tuple[float, ...] = (0.01, 0.05)) -> dict[str, dict[str, Any]]:
    """TPR and FPR on (scores, y) at the thresholds the calibration normals set for `rates`.

    A rate the calibration set is too small for gets the note of `fpr_note`
    (its threshold is then the calibration maximum).
    """
    n_cal = len(sc.calibration_scores_)
    out = {}
    for f in rates:
        t = float(sc.threshold_for_fpr(f))
        out[str(f)] = {"threshold": t, "tpr": float((scores[y == 1] > t).mean()),
                       "fpr": float((scores[y == 0] > t).mean()), "note": fpr_note(n_cal, f)}
    return out


def evaluate_anomaly(
    home: Home,
    *,
    normal_label: str | None = None,
    model: str | None = None,
    device: str = "auto",
    max_per_label: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the labeled catalog: label L is normal, every other label anomalous.

    The model's own training images are left out (they would look normal by
    construction); its calibration images stay in. `max_per_label` samples
    each label down (seeded) for a quicker estimate.
    """
    from tqdm import tqdm

    row = home.catalog.model(model)
    encoder, sc = load_scorer(home, row, device)
    state = row.metrics["scoring"]
    label = normal_label or state.get("normal_label")
    if label is None:
        raise CatalogError("Give --normal-label: the model does not record its normal label.")
    train_ids = set(state.get("train_ids") or [])
    rows = [r for r in home.catalog.images(labeled_only=True)
            if not r.synthetic and r.id not in train_ids]
    if max_per_label:
        rng = np.random.default_rng(seed)
        by: dict[str, list[ImageRow]] = {}
        for r in rows:
            by.setdefault(r.label, []).append(r)
        rows = [r for g in by.values()
                for r in (g if len(g) <= max_per_label else
                          [g[i] for i in sorted(rng.choice(len(g), max_per_label, False))])]
    y = np.asarray([int(r.label != label) for r in rows])
    if y.sum() == 0 or (1 - y).sum() == 0:
        msg = (f"Evaluation needs held-out images labeled {label!r} and images of other labels; "
               f"found {int((1 - y).sum())} and {int(y.sum())}.")
        raise CatalogError(msg)
    scores, keep = [], []
    for i, r in enumerate(tqdm(rows, desc="eval anomaly", unit="img", file=sys.stderr,
                               disable=bar_disabled(progress))):
        try:
            px = decode_file(from_catalog(r.path), mode=encoder.mode).pixels
        except DecodeError:
            continue
        scores.append(sc.decision_function([px])[0])
        keep.append(i)
    y = y[keep]
    out = binary_metrics(np.asarray(scores), y, float(sc.threshold_))
    out["at_fpr"] = at_fpr(sc, np.asarray(scores), y)
    per_label: dict[str, float] = {}
    normal = np.asarray(scores)[y == 0]
    labels = [rows[i].label for i in keep]
    for lab in sorted({x for x in labels if x != label}):
        s = np.asarray([sc_ for sc_, lb in zip(scores, labels, strict=True) if lb == lab])
        yy = np.concatenate([np.zeros(len(normal)), np.ones(len(s))])
        per_label[lab] = binary_metrics(np.concatenate([normal, s]), yy, sc.threshold_)["auroc"]
    return {"model": row.name, "scorer": state["name"], "normal_label": label,
            "n_normal": int((y == 0).sum()), "n_anomalous": int(y.sum()),
            **out, "auroc_per_label": per_label}
