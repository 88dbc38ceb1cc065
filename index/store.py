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
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from latentsight.embedder import faults
from latentsight.embedder.devices import check_device
from latentsight.embedder.fsutil import atomic_write
from latentsight.index.errors import StoreError
from latentsight.index.threads import cores, one_torch_thread

log = logging.getLogger(__name__)

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


# What a double-quoted string literal of Milvus's expression grammar cannot hold raw. Only
# these four escapes mean the same to a 2.3 server (Go's strconv.Unquote) and to Milvus Lite
# (its own parser, which rejects \u and \x); every other character is taken as it is.
_MILVUS_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def milvus_string(value: object) -> str:
    """`value` as a double-quoted Milvus string literal that matches it exactly."""
    return '"' + str(value).translate(_MILVUS_ESCAPES) + '"'


def _milvus_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(milvus_string(v) for v in values) + "]"


def _write_error(path: str | Path, e: BaseException) -> StoreError:
    """One line for a failed index write (a full disk, most often); the old file stays."""
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    msg = (f"{path}: cannot write the index ({reason}); is the disk full? The previous "
           "index file, if any, is unchanged")
    return StoreError(msg)


def exact_search(
    xb: object, q: np.ndarray, k: int, *, metric: str, xnorm: object | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of queries `q` over the rows of `xb` through a fast CPU BLAS.

    `xb` is a torch float32 (n, d) tensor (a view of faiss's own rows, or the
    delta's), `q` float32 (nq, d) already prepared as the store prepares
    vectors. Scores are the store's (higher is closer): the inner product for
    ip and cosine, minus the squared L2 distance for l2 (`xnorm` the rows'
    squared norms, computed as faiss does: |q|^2 + |x|^2 - 2 q.x, clamped at
    0). `mask` (n,) bool limits the candidates. Returns (scores, positions),
    (nq, k), best first, -inf / -1 in missing slots.

    faiss's own Flat search runs 2-7x slower on the development machines
    (docs/benchmarks.md, "Exact search at the limit"). The product runs through
    torch's BLAS or numpy's, whichever this machine runs faster (`blas_for`: MKL,
    torch's, is fast on Intel and slow on AMD CPUs, where numpy's OpenBLAS wins),
    measured once per process for single queries and for batches.
    """
    import torch

    n, nq = int(xb.shape[0]), len(q)
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_p = np.full((nq, k), -1, np.int64)
    if n == 0 or nq == 0:
        return out_s, out_p
    if mask is not None:
        pos = np.flatnonzero(mask)
        if len(pos) == 0:
            return out_s, out_p
        if len(pos) * 4 < n:  # few candidates: score only those rows (a copy of them)
            sub = xb[torch.from_numpy(pos)]
            sn = None if xnorm is None else xnorm[torch.from_numpy(pos)]
            s, p = exact_search(sub, q, k, metric=metric, xnorm=sn)
            return s, np.where(p >= 0, pos[np.clip(p, 0, None)], -1)
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    kk = min(k, n)
    blocked = None if mask is None else ~mask
    small = n * int(q.shape[1]) * nq < SMALL_SEARCH_MACS
    with torch.no_grad():
        tiny = n * int(q.shape[1]) < CALIBRATE_ROWS_X_DIM  # too few rows to time the BLAS
        blas = "torch" if tiny else blas_for(xb, qt)
        scores, pos = _search_blocks(blas, xb, qt, kk, metric, xnorm, blocked, small=small)
        if metric == "l2":  # -(|q|^2 + |x|^2 - 2 q.x), clamped like faiss's distances
            qn = (qt * qt).sum(1, keepdim=True).numpy()
            scores = -np.maximum(qn - scores, 0, dtype=np.float32)
    missing = ~np.isfinite(scores) if mask is not None else None
    out_s[:, :kk] = scores
    out_p[:, :kk] = pos
    if missing is not None and missing.any():
        out_s[:, :kk][missing] = -np.inf
        out_p[:, :kk][missing] = -1
    return out_s, out_p


class _TopK:
    """The k best (score, row) of each query over blocks of rows (one per thread).

    A block's scores only reach the top k through a compare with each query's k-th best
    so far (one pass, against a top-k's several): the entries above it are kept aside
    as candidates and merged in when there are many (`flush`), which raises the k-th
    again. Only the first block, and a query still short of k, take a block's own top k.
    After the first block a query gains about k x block / rows-seen candidates per block,
    so the top k costs a small fraction of the product (docs/benchmarks.md, "Exact search
    at the limit").
    """

    def __init__(self, nq: int, k: int) -> None:
        self.s = np.full((nq, k), -np.inf, np.float32)
        self.p = np.full((nq, k), -1, np.int64)
        self.empty = True
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (query, s, row)
        self.n_pending = 0
        self.budget = max(4096, 8 * nq * k)  # candidates kept aside before a merge

    def add(self, block: np.ndarray, b0: int) -> None:
        """Take in `block` (nq, m): the scores of rows b0 .. b0 + m."""
        k, m = self.s.shape[1], block.shape[1]
        if self.empty and m >= k:  # the first block: its top k as they are
            v, i = _row_topk(block, k)
            self.s[:], self.p[:] = v, i + b0
            self.empty = False
            return
        self.empty = False
        kth = self.s[:, -1]
        rows = np.flatnonzero(block.max(1) > kth)  # all -inf rows never enter
        if len(rows) == 0:
            return
        sub = block if len(rows) == len(block) else block[rows]  # (r, m): rows with candidates
        short = np.isneginf(kth[rows])
        if short.any():
            v, i = _row_topk(sub if short.all() else sub[short], min(k, m))
            self._keep(np.repeat(rows[short], v.shape[1]), v.ravel(), i.ravel() + b0)
        if not short.all():
            idx = np.flatnonzero(~short)
            rest = sub if len(idx) == len(sub) else sub[idx]
            above = np.flatnonzero(rest > kth[rows[idx], None])  # flat in (len(idx), m)
            self._keep(rows[idx][above // m], rest.ravel()[above], above % m + b0)
        if self.n_pending > self.budget:
            self.flush()

    def _keep(self, query: np.ndarray, s: np.ndarray, row: np.ndarray) -> None:
        self.pending.append((query, s, row))
        self.n_pending += len(query)

    def flush(self) -> _TopK:
        """Merge the candidates kept aside: a (queries, k + most candidates) table of each
        query's k best and its candidates, -inf padded, reduced to its top k."""
        if not self.n_pending:
            return self
        key = np.concatenate([c[0] for c in self.pending])
        order = np.argsort(key, kind="stable")
        key = key[order]
        val = np.concatenate([c[1] for c in self.pending])[order]
        pos = np.concatenate([c[2] for c in self.pending])[order]
        self.pending, self.n_pending = [], 0
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # key is sorted already
        rows, count = key[first], np.diff(np.r_[first, len(key)])
        local = np.repeat(np.arange(len(rows)), count)
        k = self.s.shape[1]
        col = k + np.arange(len(key)) - np.repeat(first, count)
        table = np.full((len(rows), k + int(count.max())), -np.inf, np.float32)
        where = np.full(table.shape, -1, np.int64)
        table[:, :k], where[:, :k] = self.s[rows], self.p[rows]
        table[local, col], where[local, col] = val, pos
        v, j = _row_topk(table, k)
        self.s[rows] = v
        self.p[rows] = np.take_along_axis(where, j, 1)
        return self


def _row_topk(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row of `a` (r, m), best first, and their columns. numpy on the
    calling thread, not torch.topk: torch's threads and OpenBLAS's, each spinning after its
    own call, slow each other down 2-3x when their calls alternate."""
    if k < a.shape[1]:
        cols = np.argpartition(-a, k - 1, axis=1)[:, :k]
    else:
        cols = np.broadcast_to(np.arange(a.shape[1]), a.shape)
    vals = np.take_along_axis(a, cols, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, 1), np.take_along_axis(cols, order, 1)


def _search_blocks(blas: str, xb: object, qt: object, kk: int, metric: str,
                   xnorm: object | None, blocked: np.ndarray | None, *, small: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows of `xb` for each query of `qt`, on `blas` (one of BLAS_KERNELS).

    "numpy", and a few queries (up to GEMV_QUERIES, bound by memory) on either: one span
    of rows on the calling thread, the BLAS on its own threads. "torch" with a batch: the
    rows split into one span per core, each searched on its own thread with torch on one
    thread. Either way the rows go in blocks whose (nq, rows) score block stays in cache
    (2 MiB; 32k rows for a few queries), the first one small, so that the running k-th
    best that filters the others (`_TopK`) is cheap to seed. Queries go in slices of
    QUERY_SLICE. `small`: one block on the calling thread (a hand-off costs more).
    `xnorm` (torch, n): l2's squared row norms; `blocked` (n,) bool: rows left out.
    Returns (scores, positions), (nq, kk) each, best first (l2: 2 q.x - |x|^2).
    """
    import torch

    n, nq = int(xb.shape[0]), int(qt.shape[0])
    if nq > QUERY_SLICE:
        parts = [_search_blocks(blas, xb, qt[a : a + QUERY_SLICE], kk, metric, xnorm, blocked,
                                small=small) for a in range(0, nq, QUERY_SLICE)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    x, q = xb.numpy(), qt.numpy()  # views, no copies
    xn = None if xnorm is None else xnorm.numpy()
    rows = n if small else int(min(32768, max(1024, (1 << 19) // max(nq, 1))))

    def product(b0: int, b1: int, out: np.ndarray) -> None:
        if blas == "numpy":
            np.matmul(q, x[b0:b1].T, out=out)
        else:
            torch.mm(qt, xb[b0:b1].T, out=torch.from_numpy(out))
        if xn is not None:  # l2: 2 q.x - |x|^2, larger is nearer
            out *= 2
            out -= xn[b0:b1]
        if blocked is not None:
            np.copyto(out, -np.inf, where=blocked[b0:b1])

    def span(lo: int, hi: int) -> _TopK:
        top = _TopK(nq, kk)
        buf = np.empty(nq * min(rows, hi - lo), np.float32)
        b0, step = lo, rows if nq <= GEMV_QUERIES else min(rows, SEED_ROWS)
        while b0 < hi:
            b1 = min(hi, b0 + step)
            out = buf[: nq * (b1 - b0)].reshape(nq, b1 - b0)
            product(b0, b1, out)
            top.add(out, b0)
            b0, step = b1, min(rows, 2 * step)  # growing: few candidates pass each block
        return top.flush()

    if small or nq <= GEMV_QUERIES or blas == "numpy":
        top = span(0, n)
        return top.s, top.p
    bounds = np.linspace(0, n, min(cores(), -(-n // SEED_ROWS)) + 1).astype(int)
    with one_torch_thread():
        if len(bounds) > 2:
            tops = list(_search_pool().map(span, bounds[:-1], bounds[1:]))
        else:
            tops = [span(0, n)]
    best = (tops[0].s, tops[0].p)
    for t in tops[1:]:
        best = merge_topk(best, (t.s, t.p), kk)
    return best


# Below this many multiply-adds (n * d * queries; 10k x 384 at batch 1 is 3.8M) a search is
# one product on the calling thread: the chunk hand-off and the thread-count switch cost
# more than they save (docs/benchmarks.md, "Exact search at the limit").
SMALL_SEARCH_MACS = 1 << 24
CALIBRATE_ROWS_X_DIM = 1 << 20  # below this many row floats (4 MiB) torch, unmeasured
SEED_ROWS = 1024  # each thread's first block: its top k seeds the filter of the others
GEMV_QUERIES = 4  # up to this many queries a search is bound by memory, not FLOP/s
QUERY_SLICE = 256  # queries searched together (a larger batch goes slice by slice)
BLAS_ENV = "LATENTSIGHT_EXACT_BLAS"  # one of BLAS_KERNELS: skip the measurement, use it
# numpy's BLAS on its own threads from the calling thread; torch's on one thread per core,
# on exact_search's own threads (numpy's OpenBLAS cannot be limited to one thread from
# several threads at once: threadpoolctl lets only the first of them change it back)
BLAS_KERNELS = ("numpy", "torch")
_BLAS: dict[str, str] = {}
# an index over LARGE_ROWS rows has its own choice, measured on its first LARGE_SAMPLE rows
LARGE_ROWS = 65536
LARGE_SAMPLE = 262144
_BLAS_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def blas_for(xb: object, qt: object) -> str:
    """The kernel of BLAS_KERNELS that runs this shape of search fastest on this machine.

    Measured once per process and per kind: a single query is a matrix-vector product,
    bound by memory; a batch is a matrix product, bound by FLOP/s; and a large index
    (over LARGE_ROWS rows) is its own kind, because which kernel wins a batch changes
    with the rows (on the Intel dev VM numpy's at 32k rows, torch's from about 100k; on
    the AMD VM numpy's everywhere: MKL, torch's, is slow on AMD CPUs). Both kernels
    search the first rows of `xb` (at most 32k, or LARGE_SAMPLE for a large index) once
    to warm up, then three times in rotation; the faster by its best time is kept.
    `LATENTSIGHT_EXACT_BLAS=numpy|torch` sets it instead.
    """
    import time

    forced = os.environ.get(BLAS_ENV, "").strip().lower()
    if forced in BLAS_KERNELS:
        return forced
    rows = int(xb.shape[0])
    large = rows > LARGE_ROWS
    kind = ("gemv" if int(qt.shape[0]) <= GEMV_QUERIES else "gemm") + ("-large" if large else "")
    with _BLAS_LOCK:
        if kind in _BLAS:
            return _BLAS[kind]
        sample = xb[: min(rows, LARGE_SAMPLE if large else 32768)]
        best = dict.fromkeys(BLAS_KERNELS, float("inf"))
        for name in best:  # warm-up: thread pools wake, first-call costs paid
            _search_blocks(name, sample, qt, 10, "ip", None, None)
        for _ in range(3):  # in rotation, so a disturbance hits all alike
            for name in best:
                t = time.perf_counter()
                _search_blocks(name, sample, qt, 10, "ip", None, None)
                best[name] = min(best[name], time.perf_counter() - t)
        _BLAS[kind] = min(best, key=best.get)
        log.info("exact search (%s): %s (%s on %d rows)", kind, _BLAS[kind],
                 ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in best.items()), len(sample))
        return _BLAS[kind]


def _search_pool() -> ThreadPoolExecutor:
    """The threads exact_search shares its row chunks out to (one per core, made once)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(cores(), thread_name_prefix="exact-search")
        return _POOL


def merge_topk(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of two (scores, ids) answers per row; missing slots (-1) stay last."""
    s = np.concatenate([a[0], b[0]], 1)
    i = np.concatenate([a[1], b[1]], 1)
    s = np.where(i < 0, -np.inf, s).astype(np.float32)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


@dataclass(frozen=True)
class FileToken:
    """Which version of the main index file a delta or id list belongs to.

    The stat fields say it cheaply (every save is a rename to a new inode); a
    home copied elsewhere changes them, so the main file's ntotal and the
    SHA-256 of its ids are kept too and checked when the stat differs.
    """

    ino: int
    size: int
    mtime_ns: int
    ntotal: int
    ids_sha256: str

    @classmethod
    def of(cls, path: str | Path, ids: np.ndarray) -> FileToken:
        st = os.stat(path)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, len(ids), ids_digest(ids))

    def same_file(self, path: str | Path) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_ino, st.st_size, st.st_mtime_ns) == (self.ino, self.size, self.mtime_ns)

    def as_array(self) -> np.ndarray:
        return np.array([self.ino, self.size, self.mtime_ns, self.ntotal], np.int64)

    @classmethod
    def from_arrays(cls, stat: np.ndarray, digest: np.ndarray) -> FileToken:
        ino, size, mtime_ns, ntotal = (int(x) for x in stat)
        return cls(ino, size, mtime_ns, ntotal, str(digest))


def ids_digest(ids: np.ndarray) -> str:
    """SHA-256 of a set of ids (sorted int64 bytes)."""
    import hashlib

    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).tobytes()).hexdigest()


def delta_path(path: str | Path) -> Path:
    """The delta file beside a main index file: vectors added since its last full write."""
    return Path(f"{path}.delta")


def ids_path(path: str | Path) -> Path:
    """The sorted id list beside a main index file (lets writers open without reading it)."""
    return Path(f"{path}.ids")


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an npz file; None when there is none (a damaged one raises StoreError)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, ValueError, OSError, ...
        raise StoreError(f"{path}: cannot read: {e}") from e


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
        self._index = index
        if params:
            self.set_params(params)
        self.gpu = gpu_device(device)
        self._gpu_index: object | None = None  # a GPU clone, dropped on every write
        self._flat: tuple | None = None  # torch view of Flat rows, norms, ids
        # The delta: vectors (prepared) added since the main file was last written whole.
        self._delta_ids = np.zeros(0, np.int64)
        self._delta_vecs = np.zeros((0, self.dim), np.float32)
        self._delta_t: tuple[object, object | None] | None = None
        self._base: FileToken | None = None  # the main file on disk this store mirrors
        self._main_dirty = False  # the main index changed since it was written (a removal)
        self._lazy: tuple[Path, np.ndarray] | None = None  # (main file, its ids) not read yet

    # Adds to a store that mirrors a file go to the delta while it holds at most this
    # fraction of the main index; past it, the next save merges and rewrites the main file.
    # LATENTSIGHT_DELTA_FRACTION overrides it (0 = always write the main file whole).
    delta_fraction = 0.05

    @property
    def index(self) -> object:
        """The faiss IndexIDMap2 of the main index (read from disk now if opened lazily)."""
        if self._lazy is not None:
            self._materialize()
        return self._index

    @index.setter
    def index(self, value: object) -> None:
        self._index = value
        self._changed()

    def _changed(self) -> None:
        self._gpu_index = None
        self._flat = None

    def set_params(self, params: str) -> None:
        """Set search-time parameters, e.g. "nprobe=32", "efSearch=128" or "k_factor_rf=8"."""
        import faiss

        inner = faiss.downcast_index(self._index.index)
        if isinstance(inner, faiss.IndexRefine):  # faiss names the refine factor k_factor_rf
            params = ",".join("k_factor_rf" + p[len("k_factor"):] if p.startswith("k_factor=")
                              else p for p in params.split(","))
        try:
            faiss.ParameterSpace().set_index_parameters(inner, params)
        except RuntimeError as e:
            msg = f"Invalid search parameters {params!r} for {self.spec!r}: {_first_line(e)}"
            raise StoreError(msg) from e

    # faiss keeps the ids of an IndexIDMap2 in `id_map`
    def main_ids(self) -> np.ndarray:
        """The ids of the main index (without the delta)."""
        import faiss

        if self._lazy is not None:
            return self._lazy[1]
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def ids(self) -> np.ndarray:
        return np.concatenate([self.main_ids(), self._delta_ids])

    @property
    def ntotal(self) -> int:
        main = len(self._lazy[1]) if self._lazy is not None else int(self._index.ntotal)
        return main + len(self._delta_ids)

    @property
    def delta_size(self) -> int:
        """Vectors in the delta (added since the main file was written whole)."""
        return len(self._delta_ids)

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
        self._changed()

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
        clash = ids[self._present(ids)]
        if clash.size:
            msg = f"{clash.size} id(s) already in the index (first: {int(clash[0])}); use upsert."
            raise StoreError(msg)
        if self._base is not None:  # mirrors a file: the delta takes it, the main file stays
            self._delta_ids = np.concatenate([self._delta_ids, ids])
            self._delta_vecs = np.concatenate([self._delta_vecs, v])
            self._delta_t = None
            return
        self._add_main(ids, v)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` the store holds, without sorting the whole id list when it is long."""
        main = self.main_ids()
        if self._lazy is not None:  # the id list file is sorted
            j = np.searchsorted(main, ids).clip(0, max(len(main) - 1, 0))
            hit = main[j] == ids if len(main) else np.zeros(len(ids), bool)
        else:
            hit = np.isin(ids, main)
        return hit | np.isin(ids, self._delta_ids)

    def _add_main(self, ids: np.ndarray, v: np.ndarray) -> None:
        if not self.index.is_trained:
            self.train(v)
        self.index.add_with_ids(v, ids)
        self._changed()

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size == 0:
            return 0
        in_delta = np.isin(self._delta_ids, ids)
        n_delta = int(in_delta.sum())
        if n_delta:
            self._delta_ids = self._delta_ids[~in_delta]
            self._delta_vecs = self._delta_vecs[~in_delta]
            self._delta_t = None
        if not np.isin(ids, self.main_ids()).any():
            return n_delta
        id_map = faiss.vector_to_array(self.index.id_map)
        gone = np.isin(id_map, ids)
        self._main_dirty = True
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
        self._changed()
        return n + n_delta

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
        scores, ids = self._search_main(q, k, allowed)
        if len(self._delta_ids):
            mask = None if allowed is None else np.isin(self._delta_ids, allowed)
            xb, xn = self._delta_tensor()
            ds, dp = exact_search(xb, q, k, metric=self.metric, xnorm=xn, mask=mask)
            dids = np.where(dp >= 0, self._delta_ids[np.clip(dp, 0, None)], -1)
            scores, ids = merge_topk((scores, ids), (ds, dids), k)
        return scores, ids

    def _search_main(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        flat = self._flat_tensor() if self.gpu is None else None
        if flat is not None:  # exact search through torch's BLAS, same answers as faiss Flat
            mask = None
            id_map = flat[2]
            if len(id_map) == 0:
                return _empty(len(q), k)
            if allowed is not None:
                mask = np.isin(id_map, allowed)
            s, pos = exact_search(flat[0], q, k, metric=self.metric, xnorm=flat[1], mask=mask)
            return s, np.where(pos >= 0, id_map[np.clip(pos, 0, None)], -1)
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

    def _flat_tensor(self) -> tuple[object, object | None, np.ndarray] | None:
        """A torch view (no copy) of a Flat main index's rows, their squared norms, its ids.

        None for any other index type (IVF, HNSW, PQ: faiss searches those).
        Dropped on every write, since faiss may move its rows.
        """
        if self._flat is None:
            import faiss
            import torch

            inner = faiss.downcast_index(self.index.index)
            if type(inner) not in (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2):
                self._flat = (None, None, None)
            else:
                n = int(inner.ntotal)
                rows = (faiss.rev_swig_ptr(inner.get_xb(), n * self.dim).reshape(n, self.dim)
                        if n else np.zeros((0, self.dim), np.float32))
                xb = torch.from_numpy(rows)
                xn = (xb * xb).sum(1) if self.metric == "l2" else None
                self._flat = (xb, xn, faiss.vector_to_array(self.index.id_map))
        return None if self._flat[0] is None else self._flat

    def _delta_tensor(self) -> tuple[object, object | None]:
        if self._delta_t is None:
            import torch

            xb = torch.from_numpy(self._delta_vecs)
            self._delta_t = (xb, (xb * xb).sum(1) if self.metric == "l2" else None)
        return self._delta_t

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
        in_delta = np.isin(ids, self._delta_ids)
        if in_delta.any():  # added since the main file was written whole
            out = np.empty((len(ids), self.dim), np.float32)
            order = np.argsort(self._delta_ids, kind="stable")
            at = np.searchsorted(self._delta_ids[order], ids[in_delta])
            out[in_delta] = self._delta_vecs[order[at]]
            if not in_delta.all():
                out[~in_delta] = self.vectors(ids[~in_delta])
            return out
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
        """Persist atomically: only the delta file while it is small, else the whole index.

        A store that mirrors the main file at `path` (loaded from it, or saved
        to it) and whose main index did not change writes only its delta
        (`PATH.delta`: temp file + fsync + rename, bound to that main file), so
        an ingest writes what it added, not the collection. Past
        `delta_fraction` of the main index, or after a removal from it, the
        delta is merged and the main file rewritten (`compact`).
        """
        path = Path(path)
        fraction = float(os.environ.get("LATENTSIGHT_DELTA_FRACTION", self.delta_fraction))
        small = len(self._delta_ids) <= fraction * len(self.main_ids())
        if (self._base is not None and not self._main_dirty and small
                and self._base.same_file(path) and self._saved_to == path):
            if not self._ids_listed:  # an index written before id lists: list it once
                self._write_ids(path)
            faults.point("delta.before_write")
            try:
                _write_npz(delta_path(path), ids=self._delta_ids, vectors=self._delta_vecs,
                           base_stat=self._base.as_array(),
                           base_ids=np.array(self._base.ids_sha256), metric=np.array(self.metric))
            except OSError as e:
                raise _write_error(delta_path(path), e) from e
            faults.point("delta.after_write")
            return
        self.compact(path)

    _saved_to: Path | None = None

    def compact(self, path: str | Path) -> None:
        """Merge the delta into the main index and write it whole (a GPU build as its CPU copy).

        Order: the main file (atomic rename), then its sorted id list, then the
        delta file goes. A kill in between leaves a whole main file holding
        every vector; the old delta and id list no longer match its stat or
        its ids and are ignored on load.
        """
        import faiss

        path = Path(path)
        index = self.index
        if len(self._delta_ids):
            self._add_main(self._delta_ids, self._delta_vecs)
            self._delta_ids = np.zeros(0, np.int64)
            self._delta_vecs = np.zeros((0, self.dim), np.float32)
            self._delta_t = None
            index = self.index
        try:
            atomic_write(path, lambda tmp: faiss.write_index(index, tmp))
        except (RuntimeError, OSError) as e:  # faiss says "write error" on a full disk
            raise _write_error(path, e) from e
        faults.point("compact.after_main")
        ids = self.main_ids()
        self._base = FileToken.of(path, ids)
        self._saved_to = path
        self._main_dirty = False
        self._write_ids(path)
        faults.point("compact.after_ids")
        delta_path(path).unlink(missing_ok=True)

    _ids_listed = False  # PATH.ids matches the main file this store mirrors

    def _write_ids(self, path: Path) -> None:
        """The main file's sorted ids, bound to it: lets writers open without reading it."""
        _write_npz(ids_path(path), ids=np.sort(self.main_ids()), base_stat=self._base.as_array(),
                   base_ids=np.array(self._base.ids_sha256), dim=np.array(self.dim))
        self._ids_listed = True

    def _materialize(self) -> None:
        """Read the main index of a lazily opened store (under the writer's lock)."""
        path, _ids = self._lazy
        if self._base is not None and not self._base.same_file(path):
            msg = f"{path}: the index file changed since it was opened; open it again."
            raise StoreError(msg)
        index = _read_index(path)
        self._lazy = None
        self._index = index
        self._changed()

    @classmethod
    def load(
        cls,
        path: str | Path,
        spec: str | None = None,
        *,
        metric: str | None = None,
        device: str = "cpu",
        resolver: Resolver | None = None,
        lazy: bool = False,
    ) -> FaissStore:
        """Read an index file and its delta; `metric` None = what the file measures (ip read
        as cosine).

        Readers get one generation: the main file is stat'ed before and after
        its delta is read, and both are read again when a writer replaced it
        in between. A delta that belongs to another version of the main file
        (left by a kill during a compaction) is ignored; the catalog's sync
        re-adds anything missing. `lazy` (writers holding the home's write
        lock, e.g. ingest): read only the id list and the delta now, and the
        main file when a search or a removal first needs it, so adding a few
        vectors to a large index costs what they cost.
        """
        path = Path(path)
        for _attempt in range(20):
            before = _stat_key(path)
            store = (cls._open_lazy(path, spec, metric, device, resolver) if lazy else None)
            if store is None:
                store = cls._open_index(path, spec, metric, device, resolver,
                                        _read_index(path))
            delta = _read_npz(delta_path(path))
            if _stat_key(path) == before:
                break
        else:
            msg = f"{path}: the index kept changing while it was read; try again."
            raise StoreError(msg)
        store._attach_delta(path, delta)
        return store

    @classmethod
    def _open_index(cls, path, spec, metric, device, resolver, index) -> FaissStore:
        import faiss

        if not isinstance(index, faiss.IndexIDMap2):
            raise StoreError(f"{path}: not a latentsight index (expected an IndexIDMap2)")
        if metric is None:
            metric = "l2" if index.metric_type == faiss.METRIC_L2 else "cosine"
        try:
            return cls(index.d, spec or "?", index=index, metric=metric, device=device,
                       resolver=resolver)
        except StoreError as e:
            raise StoreError(f"{path}: {e}") from e

    @classmethod
    def _open_lazy(cls, path, spec, metric, device, resolver) -> FaissStore | None:
        """A store over the id list and dimension only, when the id list matches the file."""
        try:
            listed = _read_npz(ids_path(path))
        except StoreError:
            return None
        if listed is None or metric is None or "dim" not in listed:
            return None
        token = FileToken.from_arrays(listed["base_stat"], listed["base_ids"])
        if not token.same_file(path):
            return None
        import faiss

        dim = int(listed["dim"])
        probe = faiss.IndexIDMap2(faiss.IndexFlat(dim, faiss.METRIC_L2 if metric == "l2"
                                                  else faiss.METRIC_INNER_PRODUCT))
        store = cls(dim, spec or "?", index=probe, metric=metric, device=device,
                    resolver=resolver)
        store._lazy = (path, listed["ids"].astype(np.int64))
        store._base = token
        store._ids_listed = True
        return store

    def _attach_delta(self, path: Path, delta: dict[str, np.ndarray] | None) -> None:
        """Take the delta when it belongs to this main file; ignore it (logged) otherwise."""
        if self._base is None:
            self._base = FileToken.of(path, self.main_ids())
        self._saved_to = path
        if delta is None:
            return
        try:
            token = FileToken.from_arrays(delta["base_stat"], delta["base_ids"])
            ids = delta["ids"].astype(np.int64)
            vecs = np.ascontiguousarray(delta["vectors"], dtype=np.float32)
            metric = str(delta["metric"])
        except KeyError as e:
            raise StoreError(f"{delta_path(path)}: not a latentsight delta (no {e})") from e
        if vecs.ndim != 2 or len(vecs) != len(ids) or (len(ids) and vecs.shape[1] != self.dim):
            msg = f"{delta_path(path)}: {vecs.shape} vectors for {len(ids)} ids, dim {self.dim}"
            raise StoreError(msg)
        if metric != self.metric:
            msg = f"{delta_path(path)}: delta of metric {metric!r}, the index is {self.metric!r}"
            raise StoreError(msg)
        fits = (self._base.same_file(path) or (
            token.ntotal == self._base.ntotal and token.ids_sha256 == self._base.ids_sha256))
        if not fits or self._present(ids).any():
            log.warning("%s: left by an earlier version of the index file; ignored (the "
                        "catalog sync re-adds what is missing)", delta_path(path))
            return
        self._delta_ids, self._delta_vecs, self._delta_t = ids, vecs.reshape(-1, self.dim), None


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_index(path: Path) -> object:
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise StoreError(f"{path}: cannot read the faiss index: {_first_line(e)}") from e


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
    try:
        check_device(device)
    except ValueError as e:
        raise StoreError(str(e)) from None
    if device == "cpu":
        return None
    import faiss

    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n == 0:
        from latentsight.index.faiss_gpu import warn_if_gpu_unused

        warn_if_gpu_unused()
    if device == "auto":
        return 0 if n > 0 else None
    if device.startswith("cuda"):
        num = int(device.split(":", 1)[1]) if ":" in device else 0
        if num >= n:
            log.warning("--device %s asked for, but faiss sees %d GPU(s) (a CPU-only faiss "
                        "build?); the index stays on the CPU.", device, n)
            return None
        return num
    return None  # unreachable: check_device allows nothing else


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
    return text[0] if text else type(e).__name__
