"""Vector stores: one contract, a FAISS implementation configured by an index_factory string.

Every store keeps catalog image ids as vector ids and answers
`search(q, k) -> (scores, ids)` of shape (n, k), best first, with -1 in
the id (and -inf in the score) of a missing slot, as faiss does. Higher
scores are closer, whatever the metric: "cosine" (the default) L2-normalizes
vectors on the way in and scores by inner product, i.e. cosine similarity;
"ip" scores raw inner products; "l2" scores minus the squared L2 distance.
"""

from __future__ import annotations

import abc
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from latentsight.embedder.errors import StoreError
from latentsight.embedder.fsutil import atomic_write

METRICS = ("cosine", "ip", "l2")


def check_metric(metric: str) -> str:
    """Return `metric` when it is one of METRICS; a StoreError naming them otherwise."""
    if metric not in METRICS:
        msg = f"The 'metric' must be one of {', '.join(METRICS)}. Got {metric!r} instead."
        raise StoreError(msg)
    return metric


def as_matrix(vectors: np.ndarray) -> np.ndarray:
    """Return the vectors as contiguous float32 rows (n, d)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        msg = f"Vectors must be a 2-D array (n, d). Got shape {v.shape} instead."
        raise StoreError(msg)
    return v


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return a float32 copy of the rows scaled to unit L2 norm (zero rows stay zero)."""
    import faiss

    v = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if v.ndim != 2:
        msg = f"Vectors must be a 2-D array (n, d). Got shape {v.shape} instead."
        raise StoreError(msg)
    faiss.normalize_L2(v)  # in place, in C++: ~1.5 us for one query, numpy's norm ~7 us
    return v


Metadata = Sequence[Mapping[str, object]]  # one {"label", "source", "synthetic"} per vector
META_DEFAULTS: dict[str, object] = {"label": None, "source": "ingest", "synthetic": False}


@dataclass(frozen=True)
class Filter:
    """Which vectors a search may return, by catalog metadata.

    Each field left None does not filter; the fields combine with AND, the
    values inside one field with OR. Every backend translates the same
    object: FAISS resolves it to catalog ids and searches through an ID
    selector; Milvus turns it into a boolean expression on scalar fields.
    """

    labels: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    synthetic: bool | None = None

    @classmethod
    def of(
        cls,
        *,
        labels: Sequence[str] | str | None = None,
        sources: Sequence[str] | str | None = None,
        synthetic: bool | None = None,
    ) -> Filter:
        def tup(v: Sequence[str] | str | None) -> tuple[str, ...] | None:
            if v is None:
                return None
            return (v,) if isinstance(v, str) else tuple(v)

        return cls(labels=tup(labels), sources=tup(sources), synthetic=synthetic)

    @property
    def empty(self) -> bool:
        return self.labels is None and self.sources is None and self.synthetic is None

    def matches(self, meta: Mapping[str, object]) -> bool:
        """Whether one vector's metadata passes (the reference the backends must agree with)."""
        if self.labels is not None and meta.get("label") not in self.labels:
            return False
        if self.sources is not None and meta.get("source") not in self.sources:
            return False
        return self.synthetic is None or bool(meta.get("synthetic")) == self.synthetic

    def to_milvus_expr(self) -> str:
        """A Milvus boolean expression over the scalar fields label, source, synthetic."""
        parts = []
        if self.labels is not None:
            parts.append(f"label in {_milvus_list(self.labels)}")
        if self.sources is not None:
            parts.append(f"source in {_milvus_list(self.sources)}")
        if self.synthetic is not None:
            parts.append(f"synthetic == {'true' if self.synthetic else 'false'}")
        return " and ".join(parts)


def _milvus_list(values: Sequence[str]) -> str:
    quoted = []
    for v in values:
        text = str(v).replace("\\", "\\\\").replace('"', '\\"')
        quoted.append(f'"{text}"')
    return "[" + ", ".join(quoted) + "]"


# A function from a Filter to the catalog ids it allows (FAISS keeps no metadata itself).
Resolver = Callable[[Filter], np.ndarray]


class VectorStore(abc.ABC):
    """The contract every backend keeps (FAISS here; Milvus in index/milvus_store.py).

    A new backend is covered by tests/index/test_store_contract.py once it is
    added to the BACKENDS registry there.
    """

    dim: int
    backend: str = "?"
    spec: str = "?"

    @abc.abstractmethod
    def add(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, metadata: Metadata | None = None
    ) -> None:
        """Add vectors under catalog ids; an id already present is an error (use upsert).

        `metadata` (one mapping with label, source, synthetic per vector) is kept
        by backends that filter on their own scalar fields (Milvus) and ignored
        by those that resolve filters through the catalog (FAISS).
        """

    @abc.abstractmethod
    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""

    @abc.abstractmethod
    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        allowed_ids: Sequence[int] | np.ndarray | None = None,
        filter: Filter | None = None,  # noqa: A002 - the name pymilvus and faiss users expect
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n, k), best first; -1 ids for missing slots.

        With `allowed_ids` and/or `filter`, only matching ids are candidates: a
        filter applied inside the search, so k results come back whenever k
        matching ids exist.
        """

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """All ids in the store, int64."""

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors (n, dim) float32 of `ids`, in the order given.

        As stored: L2-normalized under the cosine metric; PQ codes decode to
        approximations. An id not in the store is a StoreError.
        """
        msg = f"The {self.backend} store cannot read its vectors back."
        raise StoreError(msg)

    @abc.abstractmethod
    def save(self, path: str | Path) -> None:
        """Persist atomically: readers see the old file or the new one, never half of one."""

    def flush(self) -> None:
        """Make every write so far durable and visible (before the catalog records it)."""
        return None

    def close(self) -> None:
        """Release connections or files."""
        return None

    def upsert(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, metadata: Metadata | None = None
    ) -> None:
        """Replace the vectors of ids already present and add the others."""
        ids = np.asarray(ids, dtype=np.int64)
        present = np.isin(ids, self.ids())
        if present.any():
            self.remove(ids[present])
        self.add(ids, vectors, metadata)

    @property
    def ntotal(self) -> int:
        return len(self.ids())

    def __len__(self) -> int:
        return self.ntotal


class FaissStore(VectorStore):
    """A faiss index built from any `index_factory` string, wrapped in an IDMap2.

    `spec` is passed to `faiss.index_factory` verbatim ("Flat", "IVF256,Flat",
    "IVF1024,PQ32", "HNSW32", ...); "auto" picks one by collection size (see
    `choose_spec`). PQ codes are re-ranked with faiss's own refine stage:
    "IVF4096,PQ32,RFlat" keeps the float32 vectors for exact re-ranking,
    "IVF4096,PQ32,Refine(SQfp16)" float16 ones (half the memory; 8-bit SQ8
    copies cost a quarter but capped recall@10 near 0.94 on our benchmark).
    `params` sets search-time parameters with faiss's ParameterSpace syntax
    ("nprobe=32", "efSearch=128", "k_factor_rf=8", which re-ranks k*8
    candidates; "k_factor" is accepted for it); faiss saves them in the
    index file. Indexes that need training are trained on a sample of the
    first vectors added (or on `train()`).

    Filters: faiss keeps no metadata, so a `Filter` is resolved to catalog ids
    by `resolver` (the manager passes a catalog lookup) and applied inside the
    search through an ID selector.

    GPU: with `device` "cuda" (or "auto" when faiss sees a GPU), training and
    unfiltered searches run on a GPU copy of the index; the CPU index stays
    the one that is written to disk, so saved files load anywhere. Adds,
    removals and filtered searches (ID selectors) run on the CPU copy; HNSW
    has no faiss GPU implementation and stays on the CPU.
    """

    backend = "faiss"
    train_sample = 256 * 1024  # at most this many vectors train an IVF / PQ quantizer

    def __init__(
        self,
        dim: int,
        spec: str = "Flat",
        *,
        index: object | None = None,
        params: str | None = None,
        metric: str = "cosine",
        device: str = "cpu",
        resolver: Resolver | None = None,
    ) -> None:
        import faiss

        self.dim = int(dim)
        self.spec = spec
        self.metric = check_metric(metric)
        self.resolver = resolver
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if index is not None and index.metric_type != faiss_metric:
            has = "l2" if index.metric_type == faiss.METRIC_L2 else "ip (or cosine)"
            msg = f"The faiss index measures {has} distances; it cannot serve metric {metric!r}."
            raise StoreError(msg)
        if index is None:
            if spec == "auto":
                msg = "Resolve spec 'auto' with choose_spec(n, dim) before creating the store."
                raise StoreError(msg)
            try:
                inner = faiss.index_factory(self.dim, spec, faiss_metric)
            except RuntimeError as e:
                msg = f"Invalid faiss index spec {spec!r} for dimension {dim}: {_first_line(e)}"
                raise StoreError(msg) from e
            ivf = faiss.try_extract_index_ivf(inner)
            ivf = faiss.downcast_index(ivf) if ivf is not None else None
            if isinstance(ivf, faiss.IndexIVFPQ):
                # polysemous training costs minutes and serves only Hamming-filtered search
                ivf.do_polysemous_training = False
            index = faiss.IndexIDMap2(inner)
        self.index = index
        if params:
            self.set_params(params)
        self.gpu = gpu_device(device)
        self._gpu_index: object | None = None  # a GPU clone, dropped on every write

    def set_params(self, params: str) -> None:
        """Set search-time parameters, e.g. "nprobe=32", "efSearch=128" or "k_factor_rf=8"."""
        import faiss

        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexRefine):  # faiss names the refine factor k_factor_rf
            params = ",".join("k_factor_rf" + p[len("k_factor"):] if p.startswith("k_factor=")
                              else p for p in params.split(","))
        try:
            faiss.ParameterSpace().set_index_parameters(inner, params)
        except RuntimeError as e:
            msg = f"Invalid search parameters {params!r} for {self.spec!r}: {_first_line(e)}"
            raise StoreError(msg) from e

    # faiss keeps the ids of an IndexIDMap2 in `id_map`
    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        """float32 rows, L2-normalized for the cosine metric."""
        return normalize(vectors) if self.metric == "cosine" else as_matrix(vectors)

    def train(self, vectors: np.ndarray) -> None:
        """Train the quantizers (IVF, PQ) on a random sample of at most `train_sample` rows."""
        if self.index.is_trained:
            return
        v = self._prepare(vectors)
        if len(v) > self.train_sample:
            pick = np.random.default_rng(0).choice(len(v), self.train_sample, replace=False)
            v = v[np.sort(pick)]
        self._check_trainable(len(v))
        try:
            if self.gpu is not None:
                self._train_on_gpu(v)
            else:
                self.index.train(v)
        except RuntimeError as e:
            msg = f"Cannot train faiss index {self.spec!r} on {len(v)} vectors: {_first_line(e)}"
            raise StoreError(msg) from e
        self._gpu_index = None

    def _check_trainable(self, n: int) -> None:
        import faiss

        ivf = faiss.try_extract_index_ivf(self.index.index)
        nlist = int(ivf.nlist) if ivf is not None else 0
        if nlist and n < nlist:
            msg = (f"The index {self.spec!r} has {nlist} IVF lists but only {n} vectors to train "
                   f"on; use fewer lists (about 4*sqrt(N)) or --spec auto.")
            raise StoreError(msg)

    def _train_on_gpu(self, v: np.ndarray) -> None:
        """Train a GPU clone of the inner index and copy the trained quantizers back."""
        import faiss

        inner = self.index.index
        try:
            res = _gpu_resources()
            g = faiss.index_cpu_to_gpu(res, self.gpu, inner)
        except (RuntimeError, AttributeError):  # no GPU version of this index type (HNSW)
            self.index.train(v)
            return
        g.train(v)
        trained = faiss.index_gpu_to_cpu(g)
        self.index = faiss.IndexIDMap2(trained)

    def add(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, metadata: Metadata | None = None
    ) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        v = self._prepare(vectors)
        if v.shape[0] != ids.shape[0]:
            msg = f"Got {ids.shape[0]} ids for {v.shape[0]} vectors."
            raise StoreError(msg)
        if v.shape[0] == 0:
            return
        if v.shape[1] != self.dim:
            msg = f"Vectors have dimension {v.shape[1]}; this index holds dimension {self.dim}."
            raise StoreError(msg)
        if len(np.unique(ids)) != len(ids):
            raise StoreError("Duplicate ids within one add() call.")
        clash = np.intersect1d(ids, self.ids())
        if clash.size:
            msg = f"{clash.size} id(s) already in the index (first: {int(clash[0])}); use upsert."
            raise StoreError(msg)
        if not self.index.is_trained:
            self.train(v)
        self.index.add_with_ids(v, ids)
        self._gpu_index = None

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size == 0:
            return 0
        id_map = faiss.vector_to_array(self.index.id_map)
        gone = np.isin(id_map, ids)
        if not gone.any():
            return 0
        inner = faiss.downcast_index(self.index.index)
        ivf = faiss.try_extract_index_ivf(inner)
        try:
            if ivf is None:  # Flat, PQ, SQ: faiss shifts positions, as the IDMap2 expects
                n = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
            else:
                n = _remove_positions(inner, ivf, gone)
                faiss.copy_array_to_vector(id_map[~gone], self.index.id_map)
                self.index.ntotal = int((~gone).sum())
                self.index.construct_rev_map()
        except RuntimeError as e:
            msg = (
                f"The faiss index {self.spec!r} does not support removal ({_first_line(e)}). "
                "Use a Flat or IVF spec (e.g. IVF1024,Flat, IVF1024,PQ32,RFlat), or rebuild "
                "from the catalog: latentsight index rebuild"
            )
            raise StoreError(msg) from e
        self._gpu_index = None
        return n

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        allowed_ids: Sequence[int] | np.ndarray | None = None,
        filter: Filter | None = None,  # noqa: A002
    ) -> tuple[np.ndarray, np.ndarray]:
        q = self._prepare(vectors)
        if k < 1:
            msg = f"The 'k' option must be >= 1. Got {k} instead."
            raise StoreError(msg)
        allowed = self._allowed(allowed_ids, filter)
        if allowed is None:
            try:  # no ntotal check first: every call into faiss costs a single query time
                scores, ids = self._searcher().search(q, k)
            except RuntimeError:
                if self.index.ntotal == 0:  # an empty IVF is untrained: faiss refuses
                    return _empty(len(q), k)
                raise
        elif self.index.ntotal == 0:
            return _empty(len(q), k)
        else:
            scores, ids = self._search_filtered(q, k, allowed)
        if self.metric == "l2":  # faiss gives squared distances, nearest first
            scores = -scores
        # faiss fills each row from the front, so a row with a missing slot ends with id -1;
        # looking at the last column first keeps the common, full answer cheap
        last = ids[:, -1]
        if (last[0] < 0 if len(last) == 1 else (last < 0).any()):
            scores[ids < 0] = -np.inf
        return scores, ids  # faiss's float32 and int64 arrays

    def _allowed(
        self, allowed_ids: Sequence[int] | np.ndarray | None, filt: Filter | None
    ) -> np.ndarray | None:
        allowed = None if allowed_ids is None else np.asarray(allowed_ids, dtype=np.int64)
        if filt is not None and not filt.empty:
            if self.resolver is None:
                msg = ("This faiss store has no catalog to resolve a Filter; open it through "
                       "index.manager.open_index or pass resolver=.")
                raise StoreError(msg)
            by_meta = np.asarray(self.resolver(filt), dtype=np.int64)
            allowed = by_meta if allowed is None else np.intersect1d(allowed, by_meta)
        return allowed

    def _searcher(self) -> object:
        """The index unfiltered searches go to: a GPU clone when there is a GPU."""
        if self.gpu is None:
            return self.index
        if self._gpu_index is None:
            import faiss

            try:
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), self.gpu, self.index)
            except (RuntimeError, AttributeError):  # no GPU version (HNSW): stay on the CPU
                self.gpu = None
                return self.index
        return self._gpu_index

    def _search_filtered(self, q: np.ndarray, k: int, allowed: np.ndarray):
        """Search the inner index with a bitmap selector over its internal positions.

        The IDMap2 keeps external ids in `id_map` (position -> catalog id). The
        selector goes straight to the inner index, with the search-parameter type
        it expects (IVF, HNSW or flat), so the filter is applied during the search.
        """
        import faiss

        id_map = faiss.vector_to_array(self.index.id_map)
        mask = np.isin(id_map, allowed)
        if not mask.any():
            return _empty(len(q), k)
        bitmap = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        inner = faiss.downcast_index(self.index.index)
        params = _search_params(inner, sel)
        scores, pos = inner.search(q, k, params=params)
        ids = np.where(pos >= 0, id_map[np.clip(pos, 0, None)], -1)
        return scores, ids

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros((0, self.dim), np.float32)
        id_map = faiss.vector_to_array(self.index.id_map)
        order = np.argsort(id_map, kind="stable")
        at = np.clip(np.searchsorted(id_map[order], ids), 0, max(0, len(id_map) - 1))
        pos = order[at] if len(id_map) else at
        bad = ~np.isin(ids, id_map)
        if bad.any():
            msg = f"{int(bad.sum())} id(s) not in the index (first: {int(ids[bad][0])})."
            raise StoreError(msg)
        inner = faiss.downcast_index(self.index.index)
        try:
            out = inner.reconstruct_batch(pos.astype(np.int64))
        except RuntimeError:  # IVF without a direct map: read a copy that has one
            copy = faiss.clone_index(inner)
            ivf = faiss.extract_index_ivf(copy)
            ivf.make_direct_map()
            try:
                out = copy.reconstruct_batch(pos.astype(np.int64))
            except RuntimeError as e:
                msg = f"The faiss index {self.spec!r} cannot read vectors back: {_first_line(e)}"
                raise StoreError(msg) from e
        return np.asarray(out, dtype=np.float32).reshape(len(ids), self.dim)

    def save(self, path: str | Path) -> None:
        """Write the CPU index atomically (a GPU build is saved as its CPU copy)."""
        import faiss

        atomic_write(path, lambda tmp: faiss.write_index(self.index, tmp))

    @classmethod
    def load(
        cls,
        path: str | Path,
        spec: str | None = None,
        *,
        metric: str | None = None,
        device: str = "cpu",
        resolver: Resolver | None = None,
    ) -> FaissStore:
        """Read an index file; `metric` None = what the file measures (ip read as cosine)."""
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise StoreError(f"{path}: cannot read the faiss index: {_first_line(e)}") from e
        if not isinstance(index, faiss.IndexIDMap2):
            raise StoreError(f"{path}: not a latentsight index (expected an IndexIDMap2)")
        if metric is None:
            metric = "l2" if index.metric_type == faiss.METRIC_L2 else "cosine"
        try:
            return cls(index.d, spec or "?", index=index, metric=metric, device=device,
                       resolver=resolver)
        except StoreError as e:
            raise StoreError(f"{path}: {e}") from e


def _remove_positions(inner: object, ivf: object, gone: np.ndarray) -> int:
    """Remove the vectors at positions `gone` (a mask) from an IVF index, or a refine over one.

    An IndexIDMap2 labels the inner index's vectors by position and, after a
    removal, shifts the positions that follow down. IVF lists keep their labels,
    so they are renumbered here the same way (faiss's IDMap2.remove_ids alone
    would leave every later vector answering with the wrong catalog id). A
    refine stage's own index (flat codes) shifts positions by itself.
    """
    import faiss

    base = faiss.downcast_index(inner.base_index) if isinstance(inner, faiss.IndexRefine) else inner
    if not isinstance(base, faiss.IndexIVF):  # IVF under a transform (OPQ, PCA)
        msg = f"remove_ids not implemented for {type(inner).__name__} over IVF"
        raise RuntimeError(msg)
    positions = np.flatnonzero(gone).astype(np.int64)
    n = int(ivf.remove_ids(faiss.IDSelectorBatch(positions)))
    new_pos = np.cumsum(~gone) - 1  # old position -> new position of the vectors kept
    invlists = ivf.invlists
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size == 0:
            continue
        labels = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size).copy()
        relabeled = np.ascontiguousarray(new_pos[labels], dtype=np.int64)
        invlists.update_entries(lst, 0, size, faiss.swig_ptr(relabeled), faiss.swig_ptr(codes))
    if isinstance(inner, faiss.IndexRefine):
        inner.refine_index.remove_ids(faiss.IDSelectorBatch(positions))
        inner.ntotal = inner.base_index.ntotal
    return n


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)


def gpu_device(device: str = "auto") -> int | None:
    """The GPU number faiss should use for `device` (auto|cpu|cuda|cuda:N), or None for the CPU."""
    if device == "cpu":
        return None
    import faiss

    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "auto":
        return 0 if n > 0 else None
    if device.startswith("cuda"):
        num = int(device.split(":", 1)[1]) if ":" in device else 0
        if num >= n:
            say(f"warning: --device {device} asked for, but faiss sees {n} GPU(s) (a CPU-only "
                "faiss build?); the index stays on the CPU.")
            return None
        return num
    msg = f"The 'device' must be auto, cpu, cuda or cuda:N. Got {device!r} instead."
    raise StoreError(msg)


_GPU_RES: list[object] = []


def _gpu_resources() -> object:
    import faiss

    if not _GPU_RES:
        _GPU_RES.append(faiss.StandardGpuResources())
    return _GPU_RES[0]


@dataclass(frozen=True)
class SpecChoice:
    spec: str
    params: str | None
    reason: str


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def choose_spec(n: int, dim: int, *, memory_budget: int | None = None) -> SpecChoice:
    """Pick an index for n vectors of dimension dim, following faiss's guidelines.

    Below 50k vectors exact search (Flat) is fast enough. Above, IVF with about
    4*sqrt(N) lists (a power of two, within faiss's 4*sqrt(N)..16*sqrt(N) and
    with >= 39 training points per list), probing `ivf_nprobe(nlist)` of them.
    When the float32 vectors would take more than `memory_budget` (default:
    half the available memory), they are compressed with PQ (dim/4 bytes each)
    and the PQ candidates re-ranked against float16 copies (Refine(SQfp16),
    half the float32 size; k_factor_rf=32 re-ranks 32*k candidates): PQ alone
    finds only a third of the true top 10 (docs/benchmarks.md: PQ32 at 1M
    vectors, 0.322 alone, 0.978 re-ranking 16*k, 0.997 re-ranking 32*k). When
    even the float16 copies do not fit, PQ alone with the largest code that
    fits, said in the reason.
    """
    if memory_budget is None:
        memory_budget = available_memory() // 2
    raw = n * dim * 4
    if n < 50_000:
        reason = f"{n} vectors < 50,000: exact search (Flat) is fast enough"
        if raw <= memory_budget:
            return SpecChoice("Flat", None, reason)
    root = math.sqrt(max(n, 1))
    nlist = ivf_lists(n)
    nprobe = ivf_nprobe(nlist)
    probe = (f"nprobe {nprobe} (1/{nlist // nprobe} of the lists; raise it with "
             f"--params nprobe=N if recall on your data is too low)")
    if raw <= memory_budget:
        reason = (f"{n} vectors: IVF with {nlist} lists (4*sqrt(N) = {4 * root:.0f}), "
                  f"{probe}; float32 vectors take {raw / 2**20:.0f} MiB")
        return SpecChoice(f"IVF{nlist},Flat", f"nprobe={nprobe}", reason)
    short = (f"{n} vectors of dim {dim} take {raw / 2**20:.0f} MiB as float32, more than the "
             f"budget {memory_budget / 2**20:.0f} MiB")
    m = _pq_bytes(n, dim, memory_budget, largest=dim // 4)
    if n * (m + 2 * dim + PER_VECTOR_OVERHEAD) <= memory_budget:
        reason = (f"{short}: IVF{nlist} with PQ{m} codes re-ranked against float16 copies "
                  f"({m + 2 * dim} bytes/vector), {probe}, k_factor_rf 32 (32*k candidates "
                  "re-ranked)")
        return SpecChoice(f"IVF{nlist},PQ{m},Refine(SQfp16)", f"nprobe={nprobe},k_factor_rf=32",
                          reason)
    m = _pq_bytes(n, dim, memory_budget, largest=64)
    reason = (f"{short}, even as float16: IVF{nlist} with PQ{m} ({m} bytes/vector), no "
              f"re-ranking (expect recall@10 well below 0.95), {probe}")
    return SpecChoice(f"IVF{nlist},PQ{m}", f"nprobe={nprobe}", reason)


def ivf_nprobe(nlist: int) -> int:
    """IVF lists to probe: 1/128 of them, at least 8 and at most 64.

    faiss's default (1) misses most neighbours. On the benchmark's clustered
    vectors nprobe 8 already gives recall@10 1.000 at 1M vectors (IVF4096);
    real embeddings are less clustered and need more lists probed for the same
    recall, so this keeps a 2-4x margin. 1/128 (32 of 4,096 lists, 0.8% of
    the vectors scanned) still answers 1,310 single queries/s on 1M vectors on
    2 cores (64: 796/s); 64 caps the cost of larger indexes
    (docs/benchmarks.md, "Index (issue 5)").
    """
    return int(min(64, max(8, nlist // 128)))


def ivf_lists(n: int) -> int:
    """IVF list count for n vectors: a power of two near 4*sqrt(n), >= 39 training points each."""
    root = math.sqrt(max(n, 1))
    nlist = 2 ** math.ceil(math.log2(max(4 * root, 1)))
    while nlist > 16 and (nlist > 16 * root or n < 39 * nlist):
        nlist //= 2
    return nlist


# bytes per vector besides its codes: the IVF list's id, the IDMap2's id and its reverse
# map entry (a hash-map node)
PER_VECTOR_OVERHEAD = 64


def _pq_bytes(n: int, dim: int, budget: int, *, largest: int) -> int:
    """The largest PQ code size m (dividing dim, <= dim/2, <= largest) that fits the budget."""
    best = 1
    for m in range(1, min(largest, max(1, dim // 2)) + 1):
        if dim % m == 0 and n * (m + PER_VECTOR_OVERHEAD) <= budget:
            best = m
    return best


def say(msg: str) -> None:
    """A progress line on stderr (results go to stdout)."""
    print(msg, file=sys.stderr)


def _search_params(inner: object, sel: object) -> object:
    """Search parameters carrying an ID selector, of the type the inner index expects."""
    import faiss

    if isinstance(inner, faiss.IndexRefine):  # the base index applies the selector
        base = _search_params(faiss.downcast_index(inner.base_index), sel)
        params = faiss.IndexRefineSearchParameters(k_factor=inner.k_factor,
                                                   base_index_params=base)
        params.sel = sel
        params.keep = base  # swig does not keep the nested parameters alive
        return params
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=inner.nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)
    return faiss.SearchParameters(sel=sel)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
