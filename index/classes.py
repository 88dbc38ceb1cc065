"""Label counts of the catalog, real and synthetic, and which labels are sparse.

One rule, shared by `latentsight classes` and the dashboard's Classes page: a
label is sparse when it has fewer real images than `sparse_frac` x the median
real count of the labels that have real images (or than an explicit
`sparse_below`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Any

from latentsight.index.catalog import Catalog


@dataclass
class ClassTable:
    median_real: float  # median real count over labels with real images (0 when none)
    sparse_below: float  # a label with fewer real images than this is sparse
    rows: list[dict[str, Any]] = field(default_factory=list)  # label, real, synthetic, sparse

    @property
    def sparse(self) -> list[str]:
        return [r["label"] for r in self.rows if r["sparse"]]


def class_table(catalog: Catalog, *, sparse_frac: float = 0.5,
                sparse_below: float | None = None) -> ClassTable:
    """Per label (sorted): real and synthetic counts and whether it is sparse."""
    if not sparse_frac >= 0:
        msg = f"The 'sparse_frac' must be >= 0. Got {sparse_frac} instead."
        raise ValueError(msg)
    real = {k: v for k, v in catalog.label_counts(synthetic=False).items() if k is not None}
    syn = {k: v for k, v in catalog.label_counts(synthetic=True).items() if k is not None}
    med = median(real.values()) if real else 0
    below = sparse_frac * med if sparse_below is None else float(sparse_below)
    rows = [{"label": lab, "real": real.get(lab, 0), "synthetic": syn.get(lab, 0),
             "sparse": real.get(lab, 0) < below}
            for lab in sorted(set(real) | set(syn))]
    return ClassTable(median_real=med, sparse_below=below, rows=rows)
