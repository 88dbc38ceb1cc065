"""Image-to-image search: a query image (a file or a catalog id) -> nearest catalog images."""

from __future__ import annotations

import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.probe import Limits, ProbePool, Upload
from latentsight.index.catalog import IndexRow, ModelRow
from latentsight.index.errors import CatalogError, StoreError
from latentsight.index.home import Home
from latentsight.index.locks import writer_active
from latentsight.index.manager import BACKEND, load_encoder, open_index
from latentsight.index.paths import from_catalog
from latentsight.index.store import Filter


@dataclass
class Hit:
    id: int
    path: str
    label: str | None
    source: str
    score: float
    synthetic: bool = False  # made by a GAN (`latentsight synth`), not a real image

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Searcher:
    """A model, its encoder and its index held in memory for repeated queries.

    A reader: it never repairs, rebuilds or locks anything (a damaged index
    raises IndexDamagedError naming `latentsight index rebuild`). Query files
    and uploads are decoded in a spawned worker (embedder/probe.py) under
    `limits`, the path ingest and scans use: a hostile query cannot hang or
    exhaust the process that searches (the dashboard's server).
    """

    def __init__(self, home: Home, model: str | None = None, *, device: str = "auto",
                 limits: Limits = Limits()) -> None:
        self.home = home
        self.limits = limits
        self._pool: ProbePool | None = None
        self.model: ModelRow = home.catalog.model(model)
        self.store, self.index_row = open_index(home, self.model, device=device)
        _check_fresh(home, self.model, self.index_row)
        self.encoder = load_encoder(home, self.model, device)

    def refresh(self) -> bool:
        """Load the index again when a writer has replaced it (its generation changed).

        Index files are only ever replaced by an atomic rename, so the load
        sees a whole index, old or new. Returns True when it reloaded.
        """
        backend = self.index_row.backend
        row = self.home.catalog.index_for(self.model.id, backend)
        if row is None or (row.generation, row.path) == (self.index_row.generation,
                                                         self.index_row.path):
            return False
        self.store.close()  # Milvus Lite allows one client per file
        self.store, self.index_row = open_index(self.home, self.model, backend)
        return True

    def query_vector(
        self, query: str | int | Path | bytes | np.ndarray, *, name: str = "<upload>"
    ) -> np.ndarray:
        """Embed a query given as a path, a catalog id, raw bytes or decoded pixels.

        `name` is the file name that errors about uploaded bytes carry.
        """
        if isinstance(query, np.ndarray):
            return self.encoder.embed_pixels([query])
        item = Upload(name, query) if isinstance(query, bytes) else resolve_query(self.home, query)
        pr = self.decoder().probe_one(item, (self.encoder.image_size, self.encoder.channels))
        if pr.error is not None:
            raise DecodeError(pr.path, pr.error)
        return self.encoder.embed_uint8(pr.pixels[None])  # (1, C, S, S) -> (1, D)

    def decoder(self) -> ProbePool:
        """The decoding worker of this searcher (started on first use, kept for the next)."""
        if self._pool is None:
            self._pool = ProbePool(1, self.limits)
            weakref.finalize(self, self._pool.close)
        return self._pool

    def close(self) -> None:
        """Stop the decoding worker and close the index."""
        if self._pool is not None:
            self._pool.close()
        self.store.close()

    def search(
        self,
        query: str | int | Path | bytes | np.ndarray,
        *,
        k: int = 10,
        label: str | None = None,
        source: str | None = None,
        include_synthetic: bool = False,
        synthetic: bool | None = None,
    ) -> list[Hit]:
        """Return up to k hits, best first. With a label, source or synthetic flag, a filter
        inside the search (FAISS: catalog ids + ID selector; Milvus: a boolean expression).

        Synthetic (GAN-made) images are left out unless `include_synthetic`;
        `synthetic=True` asks for them alone.
        """
        self.refresh()
        vec = self.query_vector(query)
        if synthetic is None and not include_synthetic and (
            self.home.catalog.count_images(synthetic=True) > 0
        ):
            synthetic = False
        filt = Filter.of(labels=label, sources=source, synthetic=synthetic)
        scores, ids = self.store.search(vec, k, filter=None if filt.empty else filt)
        found = [int(i) for i in ids[0] if i >= 0]
        rows = {r.id: r for r in self.home.catalog.images(ids=found)}
        return [
            Hit(id=int(i), path=rows[int(i)].path, label=rows[int(i)].label,
                source=rows[int(i)].source, score=float(s),
                synthetic=bool(rows[int(i)].synthetic))
            for s, i in zip(scores[0], ids[0], strict=True)
            if i >= 0 and int(i) in rows
        ]


def search(
    home: Home,
    query: str | int | Path | bytes | np.ndarray,
    *,
    k: int = 10,
    label: str | None = None,
    model: str | None = None,
    device: str = "auto",
    include_synthetic: bool = False,
) -> list[Hit]:
    """Search the catalog for images like `query` (one-shot; use Searcher for many queries)."""
    return Searcher(home, model, device=device).search(query, k=k, label=label,
                                                       include_synthetic=include_synthetic)


def resolve_query(home: Home, query: str | int | Path) -> str:
    """A query is a path to an image file or a catalog id; returns a path to decode."""
    if isinstance(query, int):
        return from_catalog(home.catalog.image(query).path)
    text = os.fspath(query)
    if os.path.exists(text):
        return text
    if text.isdigit():
        return from_catalog(home.catalog.image(int(text)).path)
    raise CatalogError(f"{text}: neither an existing image file nor a catalog id")


def _check_fresh(home: Home, model: ModelRow, row: IndexRow) -> None:
    """Refuse a stale index, unless a writer is at work (it brings the index up to date)."""
    newer = home.catalog.count_images_since(row.built_at)
    if newer and not writer_active(home):
        # a writer may have finished between the two reads: look at its latest index row
        latest = home.catalog.index_for(model.id, BACKEND) or row
        newer = home.catalog.count_images_since(latest.built_at)
    if newer and not writer_active(home):
        msg = (
            f"The index of model {model.name!r} is stale: {newer} image(s) were ingested after "
            f"it was built. Run: latentsight index build --model {model.name}"
        )
        raise StoreError(msg)


__all__ = ["Hit", "Searcher", "resolve_query", "search"]
