"""Folder ingest: walk, recognize images by content, dedup by SHA-256, catalog, index.

Each batch of files is probed (read, hashed, fully decoded) in worker
processes and committed to the catalog in one transaction, so a killed
ingest keeps every batch it committed and a re-run adds nothing twice. When
the active model has an index, the new images are embedded from the arrays
already decoded and added to it (no full rebuild).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from embedder.errors import CatalogError, DecodeError
from embedder.images import decode_bytes, default_workers, looks_like_image, prepare, read_bytes

if TYPE_CHECKING:  # heavy modules (torch, faiss) stay out of the decode workers' imports
    from embedder.encoder import Encoder
    from index.catalog import ModelRow
    from index.home import Home


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


@dataclass
class Probe:
    """What a worker learned about one file."""

    path: str
    sha256: str = ""
    byte_size: int = 0
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    pixels: np.ndarray | None = None  # preprocessed (C, S, S) when asked for
    error: str | None = None
    error_class: str | None = None
    skipped: bool = False


def probe_file(path: str, want: tuple[int, int] | None) -> Probe:
    """Read, hash and fully decode one file. Never raises for a bad file."""
    try:
        if not os.path.lexists(path):
            raise DecodeError(path, "file not found (deleted after listing)")
        if not looks_like_image(path) and os.path.exists(path):
            return Probe(path=path, skipped=True)
        data = read_bytes(path)
        mode = "L" if (want is None or want[1] == 1) else "RGB"
        img = decode_bytes(data, path=path, mode=mode)
        pixels = prepare(img.pixels, want[0], want[1]) if want else None
        return Probe(
            path=path, sha256=hashlib.sha256(data).hexdigest(), byte_size=len(data),
            width=img.width, height=img.height, mode=img.source_mode, format=img.format,
            pixels=pixels,
        )
    except DecodeError as e:
        return Probe(path=path, error=e.reason, error_class="DecodeError")
    except Exception as e:  # noqa: BLE001 - a hostile file must not end the batch
        return Probe(path=path, error=f"{type(e).__name__}: {e}", error_class=type(e).__name__)


def _probe_many(args: tuple[list[str], tuple[int, int] | None]) -> list[Probe]:
    paths, want = args
    return [probe_file(p, want) for p in paths]


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
) -> IngestReport:
    """Ingest files and folders into the catalog (and the active model's index, if any).

    Returns an IngestReport; bad files are in `report.failed` with reasons and
    are recorded in the catalog's ingest failures. Raises CatalogError only
    when a path given does not exist at all.
    """
    if label is not None and labels_from_folders:
        raise CatalogError("Give either --label or --labels-from-folders, not both.")
    for p in paths:
        if not os.path.lexists(p):
            raise CatalogError(f"{p}: no such file or folder")
    catalog = home.catalog
    model, encoder, store = _index_target(home) if update_index else (None, None, None)
    want = (encoder.image_size, encoder.channels) if encoder else None
    report = IngestReport()
    files = list(iter_files(paths))
    workers = default_workers() if workers is None else workers
    bar = tqdm(total=len(files), desc="ingest", unit="file", file=sys.stderr,
               disable=not progress or None)
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers else None
    batches = [files[s : s + batch_size] for s in range(0, len(files), batch_size)]
    try:
        # Pipeline: workers decode batch i+1 while this process commits and embeds batch i.
        pending = _submit_probes(pool, batches[0], want, workers) if batches else None
        for b, batch in enumerate(batches):
            probes = _collect_probes(pending, batch, want)
            if b + 1 < len(batches):
                pending = _submit_probes(pool, batches[b + 1], want, workers)
            rows, failures, seen = [], [], set()
            known = catalog.known_sha256(p.sha256 for p in probes if p.sha256)
            for (f, root), pr in zip(batch, probes, strict=True):
                if pr.skipped:
                    report.skipped += 1
                elif pr.error is not None:
                    failures.append(Failure(pr.path, pr.error, pr.error_class or "DecodeError"))
                elif pr.sha256 in known or pr.sha256 in seen:
                    report.duplicates += 1
                else:
                    seen.add(pr.sha256)
                    row_label = _folder_label(f, root) if labels_from_folders else label
                    rows.append((pr, row_label))
            ids = catalog.add_images([
                {"sha256": pr.sha256, "path": _abs(pr.path), "byte_size": pr.byte_size,
                 "width": pr.width, "height": pr.height, "mode": pr.mode, "format": pr.format,
                 "label": lab, "source": source}
                for pr, lab in rows
            ])
            catalog.record_failures([(x.path, x.error_class, x.error) for x in failures])
            report.failed.extend(failures)
            report.added += len(ids)
            report.ids.extend(ids)
            if store is not None and ids:
                x = np.stack([pr.pixels for pr, _lab in rows])  # (B, C, S, S) uint8
                meta = [{"label": lab, "source": source, "synthetic": False} for _pr, lab in rows]
                store.add(ids, encoder.embed_uint8(x), meta)  # metadata: for Milvus filters
                report.indexed += len(ids)
            bar.update(len(batch))
            bar.set_postfix(added=report.added, dup=report.duplicates, failed=len(report.failed))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if model is not None and store is not None:
        from index.manager import sync_index

        # Adds what an earlier, killed run committed to the catalog but not to the index,
        # then saves the index atomically and records its new generation.
        report.indexed += sync_index(home, model, encoder=encoder, store=store,
                                     progress=progress, force_save=report.indexed > 0)
    return report


def _submit_probes(
    pool: ProcessPoolExecutor | None,
    batch: list[tuple[Path, Path]],
    want: tuple[int, int] | None,
    workers: int,
) -> list[Future[list[Probe]]] | None:
    """Start probing a batch in the worker processes (None: probe in this process later)."""
    if pool is None:
        return None
    paths = [_path_str(f) for f, _ in batch]
    n = max(1, min(len(paths), workers * 4))
    return [pool.submit(_probe_many, (paths[i::n], want)) for i in range(n)]


def _collect_probes(
    pending: list[Future[list[Probe]]] | None,
    batch: list[tuple[Path, Path]],
    want: tuple[int, int] | None,
) -> list[Probe]:
    paths = [_path_str(f) for f, _ in batch]
    if pending is None:
        return [probe_file(p, want) for p in paths]
    results: dict[str, Probe] = {}
    for fut in pending:
        for pr in fut.result():
            results[pr.path] = pr
    return [results[p] for p in paths]


def _index_target(home: Home) -> tuple[ModelRow | None, Encoder | None, object | None]:
    """The active model, its encoder and its index, when both exist."""
    from index.manager import IndexMissingError, load_encoder, open_index

    try:
        model = home.catalog.model()
    except CatalogError:
        return None, None, None
    try:
        store, _row = open_index(home, model)
    except IndexMissingError:
        return None, None, None
    return model, load_encoder(home, model), store


def _folder_label(f: Path, root: Path) -> str | None:
    parent = f.parent
    if parent == root and root.name:
        return root.name
    return parent.name or None


def _path_str(p: Path) -> str:
    return os.fspath(p)


def _abs(path: str) -> str:
    return os.path.abspath(path)
