"""Folder ingest: walk, recognize images by content, dedup by SHA-256, catalog, index.

Each batch of files is probed (read, hashed, fully decoded) in worker
processes and committed to the catalog in one transaction, so a killed
ingest keeps every batch it committed and a re-run adds nothing twice. When
the active model has an index, the new images are embedded from the arrays
already decoded and added to it (no full rebuild).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from latentsight.embedder import faults
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.images import default_workers
from latentsight.embedder.probe import Limits, Probe, ProbePool, probe_file
from latentsight.embedder.progress import bar_disabled
from latentsight.index.catalog import MAX_TEXT_CHARS, ModelRow, check_text
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.locks import write_lock
from latentsight.index.manager import IndexMissingError, load_encoder, open_index, sync_index
from latentsight.index.paths import to_catalog
from tqdm import tqdm

logger = logging.getLogger(__name__)  # `log` is the --log-commits flag below

# Files sorted and embedded at a time within a catalog batch. On the 2-core dev machine
# the default AE's CPU forward runs about 1.6x faster per image at 64 than at 256 (cache).
EMBED_CHUNK = 64


@dataclass
class Failure:
    path: str
    error: str
    error_class: str = "DecodeError"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}


@dataclass
class IngestReport:
    added: int = 0
    duplicates: int = 0
    skipped: int = 0  # files that are not images by name or content
    indexed: int = 0  # vectors added to the active model's index
    failed: list[Failure] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "duplicates": self.duplicates, "skipped": self.skipped,
            "indexed": self.indexed, "failed": [f.as_dict() for f in self.failed],
        }


def iter_files(paths: Iterable[str | Path]) -> Iterator[tuple[Path, Path]]:
    """Yield (file, root it was found under) recursively, in sorted order.

    Follows symlinked folders but visits each real folder once, so symlink
    loops end. Broken links are yielded (the probe reports them).
    """
    seen_dirs: set[tuple[int, int]] = set()
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            yield root, root.parent
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            try:
                st = os.stat(dirpath)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(key)
            dirnames.sort()
            for name in sorted(filenames):
                yield Path(dirpath) / name, root


def ingest_paths(
    home: Home,
    paths: Sequence[str | Path],
    *,
    label: str | None = None,
    labels_from_folders: bool = False,
    source: str = "ingest",
    batch_size: int = 256,
    workers: int | None = None,
    update_index: bool = True,
    progress: bool = True,
    limits: Limits = Limits(),
    log: bool = False,
) -> IngestReport:
    """Ingest files and folders into the catalog (and the active model's index, if any).

    Returns an IngestReport; bad files are in `report.failed` with reasons and
    are recorded in the catalog's ingest failures. Files are decoded in
    `workers` spawned processes (at least one unless `workers=0`) with the
    per-file `limits`. Each batch is one catalog transaction; with `log`, a
    line per committed batch goes to stderr (what a killed run had
    acknowledged). Holds the home's write lock throughout.

    Raises:
        CatalogError: a path given does not exist at all.
        WriteLockedError: another process is writing to this home.
    """
    if label is not None and labels_from_folders:
        raise CatalogError("Give either --label or --labels-from-folders, not both.")
    check_text(label, "label")
    check_text(source, "source")
    for p in paths:
        if not os.path.lexists(p):
            raise CatalogError(f"{to_catalog(p)}: no such file or folder")
    with write_lock(home, "ingest"):
        return _ingest_locked(home, paths, label=label, labels_from_folders=labels_from_folders,
                              source=source, batch_size=batch_size, workers=workers,
                              update_index=update_index, progress=progress, limits=limits,
                              log=log)


def _ingest_locked(
    home: Home, paths: Sequence[str | Path], *, label: str | None, labels_from_folders: bool,
    source: str, batch_size: int, workers: int | None, update_index: bool, progress: bool,
    limits: Limits, log: bool,
) -> IngestReport:
    workers = max(1, default_workers()) if workers is None else workers
    # the decoding workers start now and come up while the model and the index load
    with _old_objects_frozen(), _forward_threads(workers), \
            ProbePool(workers, limits).start() as pool, ThreadPoolExecutor(1) as embedding:
        return _ingest_with(home, paths, pool, embedding, label=label,
                            labels_from_folders=labels_from_folders, source=source,
                            batch_size=batch_size, update_index=update_index,
                            progress=progress, log=log)


def _ingest_with(
    home: Home, paths: Sequence[str | Path], pool: ProbePool, embedding: ThreadPoolExecutor, *,
    label: str | None, labels_from_folders: bool, source: str, batch_size: int,
    update_index: bool, progress: bool, log: bool,
) -> IngestReport:
    """The ingest pipeline: the workers decode ahead, a thread embeds, this thread commits.

    Batch i is embedded (torch, outside the GIL) while this thread writes it to
    the catalog; its vectors go into the index while batch i+1 is committed.
    The order that makes a kill safe is kept: a batch's catalog transaction
    commits before its vectors reach the index, and the index file is saved
    (atomically) only at the end, after `sync_index` has added whatever an
    earlier, killed run committed but did not index.
    """
    catalog = home.catalog
    model, encoder, store = _index_target(home) if update_index else (None, None, None)
    want = encoder.probe_want if encoder else None
    report = IngestReport()
    files = list(iter_files(paths))
    faults.on_listed([os.fspath(f) for f, _ in files])
    bar = tqdm(total=len(files), desc="ingest", unit="file", file=sys.stderr,
               disable=bar_disabled(progress))
    batches = [files[s : s + batch_size] for s in range(0, len(files), batch_size)]
    probes_iter = pool.imap([os.fspath(f) for f, _ in files], want, window=2 * batch_size)
    to_index: tuple[list[Future], list[int], list[dict]] | None = None  # the previous batch's
    for batch in batches:
        rows, failures, seen = [], [], set()
        vectors: list[Future] = []
        # Sorted and embedded EMBED_CHUNK files at a time as the workers deliver them: the
        # forward starts on a batch's first files while its last ones still decode, and runs
        # at the batch size it is fastest at; the batch is still one catalog transaction.
        for s in range(0, len(batch), EMBED_CHUNK):
            part = batch[s : s + EMBED_CHUNK]
            probes = [next(probes_iter) for _ in part]
            new, bad = _sort_batch(part, probes, catalog, report, label=label,
                                   labels_from_folders=labels_from_folders, seen=seen)
            rows += new
            failures += bad
            if store is not None and new:  # (b, D), while the rest decodes and we commit
                vectors.append(embedding.submit(encoder.embed_probed,
                                                [pr.pixels for pr, _lab in new]))
        faults.point("ingest.before_commit")
        ids = catalog.add_images([
            {"sha256": pr.sha256, "path": to_catalog(_abs(pr.path)),
             "byte_size": pr.byte_size, "width": pr.width, "height": pr.height,
             "mode": pr.mode, "format": pr.format, "label": lab, "source": source}
            for pr, lab in rows
        ])
        if log and ids:
            logger.info("committed: ids %s", " ".join(map(str, ids)))
        faults.point("ingest.after_commit")
        catalog.record_failures([(x.path, x.error_class, x.error) for x in failures])
        report.failed.extend(failures)
        report.added += len(ids)
        report.ids.extend(ids)
        if to_index is not None:
            report.indexed += _add_vectors(store, *to_index)
        to_index = None
        if vectors:
            meta = [{"label": lab, "source": source, "synthetic": False} for _pr, lab in rows]
            to_index = (vectors, ids, meta)  # metadata: for Milvus filters
        bar.update(len(batch))
        bar.set_postfix(added=report.added, dup=report.duplicates, failed=len(report.failed))
    if to_index is not None:
        report.indexed += _add_vectors(store, *to_index)
    bar.close()
    faults.point("ingest.before_index")
    if model is not None and store is not None:
        # Adds what an earlier, killed run committed to the catalog but not to the index,
        # then saves the index atomically and records its new generation.
        report.indexed += sync_index(home, model, encoder=encoder, store=store,
                                     progress=progress, force_save=report.indexed > 0)
    return report


@contextmanager
def _forward_threads(workers: int) -> Iterator[None]:
    """Leave the decoding workers their cores: torch uses the others (at least one).

    On 2 cores, a 2-thread forward beside a busy decoding worker loses more to its
    threads waiting for each other than it gains; one thread at EMBED_CHUNK keeps up
    with one worker's decoding. The previous thread count is restored afterwards.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    before = torch.get_num_threads()
    want = max(1, min(before, (cores or 1) - workers))
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that existed before the ingest.

    A full collection walks every object of the process (torch, SQLAlchemy, ...): about
    0.13 s on the dev machine, holding the GIL, so the forward and the commits stall
    together. Frozen (`gc.freeze`), the old objects are skipped; new garbage is still
    collected. They are handed back to the collector afterwards (`gc.unfreeze`).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _sort_batch(
    batch: list[tuple[Path, Path]], probes: list[Probe], catalog: Any, report: IngestReport, *,
    label: str | None, labels_from_folders: bool, seen: set[str],
) -> tuple[list[tuple[Probe, str | None]], list[Failure]]:
    """New images (with their labels) and failures of part of a batch; counts skips and
    duplicates (`seen`: the SHA-256s already taken in this batch, updated)."""
    rows, failures = [], []
    known = catalog.known_sha256(p.sha256 for p in probes if p.sha256)
    for (f, root), pr in zip(batch, probes, strict=True):
        if pr.skipped:
            report.skipped += 1
        elif pr.error is not None:
            failures.append(Failure(to_catalog(_abs(pr.path)), pr.error,
                                    pr.error_class or "DecodeError"))
        elif pr.sha256 in known or pr.sha256 in seen:
            report.duplicates += 1
        else:
            row_label = _folder_label(f, root) if labels_from_folders else label
            if row_label is not None and len(row_label) > MAX_TEXT_CHARS:
                failures.append(Failure(to_catalog(_abs(pr.path)), (
                    f"the folder name gives a {len(row_label)}-character label, over "
                    f"the {MAX_TEXT_CHARS}-character limit"), "LabelError"))
                continue
            seen.add(pr.sha256)
            rows.append((pr, row_label))
    return rows, failures


def _add_vectors(store: Any, vectors: list[Future], ids: list[int], meta: list[dict]) -> int:
    """Add one committed batch's vectors (embedded in the background, in parts) to the index."""
    parts = [v.result() for v in vectors]
    store.add(ids, parts[0] if len(parts) == 1 else np.concatenate(parts), meta)
    return len(ids)


def _index_target(home: Home) -> tuple[ModelRow | None, Encoder | None, object | None]:
    """The active model, its encoder and its index, when both exist."""
    try:
        model = home.catalog.model()
    except CatalogError:
        return None, None, None
    try:
        # a writer (holds the write lock); adds go to the delta file
        store, _row = open_index(home, model, repair=True, lazy=True)
    except IndexMissingError:
        return None, None, None
    return model, load_encoder(home, model), store


def _folder_label(f: Path, root: Path) -> str | None:
    parent = f.parent
    name = root.name if parent == root and root.name else parent.name
    # a folder name that is not valid UTF-8 becomes printable text (\xNN escapes)
    return os.fsencode(name).decode("utf-8", "backslashreplace") or None


def _abs(path: str) -> str:
    return os.path.abspath(path)


__all__ = ["Failure", "IngestReport", "Probe", "ingest_paths", "iter_files", "probe_file"]
