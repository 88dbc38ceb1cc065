"""Retrieval evaluation: leave-one-out precision@k and mAP by label, beside raw pixels.

Every labeled catalog image is a query against all the others; an image of the
same label is a relevant answer. The raw-pixel baseline (L2 distance between
pixel vectors at the model's input size) is computed in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from latentsight.embedder.data import FileImages, iter_batches
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.manager import embed_catalog_images, load_encoder
from latentsight.index.paths import from_catalog


@dataclass
class RetrievalScores:
    precision_at_k: float
    map: float
    k: int
    per_label: dict[str, float]
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"precision_at_k": self.precision_at_k, "map": self.map, "k": self.k,
                "per_label": self.per_label, "n": self.n}


def retrieval_scores(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    k: int = 10,
    metric: str = "cosine",
    max_queries: int | None = 5000,
    seed: int = 0,
) -> RetrievalScores:
    """Leave-one-out precision@k and mAP. metric: "cosine" (higher = closer) or "l2".

    With more than `max_queries` items, a seeded sample of queries is used
    (every item stays a candidate answer).
    """
    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels)
    n = len(x)
    if n < 2:
        raise CatalogError("Retrieval evaluation needs at least 2 labeled images.")
    k = min(k, n - 1)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    queries = np.arange(n)
    if max_queries is not None and n > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    sq = (x * x).sum(1)
    prec = np.zeros(len(queries))
    aps = np.zeros(len(queries))
    for s in range(0, len(queries), 512):
        q = queries[s : s + 512]
        if metric == "cosine":
            sim = x[q] @ x.T  # (b, n)
        else:
            sim = -(sq[q, None] - 2 * x[q] @ x.T + sq[None, :])  # (b, n) negative squared L2
        sim[np.arange(len(q)), q] = -np.inf  # leave the query out
        order = np.argsort(-sim, axis=1, kind="stable")[:, : n - 1]  # (b, n-1)
        rel = y[order] == y[q][:, None]  # (b, n-1) relevant flags in rank order
        prec[s : s + len(q)] = rel[:, :k].mean(1)
        hits = np.cumsum(rel, axis=1)
        ranks = np.arange(1, n)
        n_rel = rel.sum(1)
        ap = (rel * hits / ranks).sum(1) / np.maximum(n_rel, 1)
        aps[s : s + len(q)] = ap
    per_label = {
        str(lab): float(prec[y[queries] == lab].mean()) for lab in sorted(set(y[queries].tolist()))
    }
    return RetrievalScores(precision_at_k=float(prec.mean()), map=float(aps.mean()), k=k,
                           per_label=per_label, n=n)


def raw_pixels(
    paths: Sequence[str], *, image_size: int, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel vectors (n, C*S*S) in [0, 1] and the positions that decoded."""
    paths = [from_catalog(p) for p in paths]  # catalog text form -> a path to open
    ds = FileImages(list(range(len(paths))), paths, image_size=image_size, channels=channels)
    out, kept = [], []
    for ids, x, _bad in iter_batches(ds, batch_size=256):
        if len(ids):
            out.append(x.flatten(1).float().numpy() / 255.0)
            kept.append(ids)
    return np.concatenate(out), np.concatenate(kept)


def evaluate_retrieval(
    home: Home,
    *,
    model: str | None = None,
    k: int = 10,
    device: str = "auto",
    progress: bool = True,
    baseline: bool = True,
) -> dict[str, Any]:
    """Precision@k and mAP of `model` (default: active) over the labeled catalog, with baseline."""
    row = home.catalog.model(model)
    rows = home.catalog.images(labeled_only=True)
    rows = [r for r in rows if r.source != "synthetic"]
    if len({r.label for r in rows}) < 2:
        raise CatalogError(
            "Retrieval evaluation needs labeled images of at least 2 labels. "
            "Ingest with --labels-from-folders or --label."
        )
    encoder = load_encoder(home, row, device)
    vecs, kept = embed_catalog_images(encoder, [r.id for r in rows], [r.path for r in rows],
                                      progress=progress)
    label_of = {r.id: r.label for r in rows}
    scores = retrieval_scores(vecs, [label_of[int(i)] for i in kept], k=k)
    out: dict[str, Any] = {"model": row.name, **scores.as_dict()}
    if baseline:
        px, pk = raw_pixels([r.path for r in rows], image_size=encoder.image_size,
                            channels=encoder.channels)
        base = retrieval_scores(px, [rows[int(i)].label for i in pk], k=k, metric="l2")
        out["baseline_raw_pixels"] = base.as_dict()
    return out
