"""Index management: build, open and keep in sync the vector index of a model.

Each index belongs to one model (embedding spaces are never mixed); the
catalog records its spec, path, size and generation. The catalog is the
source of truth: `sync_index` adds what the index lacks and drops what the
catalog no longer has, so a killed ingest is repaired by the next one; an
index that fails to load is moved aside and rebuilt from the catalog by the
writers (ingest, sync, delete), never replaced by an empty one. Readers
(search, verify, scans, the dashboard) never write: they get an
`IndexDamagedError` that names `latentsight index rebuild`.
`delete_images` removes images from the catalog and their vectors from every
index.

Backends: "faiss" (a file per model, HOME/indexes/NAME.faiss) and "milvus"
(a collection per model at a URI: a Milvus Lite file by default,
HOME/indexes/NAME.milvus.db, or a server). The index row's `backend`
column says which one a model's index lives in, `metric` how it compares
vectors and, for Milvus, `collection` which collection holds them: a
rebuild fills a new collection, switches the row to it, and only then
drops the old one, so a rebuild killed half-way leaves the old one served.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from latentsight.embedder import faults
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.errors import ModelError
from latentsight.embedder.progress import bar_disabled
from latentsight.embedder.scorer_files import load_scorer_files, save_scorer_files
from latentsight.embedder.scoring import TileScorer
from latentsight.index.backends import BACKENDS, DEFAULT_BACKEND, check_backend
from latentsight.index.catalog import Catalog, IndexRow, ModelRow
from latentsight.index.errors import StoreError
from latentsight.index.home import Home
from latentsight.index.local import build_local, has_local, local_status, remove_local, sync_local
from latentsight.index.locks import write_lock
from latentsight.index.paths import from_catalog, to_catalog
from latentsight.index.store import FaissStore, Filter, VectorStore, check_metric, choose_spec
from tqdm import tqdm

log = logging.getLogger(__name__)

BACKEND = DEFAULT_BACKEND


def index_path(home: Home, model: ModelRow, backend: str = BACKEND) -> Path:
    if backend == "milvus":
        return home.indexes_dir / f"{model.name}.milvus.db"
    return home.indexes_dir / f"{model.name}.{backend}"


def catalog_resolver(catalog: Catalog):
    """A Filter -> allowed catalog ids function, for stores that keep no metadata (FAISS)."""

    def resolve(f: Filter) -> np.ndarray:
        ids = catalog.image_ids(labels=f.labels, sources=f.sources, synthetic=f.synthetic,
                                match_empty=True)
        return np.asarray(ids, dtype=np.int64)

    return resolve


def catalog_metadata(home: Home, ids: Sequence[int]) -> list[dict[str, object]]:
    """label, source and synthetic of catalog images, in the order of `ids`."""
    rows = {r.id: r for r in home.catalog.images(ids=[int(i) for i in ids])}
    return [
        {"label": rows[int(i)].label, "source": rows[int(i)].source,
         "synthetic": bool(rows[int(i)].synthetic)} if int(i) in rows else {}
        for i in ids
    ]


def load_encoder(home: Home, model: ModelRow, device: str = "auto") -> Encoder:
    """Load a model's checkpoint, refusing weights whose sha256 differs from the catalog's."""
    path = home.resolve(model.checkpoint_path)
    return Encoder.from_checkpoint(path, device=device, expected_sha256=model.checkpoint_sha256)


def save_scorer(home: Home, model: ModelRow, scorer: TileScorer,
                extra: dict[str, Any]) -> dict[str, Any]:
    """Store a fitted scorer with `model` (checkpoint folder + catalog); returns its state."""
    state = save_scorer_files(home.resolve(model.checkpoint_path), scorer, extra)
    home.catalog.update_model_metrics(model.id, {"scoring": state})
    return state


def load_scorer(home: Home, model: ModelRow, device: str = "auto") -> tuple[Encoder, TileScorer]:
    """The model's encoder and its fitted scorer; a clear error when it was never calibrated."""
    state = (model.metrics or {}).get("scoring")
    if not state:
        msg = (f"Model {model.name!r} has no anomaly calibration. Train one on normal images: "
               "latentsight train --normal-label LABEL")
        raise ModelError(msg)
    encoder = load_encoder(home, model, device)
    directory = home.resolve(model.checkpoint_path)
    return encoder, load_scorer_files(directory, encoder, state, name=model.name)


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
    stale_model: str | None = None  # why the vectors do not come from the model's checkpoint
    metric: str = "cosine"
    delta: int = 0  # faiss: vectors in the delta file, not yet merged (`index compact`)
    local: bool = False  # has local (tile) vectors for search by region (index/local.py)
    local_ntotal: int = 0
    local_missing: int = 0  # catalog images without local vectors
    local_extra: int = 0  # local vectors of images the catalog no longer has
    local_stale_model: bool = False

    @property
    def ok(self) -> bool:
        local_ok = self.local_missing == 0 and self.local_extra == 0 and not self.local_stale_model
        return self.missing == 0 and self.extra == 0 and self.stale_model is None and local_ok


class IndexMissingError(StoreError):
    pass


class IndexDamagedError(StoreError):
    """The catalog records an index that cannot be loaded; a reader reports it, never repairs."""

    def __init__(self, model: str, reason: str) -> None:
        self.model, self.reason = model, reason.rstrip(". ")
        super().__init__(f"The index of model {model!r} cannot be loaded: {self.reason}. If it is "
                         f"damaged, run: latentsight index rebuild --model {model}")


def open_index(
    home: Home,
    model: ModelRow,
    backend: str | None = None,
    *,
    device: str = "cpu",
    repair: bool = False,
    lazy: bool = False,
) -> tuple[VectorStore, IndexRow]:
    """Load the index of `model` (its latest, or the one of `backend`).

    A clear error naming the fix when there is none. An index the catalog
    knows but that fails to load (a damaged or deleted file, a dropped
    collection, a Milvus Lite file another process holds) raises
    IndexDamagedError; only a writer holding the write lock passes `repair`,
    which moves it aside and rebuilds it from the catalog. `lazy` (writers
    under the write lock): a faiss main file is read only when a search or
    removal needs it; adds go to its delta file.
    """
    row = home.catalog.index_for(model.id, backend)
    if row is None:
        msg = (
            f"Model {model.name!r} has no {backend + ' ' if backend else ''}index yet. "
            f"Run: latentsight index build --model {model.name}"
        )
        raise IndexMissingError(msg)
    try:
        return _load_store(home, model, row, device, lazy=lazy), row
    except StoreError as e:
        if not repair:
            raise IndexDamagedError(model.name, str(e)) from e
        log.warning("%s", e)
        aside = _move_aside(home, row)
        log.warning("the index of %r could not be loaded%s; rebuilding it from the catalog "
                    "(the source of truth)", model.name, aside)
        rebuild_index(home, model, row, device=device, progress=False)
        row = home.catalog.index_for(model.id, row.backend)
        return _load_store(home, model, row, device), row


def rebuild_index(
    home: Home,
    model: ModelRow,
    row: IndexRow | None,
    *,
    backend: str | None = None,
    spec: str | None = None,
    metric: str | None = None,
    uri: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: bool = True,
) -> IndexStatus:
    """Rebuild `model`'s index from the catalog, keeping what its index `row` says.

    The one rule for "rebuild from the index row" (repair, delete, `index
    rebuild`): the backend, spec, metric and (Milvus) URI of `row` are kept
    unless given; a backend other than the row's starts from Flat / cosine.
    """
    be = backend or (row.backend if row is not None else BACKEND)
    same = row is not None and row.backend == be
    if be == "milvus" and uri is None and same:
        uri = location(home, row)
    return build_index(home, model, backend=be, spec=spec or (row.spec if same else "Flat"),
                       metric=metric or ((row.metric if same else None) or "cosine"), uri=uri,
                       device=device, workers=workers, progress=progress)


def location(home: Home, row: IndexRow) -> str:
    """Where an index lives: a file path resolved in the home, or a Milvus server URI."""
    if "://" in row.path:
        return row.path
    return str(home.resolve(row.path))


def _stored(home: Home, where: str | Path) -> str:
    """The form the catalog stores: home-relative for files, the URI for servers."""
    return str(where) if "://" in str(where) else home.rel(where)


def _load_store(
    home: Home, model: ModelRow, row: IndexRow, device: str, *, lazy: bool = False
) -> VectorStore:
    where = location(home, row)
    if row.backend == "milvus":
        from latentsight.index.milvus_store import MilvusStore, collection_name

        return MilvusStore.open(where, row.collection or collection_name(model.name))
    if row.backend != "faiss":
        msg = f"Index row {row.id} has backend {row.backend!r}; known: {', '.join(BACKENDS)}."
        raise StoreError(msg)
    if not Path(where).is_file():
        raise StoreError(f"{where}: the index file of model {model.name!r} is missing")
    return FaissStore.load(where, spec=row.spec, metric=row.metric or "cosine", device=device,
                           resolver=catalog_resolver(home.catalog), lazy=lazy)


def _move_aside(home: Home, row: IndexRow) -> str:
    """Rename a damaged index file out of the way (kept for inspection); returns a note."""
    path = Path(location(home, row))
    if row.backend != "faiss" or not path.exists():
        return ""
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
    path.rename(aside)
    return f" (moved aside to {aside})"


def build_index(
    home: Home,
    model: ModelRow,
    *,
    spec: str = "Flat",
    backend: str = BACKEND,
    uri: str | None = None,
    params: str | None = None,
    metric: str = "cosine",
    device: str = "auto",
    batch_size: int = 128,
    workers: int | None = None,
    progress: bool = True,
    embed=None,
    local: bool | None = None,
) -> IndexStatus:
    """Embed every catalog image with `model` and write its index.

    faiss: `spec` is an index_factory string or "auto" (chosen by collection
    size, said on stderr); the file is written atomically. milvus: `spec` is a
    Milvus index type ("FLAT", "HNSW:M=16,ef=64", ...; "auto" = FLAT below 50k
    vectors, HNSW above); a new collection at `uri` (default: a Milvus Lite file
    in the home) is filled and flushed, recorded, and then the previous one is
    dropped. `metric`: cosine (default), ip or l2. Holds the home's write lock;
    readers keep the previous index until the new one is in place. `embed`: what
    embeds the images (default `embed_catalog_images`; `ray_engine.ray_embedder` on Ray).

    `local`: also build the local (tile) vectors for search by region
    (index/local.py); None rebuilds them when the model has them already.
    """
    check_backend(backend)
    check_metric(metric)
    with write_lock(home, "index build"):
        return _build_locked(home, model, spec=spec, backend=backend, uri=uri, params=params,
                             metric=metric, device=device, batch_size=batch_size,
                             workers=workers, progress=progress, embed=embed, local=local)


def _build_locked(
    home: Home, model: ModelRow, *, spec: str, backend: str, uri: str | None,
    params: str | None, metric: str, device: str, batch_size: int, workers: int | None,
    progress: bool, embed=None, local: bool | None = None,
) -> IndexStatus:
    encoder = load_encoder(home, model, device)
    rows = home.catalog.images()
    ids = [r.id for r in rows]
    embed = embed or embed_catalog_images
    vecs, kept = embed(encoder, ids, [r.path for r in rows], batch_size=batch_size,
                       workers=workers, progress=progress, home=home)
    previous = home.catalog.index_for(model.id, backend)
    if backend == "milvus":
        generation = (previous.generation if previous else 0) + 1
        store, path = _build_milvus(home, model, encoder.embed_dim, vecs, kept, spec, uri,
                                    metric, generation)
        spec = store.spec
    else:
        if spec == "auto":
            choice = choose_spec(len(kept), encoder.embed_dim)
            log.info("spec auto: %s%s (%s)", choice.spec,
                     " " + choice.params if choice.params else "", choice.reason)
            spec, params = choice.spec, params or choice.params
        store = FaissStore(encoder.embed_dim, spec, params=params, metric=metric, device=device)
        if len(kept):
            store.train(vecs)
            store.add(kept, vecs)
        path = index_path(home, model)
        faults.point("build.before_save")
        store.save(path)
        faults.point("build.after_save")
    home.catalog.record_index(model_id=model.id, backend=backend, spec=spec,
                              path=_stored(home, path), ntotal=store.ntotal,
                              model_sha256=model.checkpoint_sha256, metric=metric,
                              collection=getattr(store, "collection", None))
    if backend == "milvus":
        faults.point("milvus.after_switch")
        _drop_replaced(home, model, previous, store)
    store.close()
    if local or (local is None and has_local(home, model)):
        build_local(home, model, encoder, progress=progress)
    return status(home, model, backend)


def _build_milvus(
    home: Home, model: ModelRow, dim: int, vecs: np.ndarray, kept: np.ndarray, spec: str,
    uri: str | None, metric: str, generation: int,
) -> tuple[VectorStore, str]:
    """Fill a new collection (one per model and generation) and flush it; nothing is switched."""
    from latentsight.index.milvus_store import MilvusStore, collection_name
    from latentsight.index.milvus_store import _connect as _milvus_connect

    uri = uri or str(index_path(home, model, "milvus"))
    if spec == "auto" or spec == "Flat":
        spec = "FLAT" if len(kept) < 50_000 else "HNSW:M=32,efConstruction=200,ef=64"
        log.info("spec auto (milvus): %s for %d vectors", spec, len(kept))
    name = collection_name(model.name, model.id, generation)
    client = _milvus_connect(uri, None)
    if client.has_collection(name):  # left by a rebuild killed before its switch: never served
        client.drop_collection(name)
    store = MilvusStore(dim, uri=uri, collection=name, spec=spec, metric=metric, client=client)
    meta = catalog_metadata(home, kept)
    for s in range(0, len(kept), 5000):
        store.add(kept[s : s + 5000], vecs[s : s + 5000], meta[s : s + 5000])
        faults.point("milvus.after_batch")
    store.flush()  # sealed before the catalog records the index as built
    faults.point("milvus.before_switch")
    return store, uri


def _drop_replaced(home: Home, model: ModelRow, previous: IndexRow | None, store) -> None:
    """Drop the collections a rebuild replaced, once the catalog points at the new one.

    That is the previous build's collection, and any older generation of this
    model's collections left by a rebuild killed between its switch and its drop.
    """
    from latentsight.index.milvus_store import collection_name

    if previous is None:
        return
    if not _same_place(location(home, previous), store.uri):
        old = previous.collection or collection_name(model.name)
        log.warning("the previous collection %r at %s is left in place (the new index lives "
                    "at another URI)", old, location(home, previous))
        return
    stem = collection_name(model.name, model.id, 0)[:-1]  # ..._m{id}_g
    try:
        names = set(store.client.list_collections())
        old = {previous.collection or collection_name(model.name)}
        old |= {c for c in names if c.startswith(stem) and c[len(stem):].isdigit()}
        for name in sorted(old & names - {store.collection}):
            store.client.drop_collection(name)
    except Exception as e:  # noqa: BLE001 - the switch is done; a leftover only costs space
        log.warning("could not drop a replaced collection: %s", e)


def _same_place(a: str, b: str) -> bool:
    """Whether two Milvus URIs name the same deployment (files compared once resolved)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


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
    from latentsight.embedder.images import default_workers
    from latentsight.embedder.probe import ProbePool

    workers = default_workers() if workers is None else workers
    want = encoder.probe_want  # native pixels for a model that fits them itself
    out_v, out_i, failed = [], [], []
    bar = tqdm(total=len(ids), desc="embedding", unit="img", file=sys.stderr,
               disable=bar_disabled(progress))
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
                out_v.append(encoder.embed_probed(arrays))  # -> (B, D)
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
        store, _row = open_index(home, model, repair=True, lazy=True)
    encoder = encoder or load_encoder(home, model)
    keeps_meta = store.backend != "faiss"  # FAISS resolves filters through the catalog
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
            for s in range(0, len(in_hand), 256):
                chunk = in_hand[s : s + 256]
                meta = catalog_metadata(home, chunk) if keeps_meta else None
                store.add(chunk, encoder.embed_probed([ready[i] for i in chunk]), meta)
                added += len(chunk)
        rest = [i for i in missing.tolist() if i not in ready]
        if rest:
            rows = home.catalog.images(ids=rest)
            vecs, kept = embed_catalog_images(encoder, [r.id for r in rows], [r.path for r in rows],
                                              progress=progress, home=home)
            store.add(kept, vecs, catalog_metadata(home, kept) if keeps_meta else None)
            added += len(kept)
    if missing.size or extra.size or force_save:
        backend = store.backend
        row = home.catalog.index_for(model.id, backend)
        path = location(home, row) if row else str(index_path(home, model, backend))
        faults.point("sync.before_save")
        store.save(path)  # faiss: atomic file write; milvus: flush
        faults.point("sync.after_save")
        home.catalog.record_index(model_id=model.id, backend=backend,
                                  spec=getattr(store, "spec", "Flat"), path=_stored(home, path),
                                  ntotal=store.ntotal, model_sha256=model.checkpoint_sha256)
    sync_local(home, model, encoder)  # the tiles of the same images, when the model has them
    return added


def compact_index(home: Home, model: ModelRow) -> IndexStatus:
    """Merge the delta file of a model's faiss index into its main file (under the write lock).

    Search results do not change: the delta is searched exactly beside the
    main index until then. Milvus compacts its own segments; nothing to do.
    """
    with write_lock(home, "index compact"):
        row = home.catalog.index_for(model.id, "faiss")
        if row is None:
            raise IndexMissingError(f"Model {model.name!r} has no faiss index to compact.")
        store, row = open_index(home, model, "faiss")
        try:
            merged = store.delta_size
            faults.point("compact.before")
            store.compact(location(home, row))
            if merged:
                home.catalog.record_index(model_id=model.id, backend="faiss", spec=row.spec,
                                          path=row.path, ntotal=store.ntotal,
                                          model_sha256=getattr(row, "model_sha256", None))
        finally:
            store.close()
    log.info("compacted the index of %r: %d delta vectors merged", model.name, merged)
    return status(home, model, "faiss")


def status(home: Home, model: ModelRow, backend: str | None = None) -> IndexStatus:
    """Compare the catalog with the index of `model`: missing and extra ids, stale model."""
    store, row = open_index(home, model, backend)
    try:
        catalog_ids = np.asarray(home.catalog.image_ids(), dtype=np.int64)
        present = store.ids()
        return IndexStatus(
            model=model.name, backend=row.backend, spec=row.spec, path=location(home, row),
            ntotal=store.ntotal, catalog_images=len(catalog_ids),
            missing=int(np.setdiff1d(catalog_ids, present).size),
            extra=int(np.setdiff1d(present, catalog_ids).size), generation=row.generation,
            stale_model=_stale_reason(model, row, store) or _checkpoint_problem(home, model),
            metric=row.metric or "cosine", delta=int(getattr(store, "delta_size", 0)),
            **local_status(home, model),
        )
    finally:
        store.close()


def _stale_reason(model: ModelRow, row: IndexRow, store: VectorStore) -> str | None:
    """Why the index's vectors may not be this model's embeddings (None when they are)."""
    dim = _model_embed_dim(model)
    if dim is not None and dim != store.dim:
        return f"index dimension {store.dim} != model embedding dimension {dim}"
    built_with = getattr(row, "model_sha256", None)
    if built_with and built_with != model.checkpoint_sha256:
        return (f"built with checkpoint {built_with[:12]}, the model's checkpoint is now "
                f"{model.checkpoint_sha256[:12]}")
    return None


def _checkpoint_problem(home: Home, model: ModelRow) -> str | None:
    """Why the model's checkpoint files are not the ones the catalog recorded (None if they are)."""
    from latentsight.embedder.errors import ModelError
    from latentsight.embedder.models import CONFIG_FILE, read_config, verify_integrity

    directory = home.resolve(model.checkpoint_path)
    try:
        verify_integrity(directory, read_config(directory / CONFIG_FILE),
                         model.checkpoint_sha256)
    except (ModelError, OSError) as e:
        return f"checkpoint: {e}"
    return None


def _model_embed_dim(model: ModelRow) -> int | None:
    """The embedding size a model's config gives (None when it cannot be told)."""
    try:
        from latentsight.embedder.models import create

        return int(create(model.kind, **(model.config or {})).embed_dim)
    except Exception:  # noqa: BLE001 - a model kind this build does not know
        return None


def delete_images(home: Home, ids: Sequence[int]) -> dict[str, int]:
    """Delete images from the catalog, then their vectors from every index.

    The catalog goes first (it is the source of truth): if this is interrupted
    between the two, the next sync or `index verify` finds the extra vectors
    and searches already skip ids the catalog no longer has. Indexes that
    cannot remove (HNSW) are rebuilt from the catalog. Returns counts.
    """
    with write_lock(home, "delete"):
        return _delete_locked(home, ids)


def _delete_locked(home: Home, ids: Sequence[int]) -> dict[str, int]:
    ids = sorted({int(i) for i in ids})
    deleted = home.catalog.delete_images(ids)
    out = {"deleted": deleted, "vectors_removed": 0, "indexes_rebuilt": 0}
    models = {m.id: m for m in home.catalog.models()}
    for row in home.catalog.indexes():
        model = models.get(row.model_id)
        if model is None:
            continue
        store, row = open_index(home, model, row.backend, repair=True)
        try:
            out["vectors_removed"] += store.remove(ids)
        except StoreError as e:
            store.close()
            log.warning("%s; rebuilding the index of %r without the deleted images", e,
                        model.name)
            rebuild_index(home, model, row, progress=False)
            out["indexes_rebuilt"] += 1
            continue
        store.save(location(home, row))
        home.catalog.record_index(model_id=model.id, backend=row.backend, spec=row.spec,
                                  path=row.path, ntotal=store.ntotal,
                                  model_sha256=getattr(row, "model_sha256", None))
        store.close()
    for model in models.values():
        if has_local(home, model):
            out["local_vectors_removed"] = out.get("local_vectors_removed", 0) + remove_local(
                home, model, ids)
    return out
