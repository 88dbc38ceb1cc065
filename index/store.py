"""Vector stores: one contract, a FAISS implementation configured by an index_factory string.

Every store keeps catalog image ids as vector ids and answers
`search(q, k) -> (scores, ids)` of shape (n, k), best first, with -1 in
the id (and -inf in the score) of a missing slot, as faiss does. Vectors
are L2-normalized on the way in, so the inner product is the cosine
similarity: higher scores are closer.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedder.errors import StoreError
from embedder.fsutil import atomic_write


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        msg = f"Vectors must be a 2-D array (n, d). Got shape {v.shape} instead."
        raise StoreError(msg)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


class VectorStore(abc.ABC):
    """The contract every backend keeps (FAISS here; Milvus in its own module)."""

    dim: int

    @abc.abstractmethod
    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under catalog ids; an id already present is an error (use upsert)."""

    @abc.abstractmethod
    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""

    @abc.abstractmethod
    def search(
        self, vectors: np.ndarray, k: int, *, allowed_ids: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n, k), best first; -1 ids for missing slots.

        With `allowed_ids`, only those ids are candidates: a filter applied
        inside the search, so k results come back whenever k allowed ids exist.
        """

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """All ids in the store, int64."""

    @abc.abstractmethod
    def save(self, path: str | Path) -> None:
        """Persist atomically: readers see the old file or the new one, never half of one."""

    def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Replace the vectors of ids already present and add the others."""
        ids = np.asarray(ids, dtype=np.int64)
        present = np.isin(ids, self.ids())
        if present.any():
            self.remove(ids[present])
        self.add(ids, vectors)

    @property
    def ntotal(self) -> int:
        return len(self.ids())

    def __len__(self) -> int:
        return self.ntotal


class FaissStore(VectorStore):
    """A faiss index built from any `index_factory` string, wrapped in an IDMap2.

    `spec` is passed to `faiss.index_factory` verbatim ("Flat", "IVF256,Flat",
    "IVF1024,PQ32", "HNSW32", ...). Indexes that need training are trained on
    the first vectors added (or on `train()`).
    """

    backend = "faiss"

    def __init__(self, dim: int, spec: str = "Flat", *, index: object | None = None) -> None:
        import faiss

        self.dim = int(dim)
        self.spec = spec
        if index is None:
            try:
                inner = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                msg = f"Invalid faiss index spec {spec!r} for dimension {dim}: {_first_line(e)}"
                raise StoreError(msg) from e
            index = faiss.IndexIDMap2(inner)
        self.index = index

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

    def train(self, vectors: np.ndarray) -> None:
        v = normalize(vectors)
        if not self.index.is_trained:
            self.index.train(v)

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        v = normalize(vectors)
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
            self.index.train(v)
        self.index.add_with_ids(v, ids)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size == 0:
            return 0
        try:
            return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        except RuntimeError as e:
            msg = (
                f"The faiss index {self.spec!r} does not support removal ({_first_line(e)}). "
                "Use a Flat or IVF spec, or rebuild: latentsight index rebuild"
            )
            raise StoreError(msg) from e

    def search(
        self, vectors: np.ndarray, k: int, *, allowed_ids: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:

        q = normalize(vectors)
        if k < 1:
            msg = f"The 'k' option must be >= 1. Got {k} instead."
            raise StoreError(msg)
        if self.index.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if allowed_ids is None:
            scores, ids = self.index.search(q, k)
        else:
            scores, ids = self._search_filtered(q, k, np.asarray(allowed_ids, dtype=np.int64))
        scores = scores.astype(np.float32)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64)

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
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        bitmap = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        inner = faiss.downcast_index(self.index.index)
        params = _search_params(inner, sel)
        scores, pos = inner.search(q, k, params=params)
        ids = np.where(pos >= 0, id_map[np.clip(pos, 0, None)], -1)
        return scores, ids

    def save(self, path: str | Path) -> None:
        import faiss

        atomic_write(path, lambda tmp: faiss.write_index(self.index, tmp))

    @classmethod
    def load(cls, path: str | Path, spec: str | None = None) -> FaissStore:
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise StoreError(f"{path}: cannot read the faiss index: {_first_line(e)}") from e
        if not isinstance(index, faiss.IndexIDMap2):
            raise StoreError(f"{path}: not a latentsight index (expected an IndexIDMap2)")
        return cls(index.d, spec or "?", index=index)


def _search_params(inner: object, sel: object) -> object:
    """Search parameters carrying an ID selector, of the type the inner index expects."""
    import faiss

    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=inner.nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)
    return faiss.SearchParameters(sel=sel)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
