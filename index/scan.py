"""Batch anomaly scans: score every image under some folders, record the scan in the catalog.

    summary = scan_paths(home, ["incoming/"], report_dir="report/")
    summary.n_flagged, summary.results[0].score

A model's fitted scorer is stored beside its checkpoint
(`latentsight.embedder.scorer_files`; with the catalog: `index.manager.save_scorer` /
`load_scorer`, re-exported here for old callers). Each scored image is
committed to `scan_results` in small batches, so a killed scan keeps its work
and `resume=True` continues the last unfinished scan over the same paths.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.images import (
    default_workers,
    looks_like_image,
    non_regular_reason,
)
from latentsight.embedder.probe import Limits, Probe, ProbePool
from latentsight.embedder.progress import bar_disabled
from latentsight.embedder.scoring import TileScorer
from latentsight.index.catalog import ModelRow, ScanResultRow, ScanRow, utcnow
from latentsight.index.errors import CatalogError, StoreError
from latentsight.index.home import Home
from latentsight.index.ingest import iter_files
from latentsight.index.manager import load_scorer, open_index, save_scorer
from latentsight.index.paths import to_catalog
from latentsight.index.report import heatmap_name, write_overlay, write_report
from latentsight.index.threads import cores, one_torch_thread
from sqlalchemy import select

log = logging.getLogger(__name__)

SCORER_FILE = "scoring.safetensors"
COMMIT_EVERY = 8  # images per catalog transaction: a kill loses at most this many
# Tiles are scored at native resolution, so time grows with pixels: 36 MP took 546 s. Larger
# images are refused from their header, before any pixel is decoded or tiled.
SCAN_MAX_PIXELS = 4_000_000
SCAN_LIMITS = Limits(max_pixels=SCAN_MAX_PIXELS)


# ---- scans --------------------------------------------------------------------------------


@dataclass
class ScanItem:
    path: str
    sha256: str | None = None
    score: float | None = None
    anomalous: bool | None = None
    error: str | None = None
    nearest_ids: list[int] | None = None

    def as_json(self, threshold: float) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "score": self.score,
                "anomalous": self.anomalous, "threshold": threshold}


@dataclass
class ScanSummary:
    scan_id: int
    model: str
    threshold: float
    results: list[ScanItem] = field(default_factory=list)
    skipped: int = 0  # files that are not images by name or content
    resumed: int = 0  # images already scored by the interrupted run
    report_dir: str | None = None

    @property
    def scored(self) -> list[ScanItem]:
        return [r for r in self.results if r.error is None]

    @property
    def failed(self) -> list[ScanItem]:
        return [r for r in self.results if r.error is not None]

    @property
    def n_flagged(self) -> int:
        return sum(bool(r.anomalous) for r in self.results)


def normalize_paths(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    return sorted(os.path.abspath(os.fspath(p)) for p in paths)


def resolve_threshold(scorer: TileScorer, *, fpr: float | None, threshold: float | None) -> float:
    """Explicit threshold, or the one for `fpr` from the stored calibration, or the model's."""
    if fpr is not None and threshold is not None:
        raise ValueError("Give either --fpr or --threshold, not both.")
    if threshold is not None:
        if not threshold > 0:
            msg = f"The 'threshold' option must be > 0. Got {threshold} instead."
            raise ValueError(msg)
        return float(threshold)
    if fpr is not None:
        return scorer.threshold_for_fpr(fpr)
    return float(scorer.threshold_)


def scan_paths(
    home: Home,
    paths: Sequence[str | os.PathLike[str]],
    *,
    model: str | None = None,
    fpr: float | None = None,
    threshold: float | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    k_neighbors: int = 3,
    include_synthetic: bool = False,
    device: str = "auto",
    progress: bool = True,
    limits: Limits = SCAN_LIMITS,
    workers: int | None = None,
) -> ScanSummary:
    """Score every image under `paths`; record the scan; optionally write a report.

    Files are decoded in `workers` spawned processes (embedder/probe.py, the
    decoding path of ingest) under `limits`: a per-file time and memory limit
    and a pixel limit (SCAN_MAX_PIXELS by default) checked before tiling.
    Bad files become results with an `error` and the scan goes on. Raises
    CatalogError when a path does not exist, ModelError when the model has
    no calibrated scorer.
    """
    for p in paths:
        if not os.path.lexists(p):
            raise CatalogError(f"{p}: no such file or folder")
    workers = max(1, default_workers()) if workers is None else workers
    # the decoding workers start now and come up while the model and its scorer load
    with ProbePool(workers, limits).start() as pool, ThreadPoolExecutor(1) as writer:
        summary, encoder, scorer, neighbors = _scan_with(
            home, paths, pool, writer, model=model, fpr=fpr, threshold=threshold,
            report_dir=report_dir, resume=resume, k_neighbors=k_neighbors,
            include_synthetic=include_synthetic, device=device, progress=progress)
    if report_dir:
        write_report(home, summary, Path(report_dir), encoder=encoder, scorer=scorer,
                     neighbors=neighbors)
    return summary


def _scan_with(
    home: Home, paths: Sequence[str | os.PathLike[str]], pool: ProbePool,
    writer: ThreadPoolExecutor, *, model: str | None, fpr: float | None,
    threshold: float | None, report_dir: str | os.PathLike[str] | None, resume: bool,
    k_neighbors: int, include_synthetic: bool, device: str, progress: bool,
) -> tuple[ScanSummary, Encoder, TileScorer, _Neighbors]:
    """The scan pipeline: the workers decode ahead, this thread scores, a thread writes heatmaps.

    Every COMMIT_EVERY images, their nearest normals are searched in one batch
    and their results committed in one transaction (what a kill can lose).
    """
    from tqdm import tqdm

    row = home.catalog.model(model)
    encoder, scorer = load_scorer(home, row, device)
    norm = normalize_paths(paths)
    scan, done = _open_scan(home, row, [to_catalog(p) for p in norm], resume=resume, fpr=fpr,
                            threshold=resolve_threshold(scorer, fpr=fpr, threshold=threshold))
    thr = float(scan.threshold)
    neighbors = _Neighbors(home, row, encoder, scorer, k=k_neighbors,
                           include_synthetic=include_synthetic)
    heat_dir = Path(report_dir) / "heatmaps" if report_dir else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    summary = ScanSummary(scan_id=scan.id, model=row.name, threshold=thr,
                          report_dir=str(report_dir) if report_dir else None)
    files = [os.path.abspath(f) for f, _root in iter_files(norm)]
    todo = []
    for f in files:
        if to_catalog(f) in done:  # paths are kept in the catalog's text form (index/paths.py)
            summary.results.append(done[to_catalog(f)])
            summary.resumed += 1
        elif looks_like_image(f) or not os.path.exists(f) or non_regular_reason(f):
            todo.append(f)  # a FIFO or a device is reported by the decoder, never opened blocking
        else:
            summary.skipped += 1
    bar = tqdm(total=len(todo), desc=f"scan {row.name}", unit="img", file=sys.stderr,
               disable=bar_disabled(progress))
    group: list[tuple[ScanItem, np.ndarray | None]] = []  # scored, not yet committed
    writes: list[Future] = []  # heatmaps being written
    n_score = score_threads()
    pending: deque[tuple[Probe, Future]] = deque()  # being scored, in file order

    def take(pr: Probe, fut: Future) -> None:
        nonlocal group, writes
        item, amap = fut.result()
        if item.anomalous and heat_dir is not None:
            writes.append(writer.submit(write_overlay, pr.pixels, amap, thr,
                                        heat_dir / heatmap_name(item.path, item.sha256)))
        group.append((item, pr.pixels if item.error is None else None))
        if len(group) >= COMMIT_EVERY:
            _commit_group(home, scan.id, group, neighbors, summary)
            group = []
            writes = _check_writes(writes)
        bar.update(1)
        bar.set_postfix(flagged=summary.n_flagged, failed=len(summary.failed))

    # Each image is scored on one torch thread, `n_score` images at a time: the scorer's
    # tensors are small, and intra-op threads on them cost more than they give (5x slower
    # on the shared 2-core machine, docs/benchmarks.md "Scan pipeline").
    try:
        with one_torch_thread(), ThreadPoolExecutor(n_score) as scorers:
            for f, pr in zip(todo, pool.imap(todo, (0, encoder.channels)), strict=True):
                if pr.skipped:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                pending.append((pr, scorers.submit(_score_image, f, pr, scorer, thr)))
                while len(pending) > 2 * n_score:
                    take(*pending.popleft())
            while pending:
                take(*pending.popleft())
            _commit_group(home, scan.id, group, neighbors, summary)
        for w in writes:
            w.result()  # a heatmap that could not be written fails the scan, as before
    finally:
        bar.close()
    _finish(home, scan.id, summary)
    return summary, encoder, scorer, neighbors


def score_threads() -> int:
    """Images scored at once by a scan: one per core (each on one torch thread), at most 4."""
    return max(1, min(4, cores()))


def _check_writes(writes: list[Future]) -> list[Future]:
    """Raise the error of a finished heatmap write, if any; the writes still running."""
    for w in writes:
        if w.done():
            w.result()
    return [w for w in writes if not w.done()]


def _commit_group(home: Home, scan_id: int, group: list[tuple[ScanItem, np.ndarray | None]],
                  neighbors: _Neighbors, summary: ScanSummary) -> None:
    """The nearest normals of a group of scored images (one batch), then one commit."""
    if not group:
        return
    scored = [(item, px) for item, px in group if px is not None]
    for (item, _px), ids in zip(scored, neighbors.batch([px for _i, px in scored]),
                                strict=True):
        item.nearest_ids = ids
    items = [item for item, _px in group]
    summary.results.extend(items)
    _commit(home, scan_id, items)


class _Neighbors:
    """Nearest normal catalog images of a query (the model's index, normal label only)."""

    def __init__(self, home: Home, model: ModelRow, encoder: Encoder, scorer: TileScorer, *,
                 k: int, include_synthetic: bool) -> None:
        self.encoder, self.k, self.store, self.allowed = encoder, k, None, None
        if k < 1:
            return
        try:
            self.store, _ = open_index(home, model)
        except StoreError:
            return  # no index: no neighbors, the scan still runs
        state = (model.metrics or {}).get("scoring") or {}
        label = state.get("normal_label")
        rows = home.catalog.images(labels=[label] if label else None)
        self.allowed = np.asarray([r.id for r in rows if include_synthetic or not r.synthetic],
                                  dtype=np.int64)

    def __call__(self, pixels: np.ndarray) -> list[int] | None:
        return self.batch([pixels])[0]

    def batch(self, images: list[np.ndarray]) -> list[list[int] | None]:
        """The nearest normals of each image: one embedding batch, one search."""
        if self.store is None or self.allowed is None or not len(self.allowed):
            return [None] * len(images)
        if not images:
            return []
        _, ids = self.store.search(self.encoder.embed_pixels(images), self.k,
                                   allowed_ids=self.allowed)  # (n, k)
        return [[int(i) for i in row if i >= 0] for row in ids]


def _score_image(path: str, pr: Probe, scorer: TileScorer,
                 thr: float) -> tuple[ScanItem, np.ndarray | None]:
    """Score one decoded file (`pr`, from the decoding workers): its item and anomaly map."""
    shown = to_catalog(path)  # valid Unicode for the catalog, reports and JSON
    if pr.error is not None:
        return ScanItem(path=shown, error=pr.error), None
    try:
        score, amap = scorer.score_and_map(pr.pixels)
    except Exception as e:  # noqa: BLE001 - one hostile file must not end the scan
        return ScanItem(path=shown, error=f"{type(e).__name__}: {e}"), None
    return ScanItem(path=shown, sha256=pr.sha256, score=float(score),
                    anomalous=bool(score > thr)), amap


def _score_one(path: str, pr: Probe, scorer: TileScorer, thr: float,
               neighbors: Any, heat_dir: Path | None) -> ScanItem:
    """Score one decoded file, find its nearest normals and write its heatmap (one at a time)."""
    item, amap = _score_image(path, pr, scorer, thr)
    if item.error is not None:
        return item
    item.nearest_ids = neighbors(pr.pixels)
    if item.anomalous and heat_dir is not None:
        write_overlay(pr.pixels, amap, thr, heat_dir / heatmap_name(item.path, item.sha256))
    return item


def _open_scan(home: Home, model: ModelRow, paths: list[str], *, resume: bool,
               fpr: float | None, threshold: float) -> tuple[ScanRow, dict[str, ScanItem]]:
    """The unfinished scan to resume (and its finished items), or a new scan."""
    with home.catalog.session() as s:
        if resume:
            q = (select(ScanRow).where(ScanRow.model_id == model.id, ScanRow.status == "running")
                 .order_by(ScanRow.id.desc()))
            for scan in s.scalars(q):
                if sorted(scan.paths or []) == paths:
                    rows = s.scalars(select(ScanResultRow).where(ScanResultRow.scan_id == scan.id))
                    done = {r.path: ScanItem(path=r.path, sha256=r.sha256, score=r.score,
                                             anomalous=r.anomalous, error=r.error,
                                             nearest_ids=r.nearest_ids) for r in rows}
                    log.info("resuming scan %d: %d image(s) already done", scan.id, len(done))
                    return scan, done
            log.info("no unfinished scan over these paths; starting a new one")
        scan = ScanRow(model_id=model.id, threshold=threshold, fpr=fpr, paths=paths,
                       status="running")
        s.add(scan)
        s.flush()
        return scan, {}


def _commit(home: Home, scan_id: int, items: list[ScanItem]) -> None:
    if not items:
        return
    with home.catalog.session() as s:
        s.add_all(ScanResultRow(scan_id=scan_id, path=i.path, sha256=i.sha256, score=i.score,
                                anomalous=i.anomalous, error=i.error, nearest_ids=i.nearest_ids)
                  for i in items)


def _finish(home: Home, scan_id: int, summary: ScanSummary) -> None:
    with home.catalog.session() as s:
        scan = s.get(ScanRow, scan_id)
        scan.status = "done"
        scan.n_images = len(summary.scored)
        scan.n_flagged = summary.n_flagged
        scan.n_failed = len(summary.failed)
        scan.report_dir = summary.report_dir
        scan.finished_at = utcnow()


def scans(home: Home, limit: int = 50) -> list[dict[str, Any]]:
    """The latest scans, newest first, as dicts."""
    with home.catalog.session() as s:
        rows = s.scalars(select(ScanRow).order_by(ScanRow.id.desc()).limit(limit))
        return [{c: (v.isoformat() if isinstance(v, datetime) else v)
                 for c, v in ((c.name, getattr(r, c.name)) for c in ScanRow.__table__.columns)}
                for r in rows]


__all__ = [
    "ScanItem", "ScanSummary", "heatmap_name", "load_scorer", "save_scorer", "scan_paths", "scans",
]
