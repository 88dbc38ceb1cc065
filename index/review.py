"""Analyst reviews of scans -> a refitted anomaly threshold.

An analyst marks scan results as *defect* (flagged and right), *false alarm*
(flagged and wrong) or *missed* (not flagged but anomalous); the marks live in
the catalog (`Catalog.set_review`). `refit_threshold` picks the threshold, in
the scorer's own units, that misclassifies the fewest reviewed results
(defect and missed above it, false alarms at or below it), the one nearest to
the current threshold among ties, and stores it with the model's scorer.

    res = refit_threshold(home, normal_label="good")
    res.old_threshold, res.new_threshold

With `refit_normals=True` the normal set changes first: reviewed false alarms join it
(the scorer's reference images, or its calibration images for a scorer without one),
results reviewed as defect or missed leave it (by sha256), and the scorer is fitted
again on the new set with the same encoder and parameters; the reviewed results are
scored again with it and the threshold is refitted on those new scores.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from latentsight.embedder.errors import ModelError
from latentsight.index.catalog import ModelRow
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home

log = logging.getLogger(__name__)

ANOMALOUS_MARKS = ("defect", "missed")  # reviewed as anomalous; "false_alarm" is normal


@dataclass
class Refit:
    model: str
    old_threshold: float
    new_threshold: float
    defects: int
    false_alarms: int
    missed: int
    errors_before: int  # reviewed results the old threshold gets wrong
    errors_after: int
    refit_normals: bool = False  # the normal set was changed and the scorer fitted again
    normals_added: int = 0  # false alarms that joined the normal set
    normals_removed: int = 0  # normal images reviewed as defect / missed, left out
    normal_set: int = 0  # images the refitted scorer learned from (reference + calibration)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def scanning_model(home: Home, normal_label: str | None = None,
                   name: str | None = None) -> ModelRow:
    """The model called `name`, or the newest calibrated model trained on `normal_label`."""
    if name is not None:
        model = home.catalog.model(name)
        if not (model.metrics or {}).get("scoring"):
            raise ModelError(f"Model {name!r} has no anomaly calibration.")
        return model
    found = [m for m in home.catalog.models() if (m.metrics or {}).get("scoring")
             and (normal_label is None
                  or (m.metrics["scoring"].get("normal_label") == normal_label))]
    if not found:
        which = f" on label {normal_label!r}" if normal_label else ""
        msg = (f"No calibrated scanning model{which}. Train one: latentsight train "
               f"--normal-label {normal_label or 'LABEL'}")
        raise ModelError(msg)
    return found[-1]


def best_threshold(scores: np.ndarray, anomalous: np.ndarray, current: float) -> float:
    """The threshold with the fewest errors (anomalous must be > it), nearest `current`."""
    s = np.sort(np.unique(scores))
    cands = np.concatenate([[current, s[0] - 1e-6, s[-1] + 1e-6], (s[:-1] + s[1:]) / 2])
    errors = np.array([_errors(scores, anomalous, t) for t in cands])
    best = cands[errors == errors.min()]
    return float(best[np.argmin(np.abs(best - current))])


def _errors(scores: np.ndarray, anomalous: np.ndarray, t: float) -> int:
    return int(((scores > t) != anomalous).sum())


REFERENCE_MAX = 400  # reference images sampled for a refit (training/anomaly.py's MAX_REFERENCE)


def refit_threshold(home: Home, *, normal_label: str | None = None,
                    model: str | None = None, reviewer_note: str = "",
                    refit_normals: bool = False) -> Refit:
    """Refit the scanning model's threshold from every review of its scans; store it.

    With `refit_normals`, first move reviewed false alarms into the normal set and
    defects out of it, and fit the scorer again (see the module docstring).
    """
    from latentsight.index.scan import load_scorer, save_scorer

    row = scanning_model(home, normal_label, model)
    reviews = home.catalog.reviews(model_id=row.id)
    reviewed = []  # (scan result, mark)
    for rid, rev in reviews.items():
        res = home.catalog.scan_result(rid)
        if res is None or res.score is None:
            continue
        reviewed.append((res, rev.mark))
    if not reviewed:
        msg = (f"No reviewed scan results for model {row.name!r}; mark some on the dashboard's "
               "Anomalies page first.")
        raise CatalogError(msg)
    marks = [m for _res, m in reviewed]
    x = np.asarray([float(res.score) for res, _m in reviewed])
    y = np.asarray([m in ANOMALOUS_MARKS for m in marks])
    encoder, scorer = load_scorer(home, row, "cpu")
    old = float(scorer.threshold_)
    state = dict(row.metrics["scoring"])
    extra = {k: v for k, v in state.items() if k not in scorer.state()}
    errors_before = _errors(x, y, old)
    sets = {}
    if refit_normals:
        scorer, new_x, sets, extra = _refit_normal_set(home, row, encoder, scorer, reviewed,
                                                       extra)
        keep = ~np.isnan(new_x)  # a reviewed file that no longer decodes drops out
        x, y = new_x[keep], y[keep]
    current = float(scorer.threshold_)
    new = best_threshold(x, y, current) if len(x) else current
    result = Refit(model=row.name, old_threshold=old, new_threshold=new,
                   defects=marks.count("defect"), false_alarms=marks.count("false_alarm"),
                   missed=marks.count("missed"), errors_before=errors_before,
                   errors_after=_errors(x, y, new), refit_normals=refit_normals, **sets)
    if new <= 0:
        msg = f"The reviews ask for a threshold of {new:.4g}; a threshold must be > 0."
        raise ModelError(msg)
    scorer.threshold_ = new
    extra["refit_from_reviews"] = {**result.as_dict(), "note": reviewer_note}
    save_scorer(home, row, scorer, extra)
    log.info("threshold of %s refitted from %d reviews: %.5f -> %.5f%s", row.name, len(x), old,
             new, " (normal set refitted)" if refit_normals else "")
    return result


def _decode(path: str, mode: str) -> np.ndarray | None:
    from latentsight.embedder.errors import DecodeError
    from latentsight.embedder.images import decode_file
    from latentsight.index.paths import from_catalog

    try:
        return decode_file(from_catalog(path), mode=mode).pixels
    except (DecodeError, OSError) as e:
        log.warning("refit: skipped %s (%s)", path, e)
        return None


def _refit_normal_set(home: Home, row: ModelRow, encoder, old, reviewed, extra):
    """Fit a new scorer on the normal set changed by the reviews; returns (scorer, the
    reviewed results' new scores (NaN where unreadable), the set sizes, the new extras)."""
    from latentsight.embedder.scoring import make_scorer

    if "calib_ids" not in extra or "train_ids" not in extra:
        msg = (f"Model {row.name!r} does not record its normal images (trained before "
               "--refit-normals existed); retrain it with latentsight train --normal-label L.")
        raise ModelError(msg)
    out_sha = {res.sha256 for res, m in reviewed if m in ANOMALOUS_MARKS and res.sha256}
    train_rows = [r for r in home.catalog.images(ids=extra["train_ids"]) if r.sha256 not in out_sha]
    calib_rows = [r for r in home.catalog.images(ids=extra["calib_ids"]) if r.sha256 not in out_sha]
    known = {r.sha256 for r in train_rows + calib_rows}
    removed = (len(extra["train_ids"]) + len(extra["calib_ids"])
               - len(train_rows) - len(calib_rows))
    added, seen = [], set()
    for res, m in reviewed:
        key = res.sha256 or res.path
        if m == "false_alarm" and key not in known and key not in seen:
            seen.add(key)
            added.append(res.path)
    mode = encoder.mode
    ref_rows = train_rows
    if len(ref_rows) > REFERENCE_MAX:
        pick = np.random.default_rng(0).choice(len(ref_rows), REFERENCE_MAX, replace=False)
        ref_rows = [ref_rows[i] for i in sorted(pick.tolist())]
    added_px = [p for p in (_decode(a, mode) for a in added) if p is not None]
    calib_px = [p for p in (_decode(r.path, mode) for r in calib_rows) if p is not None]
    new = make_scorer(old.name, encoder, **old.params())
    if new.uses_reference:
        ref_px = [p for p in (_decode(r.path, mode) for r in ref_rows) if p is not None]
        new.fit(calib_px, reference=ref_px + added_px)
        n_set = len(ref_px) + len(added_px) + len(calib_px)
    else:
        new.fit(calib_px + added_px)
        n_set = len(calib_px) + len(added_px)
    scores = []
    for res, _m in reviewed:
        px = _decode(res.path, mode)
        scores.append(float("nan") if px is None else float(new.decision_function([px])[0]))
    extra = {**extra, "train_ids": [r.id for r in train_rows],
             "calib_ids": [r.id for r in calib_rows],
             "normal_paths_from_reviews": added}
    sets = {"normals_added": len(added_px), "normals_removed": removed, "normal_set": n_set}
    return new, np.asarray(scores, dtype=np.float64), sets, extra


__all__ = ["Refit", "best_threshold", "refit_threshold", "scanning_model"]
