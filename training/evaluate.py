"""Retrieval evaluation: leave-one-out precision@k and mAP by label, beside raw pixels.

Every labeled catalog image is a query against all the others; an image of the
same label is a relevant answer. Figures are given micro (mean over queries)
and macro (mean over labels: a rare label counts as much as a common one),
with a per-label table. The raw-pixel baseline (L2 distance between pixel
vectors at the model's input size) and PCA-64 (L2 on 64 principal components
of those pixels) are computed in the same run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from latentsight.embedder.data import FileImages, iter_batches
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.manager import embed_catalog_images, load_encoder
from latentsight.index.paths import from_catalog

log = logging.getLogger(__name__)


@dataclass
class RetrievalScores:
    """Leave-one-out retrieval figures: micro (mean over queries) and macro (mean over labels).

    Micro averages let a large label hide a rare one; macro gives each label
    the same weight, so a label the embedding cannot find pulls it down.
    `per_label[label]` holds that label's precision@k, mAP and query count.
    """

    precision_at_k: float
    map: float
    k: int
    per_label: dict[str, dict[str, float]]
    n: int
    macro_precision_at_k: float = 0.0
    macro_map: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"precision_at_k": self.precision_at_k,
                "macro_precision_at_k": self.macro_precision_at_k,
                "map": self.map, "macro_map": self.macro_map, "k": self.k,
                "per_label": self.per_label, "n": self.n}


def ranked_relevance(
    sim: np.ndarray, query_labels: np.ndarray, labels: np.ndarray, *, exclude: np.ndarray | None
) -> np.ndarray:
    """Relevant flags in rank order (b, n') for a block of similarities (b, n), higher = closer.

    `exclude[i]` is a candidate column left out for query i (itself, in leave-one-out).
    """
    if exclude is not None:
        sim = sim.copy()
        sim[np.arange(len(sim)), exclude] = -np.inf
    width = sim.shape[1] - (1 if exclude is not None else 0)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :width]  # (b, n')
    return labels[order] == query_labels[:, None]  # (b, n')


def precision_and_ap(rel: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query precision@k and average precision from rank-ordered relevant flags (b, n)."""
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    ap = (rel * hits / ranks).sum(1) / np.maximum(rel.sum(1), 1)
    return rel[:, :k].mean(1), ap


def summarize(prec: np.ndarray, aps: np.ndarray, query_labels: np.ndarray, *, k: int,
              n: int) -> RetrievalScores:
    """Micro and macro figures and the per-label table from per-query values."""
    per_label = {}
    for lab in sorted(set(query_labels.tolist())):
        m = query_labels == lab
        per_label[str(lab)] = {"precision_at_k": float(prec[m].mean()),
                               "map": float(aps[m].mean()), "n": int(m.sum())}
    return RetrievalScores(
        precision_at_k=float(prec.mean()), map=float(aps.mean()), k=k, per_label=per_label, n=n,
        macro_precision_at_k=float(np.mean([v["precision_at_k"] for v in per_label.values()])),
        macro_map=float(np.mean([v["map"] for v in per_label.values()])),
    )


def retrieval_scores(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    k: int = 10,
    metric: str = "cosine",
    max_queries: int | None = 5000,
    seed: int = 0,
) -> RetrievalScores:
    """Leave-one-out precision@k and mAP, micro and macro. metric: "cosine" or "l2".

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
        rel = ranked_relevance(sim, y[q], y, exclude=q)  # (b, n-1), the query left out
        prec[s : s + len(q)], aps[s : s + len(q)] = precision_and_ap(rel, k)
    return summarize(prec, aps, y[queries], k=k, n=n)


def query_scores(
    queries: np.ndarray, query_labels: Sequence[str], gallery: np.ndarray,
    gallery_labels: Sequence[str], *, k: int = 10, metric: str = "cosine",
) -> RetrievalScores:
    """Precision@k and mAP of separate queries against a gallery (no item left out)."""
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    yq, yg = np.asarray(query_labels), np.asarray(gallery_labels)
    k = min(k, len(g))
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    gsq = (g * g).sum(1)
    prec, aps = np.zeros(len(q)), np.zeros(len(q))
    for s in range(0, len(q), 512):
        b = q[s : s + 512]
        sim = b @ g.T if metric == "cosine" else -(
            (b * b).sum(1)[:, None] - 2 * b @ g.T + gsq[None, :])  # (b, n)
        rel = ranked_relevance(sim, yq[s : s + 512], yg, exclude=None)
        prec[s : s + len(b)], aps[s : s + len(b)] = precision_and_ap(rel, k)
    return summarize(prec, aps, yq, k=k, n=len(g))


def pca_components(x: np.ndarray, n_components: int = 64, *, seed: int = 0) -> np.ndarray:
    """The first `n_components` principal components of the rows of x (n, d) -> (n, c)."""
    from sklearn.decomposition import PCA

    c = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=c, random_state=seed).fit_transform(x).astype(np.float32)


def raw_pixels(
    paths: Sequence[str], *, image_size: int, channels: int = 1, image_width: int = 0,
    resize: str = "squash",
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel vectors (n, C*H*W) in [0, 1] and the positions that decoded (the model's input
    geometry: image_size x image_width, `resize` as the model fits images)."""
    paths = [from_catalog(p) for p in paths]  # catalog text form -> a path to open
    ds = FileImages(list(range(len(paths))), paths, image_size=image_size, channels=channels,
                    image_width=image_width, resize=resize)
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
    anomaly: str | None = None,
    use_index: bool = True,
) -> dict[str, Any]:
    """Precision@k and mAP (micro and macro) of `model` (default: active) over the labeled
    catalog, with raw-pixel and PCA-64 baselines from the same images when `baseline`.

    `anomaly`: a scanning model's name; the result's "anomaly" entry then holds the same
    figures for the anomaly-weighted vectors under it (what `search --anomaly` compares):
    the ones `index build --anomaly` stored when they fit (and `use_index`), else computed
    here (the scanning model maps every labeled image: slower)."""
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
    out: dict[str, Any] = {"model": row.name, **scores.as_dict(),
                           "input": {"height": encoder.image_height,
                                     "width": encoder.image_width, "resize": encoder.resize},
                           "pixel_pca": int(getattr(encoder.model.config, "pixel_pca", 0))}
    if baseline:
        px, pk = raw_pixels([r.path for r in rows], image_size=encoder.image_size,
                            channels=encoder.channels, image_width=encoder.image_width,
                            resize=encoder.resize)
        base_labels = [rows[int(i)].label for i in pk]
        base = retrieval_scores(px, base_labels, k=k, metric="l2")
        out["baseline_raw_pixels"] = base.as_dict()
        pca = retrieval_scores(pca_components(px), base_labels, k=k, metric="l2")
        out["baseline_pca64"] = pca.as_dict()
    if anomaly is not None:
        out["anomaly"] = _anomaly_retrieval(home, row, encoder, rows, anomaly, k, use_index)
    return out


def _anomaly_retrieval(home: Home, row: Any, encoder: Any, rows: Sequence[Any], scan_model: str,
                       k: int, use_index: bool) -> dict[str, Any]:
    """Leave-one-out figures of the anomaly-weighted vectors of `rows` under `scan_model`:
    read from the model's anomaly-weighted index when it was built under that scanning
    model for this checkpoint, else computed as `index build --anomaly` computes them
    (centred on these images' mean rather than the whole catalog's)."""
    from latentsight.index.local import anomaly_index, has_anomaly, load_anomaly

    index = load_anomaly(home, row) if use_index and has_anomaly(home, row) else None
    source = "index"
    if index is None or not index.fits(row, scan_model):
        log.info("anomaly-weighted vectors under %s: mapping %d images", scan_model, len(rows))
        index, source = anomaly_index(home, row, encoder, scan_model, rows), "computed"
    present = set(index.store.ids().tolist())
    ids = [r.id for r in rows if r.id in present]
    scores = retrieval_scores(index.store.vectors(ids), [r.label for r in rows if r.id in present],
                              k=k, metric="cosine")
    return {"scan_model": scan_model, "vectors": source, **scores.as_dict()}


def perturb(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random nuisance on a uint8 (H, W) image, for invariance protocols: a rotation of
    15-25 degrees, a shift of up to an eighth of the side, a brightness change, or noise."""
    from PIL import Image

    kind = int(rng.integers(4))
    if kind == 0:
        angle = float(rng.uniform(15, 25) * rng.choice([-1, 1]))
        return np.asarray(Image.fromarray(img).rotate(angle, resample=Image.Resampling.BILINEAR))
    if kind == 1:
        m = max(1, img.shape[0] // 8)
        dx, dy = (int(v) for v in rng.integers(-m, m + 1, 2))
        return np.roll(np.roll(img, dy, 0), dx, 1)
    if kind == 2:
        return np.clip(img.astype(np.float64) * 0.7 + 70, 0, 255).astype(np.uint8)
    return np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)


def invariance_scores(
    encoder: Any, gallery: Sequence[np.ndarray], gallery_labels: Sequence[str],
    queries: Sequence[np.ndarray], query_labels: Sequence[str], *, k: int = 10,
) -> dict[str, dict[str, Any]]:
    """Queries (perturbed images) against a gallery: the encoder (cosine) beside raw pixels and
    PCA-64 (L2) on the same images, each as RetrievalScores.as_dict()."""
    from latentsight.embedder.images import prepare
    from sklearn.decomposition import PCA

    s, c = encoder.image_size, encoder.channels
    g_px = np.stack([prepare(p, s, c) for p in gallery]).reshape(len(gallery), -1) / 255.0
    q_px = np.stack([prepare(p, s, c) for p in queries]).reshape(len(queries), -1) / 255.0
    pca = PCA(n_components=min(64, len(gallery) - 1), random_state=0).fit(g_px)
    return {
        "model": query_scores(encoder.embed_pixels(list(queries)), query_labels,
                              encoder.embed_pixels(list(gallery)), gallery_labels,
                              k=k).as_dict(),
        "raw_pixels": query_scores(q_px, query_labels, g_px, gallery_labels, k=k,
                                   metric="l2").as_dict(),
        "pca64": query_scores(pca.transform(q_px), query_labels, pca.transform(g_px),
                              gallery_labels, k=k, metric="l2").as_dict(),
    }
