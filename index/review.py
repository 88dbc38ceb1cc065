"""Analyst reviews of scans -> a refitted anomaly threshold.

An analyst marks scan results as *defect* (flagged and right), *false alarm*
(flagged and wrong) or *missed* (not flagged but anomalous); the marks live in
the catalog (`Catalog.set_review`). `refit_threshold` picks the threshold, in
the scorer's own units, that misclassifies the fewest reviewed results
(defect and missed above it, false alarms at or below it), the one nearest to
the current threshold among ties, and stores it with the model's scorer.

    res = refit_threshold(home, normal_label="good")
    res.old_threshold, res.new_threshold
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


def refit_threshold(home: Home, *, normal_label: str | None = None,
                    model: str | None = None, reviewer_note: str = "") -> Refit:
    """Refit the scanning model's threshold from every review of its scans; store it."""
    from latentsight.index.scan import load_scorer, save_scorer

    row = scanning_model(home, normal_label, model)
    reviews = home.catalog.reviews(model_id=row.id)
    scores, anomalous, marks = [], [], []
    for rid, rev in reviews.items():
        res = home.catalog.scan_result(rid)
        if res is None or res.score is None:
            continue
        scores.append(float(res.score))
        anomalous.append(rev.mark in ANOMALOUS_MARKS)
        marks.append(rev.mark)
    if not scores:
        msg = (f"No reviewed scan results for model {row.name!r}; mark some on the dashboard's "
               "Anomalies page first.")
        raise CatalogError(msg)
    x, y = np.asarray(scores), np.asarray(anomalous)
    _encoder, scorer = load_scorer(home, row, "cpu")
    old = float(scorer.threshold_)
    new = best_threshold(x, y, old)
    result = Refit(model=row.name, old_threshold=old, new_threshold=new,
                   defects=marks.count("defect"), false_alarms=marks.count("false_alarm"),
                   missed=marks.count("missed"), errors_before=_errors(x, y, old),
                   errors_after=_errors(x, y, new))
    if new <= 0:
        msg = f"The reviews ask for a threshold of {new:.4g}; a threshold must be > 0."
        raise ModelError(msg)
    state = dict(row.metrics["scoring"])
    scorer.threshold_ = new
    extra = {k: v for k, v in state.items() if k not in scorer.state()}
    extra["refit_from_reviews"] = {**result.as_dict(), "note": reviewer_note}
    save_scorer(home, row, scorer, extra)
    log.info("threshold of %s refitted from %d reviews: %.5f -> %.5f", row.name, len(x), old, new)
    return result


__all__ = ["Refit", "best_threshold", "refit_threshold", "scanning_model"]
