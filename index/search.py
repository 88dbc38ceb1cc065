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
from latentsight.index.local import (
    LocalIndex,
    check_box,
    load_local,
    query_squares,
    search_tiles,
    tile_vectors,
)
from latentsight.index.local import paths as local_paths
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
    box: list[int] | None = None  # [x, y, w, h] of the matching region (search by box)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        if d["box"] is None:
            del d["box"]
        return d


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
        self._local: tuple[float, LocalIndex] | None = None  # (file mtime, local vectors)
        self._scorer: tuple[str, object] | None = None  # (scanning model, its scorer)
        self._anomaly: tuple[float, object] | None = None  # (file mtime, anomaly-weighted)
        self.last_query_box: tuple[int, int, int, int] | None = None  # of the last region search

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

    def local_index(self) -> LocalIndex:
        """The model's local (tile) vectors, reloaded when their file changed."""
        store_path, _meta = local_paths(self.home, self.model)
        try:
            mtime = store_path.stat().st_mtime
        except OSError:
            mtime = -1.0
        if self._local is None or self._local[0] != mtime:
            self._local = (mtime, load_local(self.home, self.model))
        return self._local[1]

    def query_pixels(
        self, query: str | int | Path | bytes | np.ndarray, *, name: str = "<upload>"
    ) -> tuple[np.ndarray, str]:
        """Decode a query (path, catalog id, bytes or pixels) -> (pixels, name for errors)."""
        if isinstance(query, np.ndarray):
            return query, name
        item = Upload(name, query) if isinstance(query, bytes) else resolve_query(self.home, query)
        pr = self.decoder().probe_one(item, (0, self.encoder.channels))  # native resolution
        if pr.error is not None:
            raise DecodeError(pr.path, pr.error)
        return pr.pixels, pr.path

    def query_vector(
        self, query: str | int | Path | bytes | np.ndarray, *, name: str = "<upload>"
    ) -> np.ndarray:
        """Embed a query given as a path, a catalog id, raw bytes or decoded pixels.

        `name` is the file name that errors about uploaded bytes carry.
        """
        if isinstance(query, np.ndarray):
            return self.encoder.embed_pixels([query])
        item = Upload(name, query) if isinstance(query, bytes) else resolve_query(self.home, query)
        pr = self.decoder().probe_one(item, self.encoder.probe_want)
        if pr.error is not None:
            raise DecodeError(pr.path, pr.error)
        return self.encoder.embed_probed([pr.pixels])  # (1, D)

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
        box: tuple[int, int, int, int] | None = None,
        anomaly: str | object | None = None,
        weighted: bool | None = None,
    ) -> list[Hit]:
        """Return up to k hits, best first. With a label, source or synthetic flag, a filter
        inside the search (FAISS: catalog ids + ID selector; Milvus: a boolean expression).

        Synthetic (GAN-made) images are left out unless `include_synthetic`;
        `synthetic=True` asks for them alone.

        `box` = (x, y, w, h) in query pixels searches by region: the crop (made
        square around the box) is matched against the local tile vectors of every
        image (`latentsight index build --local`); each image counts once, with its
        best tile, and its hit's `.box` says where in it the match lies.

        `anomaly` = the name of a scanning model (`latentsight train --normal-label`):
        the region searched is the query's most anomalous square under that model's
        anomaly map (`index.local.anomaly_boxes`), so a defect image finds images with
        the same kind of defect rather than the same background; `last_query_box` then
        says which square it was. A fitted scorer object (with `anomaly_map`) works too.
        When the model's anomaly-weighted vectors were built under that scanning model
        (`latentsight index build --anomaly SCAN_MODEL`; for a scorer object: built from
        one), the query's anomaly-weighted vector is matched against them (one per image:
        its own most anomalous square) instead of against every tile; `weighted` True
        requires them, False never uses them, None (default) uses them when they match.
        """
        self.refresh()
        if synthetic is None and not include_synthetic and (
            self.home.catalog.count_images(synthetic=True) > 0
        ):
            synthetic = False
        filt = Filter.of(labels=label, sources=source, synthetic=synthetic)
        if box is not None and anomaly is not None:
            raise ValueError("Give a box or an anomaly model, not both.")
        if anomaly is not None and box is None and weighted is not False:
            index = self.anomaly_index(anomaly, required=bool(weighted))
            if index is not None:
                return self._search_anomaly(query, index, anomaly, k=k, filt=filt)
        if box is not None or anomaly is not None:
            return self._search_box(query, box, k=k, filt=filt, anomaly=anomaly)
        vec = self.query_vector(query)
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

    def anomaly_box(self, pixels: np.ndarray, scan_model: str | object
                    ) -> tuple[int, int, int, int]:
        """The most anomalous square of decoded pixels under a scanning model's map
        (`index.local.most_anomalous_box`); `scan_model` a model name or a fitted scorer."""
        from latentsight.index.local import most_anomalous_box

        scorer = self._scorer_of(scan_model)
        amap = np.asarray(scorer.anomaly_map([pixels])[0], dtype=np.float64)
        return most_anomalous_box(amap, self.local_index().geometry)

    def anomaly_index(self, scan_model: str | object, *, required: bool = False):
        """The model's anomaly-weighted vectors when built under `scan_model` (a name, or
        any scorer object for vectors built from one), else None (`required`: a StoreError
        saying how to build them)."""
        from latentsight.index.local import ANOMALY_HINT, anomaly_paths, has_anomaly, load_anomaly

        if not has_anomaly(self.home, self.model):
            if required:
                msg = (f"The index of model {self.model.name!r} has no anomaly-weighted "
                       f"vectors. {ANOMALY_HINT}")
                raise StoreError(msg)
            return None
        mtime = anomaly_paths(self.home, self.model)[0].stat().st_mtime
        cached = self._anomaly
        if cached is None or cached[0] != mtime:
            cached = (mtime, load_anomaly(self.home, self.model))
            self._anomaly = cached
        index = cached[1]
        if index.fits(self.model, scan_model):
            return index
        if required:
            why = ("the model was retrained since" if not index.fresh_for(self.model) else
                   f"they were built under {index.scan_model or 'a scorer object'!r}")
            msg = (f"The anomaly-weighted vectors of model {self.model.name!r} do not fit: "
                   f"{why}. {ANOMALY_HINT}")
            raise StoreError(msg)
        return None

    def _search_anomaly(self, query, index, anomaly, *, k: int, filt: Filter) -> list[Hit]:
        from latentsight.index.local import anomaly_vector

        pixels, _name = self.query_pixels(query)
        scorer = self._scorer_of(anomaly)
        amap = np.asarray(scorer.anomaly_map([pixels])[0], dtype=np.float64)
        vec, used = anomaly_vector(self.encoder, pixels, amap, index.geometry)
        self.last_query_box = tuple(int(v) for v in used[0])
        allowed = None
        if not filt.empty:
            allowed = np.asarray(self.home.catalog.image_ids(
                labels=filt.labels, sources=filt.sources, synthetic=filt.synthetic,
                match_empty=True), dtype=np.int64)
            if not allowed.size:
                return []
        scores, ids = index.store.search(index.centered(vec[None, :]), k, allowed_ids=allowed)
        found = [int(i) for i in ids[0] if i >= 0]
        rows = {r.id: r for r in self.home.catalog.images(ids=found)}
        return [
            Hit(id=i, path=rows[i].path, label=rows[i].label, source=rows[i].source,
                score=float(s), synthetic=bool(rows[i].synthetic),
                box=[int(v) for v in index.boxes[i]] if i in index.boxes else None)
            for s, i in zip(scores[0], (int(j) for j in ids[0]), strict=True)
            if i >= 0 and i in rows
        ]

    def _scorer_of(self, scan_model: str | object):
        """A scanning model's fitted scorer (loaded once), or the scorer object given."""
        from latentsight.index.manager import load_scorer

        if not isinstance(scan_model, str):
            return scan_model
        if self._scorer is None or self._scorer[0] != scan_model:
            row = self.home.catalog.model(scan_model)
            self._scorer = (scan_model, load_scorer(self.home, row, "cpu")[1])
        return self._scorer[1]

    def _search_box(self, query, box, *, k: int, filt: Filter,
                    anomaly: str | object | None = None) -> list[Hit]:
        local = self.local_index()  # before decoding: an index without tiles says how to fix it
        pixels, name = self.query_pixels(query)
        if anomaly is not None:
            box = self.anomaly_box(pixels, anomaly)
        self.last_query_box = tuple(int(v) for v in box)
        h, w = pixels.shape[:2]
        crops = query_squares(check_box(box, w, h, name=name), w, h, local.geometry)
        vec = tile_vectors(self.encoder, np.stack([
            self.encoder.prepare(pixels[cy : cy + cs, cx : cx + cs])
            for cx, cy, cs, _ in crops]))  # (q, D)
        allowed = None
        if not filt.empty:
            allowed = np.asarray(self.home.catalog.image_ids(
                labels=filt.labels, sources=filt.sources, synthetic=filt.synthetic,
                match_empty=True), dtype=np.int64)
        rows: dict[int, object] = {}

        def sizes_of(ids: list[int]) -> dict[int, tuple[int, int]]:
            want = [i for i in ids if i not in rows]
            rows.update({r.id: r for r in self.home.catalog.images(ids=want)} if want else {})
            return {i: (rows[i].width, rows[i].height) for i in ids if i in rows}

        found = search_tiles(local, vec, k, sizes_of, allowed_images=allowed)
        return [
            Hit(id=i, path=rows[i].path, label=rows[i].label, source=rows[i].source,
                score=s, synthetic=bool(rows[i].synthetic), box=[int(v) for v in b])
            for i, s, b in found
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
    box: tuple[int, int, int, int] | None = None,
    anomaly: str | None = None,
    weighted: bool | None = None,
) -> list[Hit]:
    """Search the catalog for images like `query` (one-shot; use Searcher for many queries)."""
    return Searcher(home, model, device=device).search(query, k=k, label=label,
                                                       include_synthetic=include_synthetic,
                                                       box=box, anomaly=anomaly,
                                                       weighted=weighted)


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
