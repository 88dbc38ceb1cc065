"""Index management: build, open and keep in sync the vector index of a model.

Each index belongs to one model (embedding spaces are never mixed); the
catalog records its spec, path, size and generation. The catalog is the
source of truth: `sync_index` adds what the index lacks and drops what the
catalog no longer has, so a killed ingest is repaired by the next one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedder import faults
from embedder.encoder import Encoder
from embedder.errors import StoreError
from index.catalog import IndexRow, ModelRow
from index.home import Home
from index.locks import write_lock
from index.paths import from_catalog, to_catalog
from index.store import FaissStore, VectorStore

BACKEND = "faiss"


def index_path(home: Home, model: ModelRow, backend: str = BACKEND) -> Path:
    return home.indexes_dir / f"{model.name}.{backend}"


def load_encoder(home: Home, model: ModelRow, device: str = "auto") -> Encoder:
    """Load a model's checkpoint, refusing weights whose sha256 differs from the catalog's."""
    path = home.resolve(model.checkpoint_path)
    return Encoder.from_checkpoint(path, device=device, expected_sha256=model.checkpoint_sha256)


@dataclass
class IndexStatus:
    model: str
    backend: str
    spec: str
    path: str
    ntotal: int
    catalog_images: int
    missing: int  # in the catalog, not in the index
    extra: int  # in the index, not in the catalog
    generation: int

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0


class IndexMissingError(StoreError):
    pass


def open_index(home: Home, model: ModelRow) -> tuple[FaissStore, IndexRow]:
    """Load the index of `model`; a clear error naming the fix when there is none."""
    row = home.catalog.index_for(model.id, BACKEND)
    if row is None or not home.resolve(row.path).is_file():
        msg = (
            f"Model {model.name!r} has no index yet. "
            f"Run: latentsight index build --model {model.name}"
        )
        raise IndexMissingError(msg)
    store = FaissStore.load(home.resolve(row.path), spec=row.spec)
    return store, row


def build_index(
    home: Home,
    model: ModelRow,
    *,
    spec: str = "Flat",
    device: str = "auto",
    batch_size: int = 128,
    workers: int | None = None,
    progress: bool = True,
) -> IndexStatus:
    """Embed every catalog image with `model` and write its index atomically.

    Holds the home's write lock; readers keep the previous index until the new
    file is renamed into place.
    """
    with write_lock(home, "index build"):
        return _build_locked(home, model, spec=spec, device=device, batch_size=batch_size,
                             workers=workers, progress=progress)


def _build_locked(
    home: Home, model: ModelRow, *, spec: str, device: str, batch_size: int,
    workers: int | None, progress: bool,
) -> IndexStatus:
    encoder = load_encoder(home, model, device)
    rows = home.catalog.images()
    ids = [r.id for r in rows]
    store = FaissStore(encoder.embed_dim, spec)
    vecs, kept = embed_catalog_images(encoder, ids, [r.path for r in rows], batch_size=batch_size,
                                      workers=workers, progress=progress, home=home)
    if len(kept):
        store.train(vecs)
        store.add(kept, vecs)
    path = index_path(home, model)
    faults.point("build.before_save")
    store.save(path)
    faults.point("build.after_save")
    home.catalog.record_index(model_id=model.id, backend=BACKEND, spec=spec, path=home.rel(path),
                              ntotal=store.ntotal)
    return status(home, model)


def embed_catalog_images(
    encoder: Encoder,
    ids: list[int],
    paths: list[str],
    *,
    batch_size: int = 128,
    workers: int | None = None,
    progress: bool = True,
    home: Home | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed catalog files in batches; skips (and records) files that no longer decode.

    Decoding runs in `workers` spawned processes with the per-file limits of
    `embedder.probe` (size, pixels, time), so a file replaced by a hostile one
    since its ingest cannot hang or kill a build. Returns (vectors (n, d),
    ids (n,)) for the files that decoded.
    """
    from embedder.images import default_workers
    from embedder.probe import ProbePool

    workers = default_workers() if workers is None else workers
    want = (encoder.image_size, encoder.channels)
    out_v, out_i, failed = [], [], []
    bar = tqdm(total=len(ids), desc="embedding", unit="img", file=sys.stderr,
               disable=not progress or None)
    with ProbePool(workers) as pool:
        probes = pool.imap([from_catalog(p) for p in paths], want, window=2 * batch_size)
        for s in range(0, len(ids), batch_size):
            chunk = ids[s : s + batch_size]
            good_ids, arrays = [], []
            for i in chunk:
                pr = next(probes)
                if pr.error is None:
                    good_ids.append(i)
                    arrays.append(pr.pixels)
                else:
                    failed.append((pr.path, pr.error_class or "DecodeError", pr.error))
            if good_ids:
                out_v.append(encoder.embed_uint8(np.stack(arrays)))  # (B, C, S, S) -> (B, D)
                out_i.append(np.asarray(good_ids, dtype=np.int64))
            bar.update(len(chunk))
    bar.close()
    if failed and home is not None:
        home.catalog.record_failures(
            [(to_catalog(p), c, f"cannot re-read for embedding: {m}") for p, c, m in failed]
        )
    if not out_v:
        return np.zeros((0, encoder.embed_dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(out_v), np.concatenate(out_i)


def sync_index(
    home: Home,
    model: ModelRow,
    *,
    encoder: Encoder | None = None,
    store: VectorStore | None = None,
    ready: dict[int, np.ndarray] | None = None,
    progress: bool = True,
    force_save: bool = False,
) -> int:
    """Bring the index of `model` in line with the catalog; returns the number of vectors added.

    `ready` maps catalog ids to already preprocessed uint8 arrays (C, S, S),
    so that ingest does not decode twice. Holds the home's write lock.
    """
    with write_lock(home, "index sync"):
        return _sync_locked(home, model, encoder=encoder, store=store, ready=ready,
                            progress=progress, force_save=force_save)


def _sync_locked(
    home: Home, model: ModelRow, *, encoder: Encoder | None, store: VectorStore | None,
    ready: dict[int, np.ndarray] | None, progress: bool, force_save: bool,
) -> int:
    if store is None:
        store, _row = open_index(home, model)
    encoder = encoder or load_encoder(home, model)
    catalog_ids = np.asarray(home.catalog.image_ids(), dtype=np.int64)
    present = store.ids()
    extra = np.setdiff1d(present, catalog_ids)
    if extra.size:
        store.remove(extra)
    missing = np.setdiff1d(catalog_ids, present)
    added = 0
    if missing.size:
        ready = ready or {}
        in_hand = [i for i in missing.tolist() if i in ready]
        if in_hand:
            import torch

            for s in range(0, len(in_hand), 256):
                chunk = in_hand[s : s + 256]
                x = torch.from_numpy(np.stack([ready[i] for i in chunk])).float().div_(255.0)
                store.add(chunk, encoder.embed_tensor(x))
                added += len(chunk)
        rest = [i for i in missing.tolist() if i not in ready]
        if rest:
            rows = home.catalog.images(ids=rest)
            vecs, kept = embed_catalog_images(encoder, [r.id for r in rows], [r.path for r in rows],
                                              progress=progress, home=home)
            store.add(kept, vecs)
            added += len(kept)
    if missing.size or extra.size or force_save:
        row = home.catalog.index_for(model.id, BACKEND)
        path = home.resolve(row.path) if row else index_path(home, model)
        faults.point("sync.before_save")
        store.save(path)
        faults.point("sync.after_save")
        home.catalog.record_index(model_id=model.id, backend=BACKEND,
                                  spec=getattr(store, "spec", "Flat"), path=home.rel(path),
                                  ntotal=store.ntotal)
    return added


def delete_images(home: Home, ids: list[int] | np.ndarray) -> int:
    """Delete images from the catalog and their vectors from every faiss index; returns the count.

    The catalog goes first (it is the source of truth): a crash in between
    leaves extra vectors that searches skip and the next sync removes.
    """
    ids = [int(i) for i in ids]
    with write_lock(home, "delete"):
        n = home.catalog.delete_images(ids)
        for row in home.catalog.indexes():
            path = home.resolve(row.path)
            if row.backend != BACKEND or not path.is_file():
                continue
            store = FaissStore.load(path, spec=row.spec)
            if store.remove(np.asarray(ids, dtype=np.int64)):
                store.save(path)
                home.catalog.record_index(model_id=row.model_id, backend=row.backend,
                                          spec=row.spec, path=row.path, ntotal=store.ntotal)
    return n


def status(home: Home, model: ModelRow) -> IndexStatus:
    """Compare the catalog with the index of `model` (missing and extra ids)."""
    store, row = open_index(home, model)
    catalog_ids = np.asarray(home.catalog.image_ids(), dtype=np.int64)
    present = store.ids()
    return IndexStatus(
        model=model.name, backend=row.backend, spec=row.spec, path=str(home.resolve(row.path)),
        ntotal=store.ntotal, catalog_images=len(catalog_ids),
        missing=int(np.setdiff1d(catalog_ids, present).size),
        extra=int(np.setdiff1d(present, catalog_ids).size), generation=row.generation,
    )
