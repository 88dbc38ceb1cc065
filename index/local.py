"""Local vectors: multi-scale square tiles of each image, embedded and kept in a second store.

Beside the whole-image vector, each catalog image gets one vector per tile
of a few square tiles at two scales, cut at native resolution and resized
to the model's input side (never squashed: tiles are square). A search by
region (`Searcher.search(query, box=(x, y, w, h))`) embeds the crop and
looks among these tiles, so a crack matches a crack wherever it sits and
whatever the background around it.

Ids and boxes. A local vector's id is `image_id << TILE_BITS | tile`,
where `tile` indexes `Geometry.boxes(width, height)` of the image's catalog
size. The box of any local id is thus a pure function of the id, the
catalog and the geometry: nothing else to keep in step, and removing an
image's vectors is a range of ids.

Files. HOME/indexes/MODEL.local.faiss (a FaissStore, Flat, cosine) and
MODEL.local.json (the geometry and the checkpoint it was built with),
both written atomically. The geometry (tile sides chosen from the catalog
images' sizes) is also recorded in the model's metrics ("local_geometry").
An index without local vectors keeps working; a region search says how
to add them: `latentsight index build --local`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.fsutil import atomic_write
from latentsight.embedder.images import decode_file
from latentsight.embedder.scoring import tile_positions
from latentsight.index.catalog import ImageRow, ModelRow
from latentsight.index.errors import CatalogError, StoreError
from latentsight.index.home import Home
from latentsight.index.paths import from_catalog
from latentsight.index.store import FaissStore

log = logging.getLogger(__name__)

TILE_BITS = 16  # tiles per image < 65536
FORMAT_VERSION = 1
ADD_HINT = "Run: latentsight index build --local"

Box = tuple[int, int, int, int]  # x, y, w, h in pixels of the catalog image


@dataclass(frozen=True)
class Geometry:
    """How images are tiled for local vectors, chosen from the catalog's image sizes."""

    tiles: tuple[int, ...]  # square tile sides in pixels, coarse to fine
    strides: tuple[int, ...]  # step between tiles of each scale (half a tile = overlap)
    image_size: int  # the model's input side each tile is resized to

    def boxes(self, width: int, height: int) -> list[Box]:
        """Every tile of an image of this size, coarse scale first; tiles fit inside it."""
        out: list[Box] = []
        for t, s in zip(self.tiles, self.strides, strict=True):
            side = min(t, width, height)
            for y in tile_positions(height, side, s):
                for x in tile_positions(width, side, s):
                    out.append((x, y, side, side))
        return out[: 1 << TILE_BITS]

    def as_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tiles=tuple(int(t) for t in d["tiles"]),
                   strides=tuple(int(s) for s in d["strides"]), image_size=int(d["image_size"]))


def choose_geometry(sizes: Sequence[tuple[int, int]], image_size: int) -> Geometry:
    """Tile sides from the images' sizes: half and a quarter of the median shorter side.

    Coarse tiles step a quarter tile, fine ones half a tile, so a region is
    never more than an eighth (a quarter) of a tile off the nearest one.
    Tiles are at least 16 pixels.
    """
    if not sizes:
        raise CatalogError("The catalog has no images to choose a tiling from.")
    short = int(np.median([min(w, h) for w, h in sizes]))
    coarse = max(16, short // 2) if short >= 32 else short
    fine = max(16, short // 4) if short >= 64 else coarse
    tiles = (coarse,) if fine == coarse else (coarse, fine)
    strides = tuple(max(1, t // (4 if i == 0 else 2)) for i, t in enumerate(tiles))
    return Geometry(tiles=tiles, strides=strides, image_size=image_size)


def local_ids(image_id: int, n_tiles: int) -> np.ndarray:
    return (np.int64(image_id) << TILE_BITS) + np.arange(n_tiles, dtype=np.int64)


def image_of(ids: np.ndarray) -> np.ndarray:
    """The catalog image id of each local vector id."""
    return np.asarray(ids, dtype=np.int64) >> TILE_BITS


def _files(home: Home, model: ModelRow, part: str) -> tuple[Path, Path]:
    """(faiss file, JSON) of one of a model's side stores (`local`, `anomaly`)."""
    return (home.indexes_dir / f"{model.name}.{part}.faiss",
            home.indexes_dir / f"{model.name}.{part}.json")


def _both_exist(files: tuple[Path, Path]) -> bool:
    return files[0].is_file() and files[1].is_file()


def paths(home: Home, model: ModelRow) -> tuple[Path, Path]:
    """(faiss file, geometry JSON) of a model's local vectors."""
    return _files(home, model, "local")


def has_local(home: Home, model: ModelRow) -> bool:
    return _both_exist(paths(home, model))


@dataclass
class LocalIndex:
    """A model's local store, its geometry and the checkpoint its vectors came from."""

    store: FaissStore
    geometry: Geometry
    model_sha256: str | None
    center: np.ndarray | None = None  # mean tile vector at build time, subtracted from all
    split: int | None = None  # where the learned part ends and the pixel part begins

    def centered(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors minus the build-time mean tile: what a tile has that tiles in general lack,
        each part (learned, pixels) then scaled to unit length so that both weigh the same.

        Encoder embeddings share a large common part (cosine near 1 between any
        two tiles); removing it lets cosine rank by what differs.
        """
        return center_parts(vectors, self.center, self.split)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.store.add(ids, self.centered(vectors))

    def save(self, home: Home, model: ModelRow) -> None:
        store_path, meta_path = paths(home, model)
        store_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT_VERSION, "geometry": self.geometry.as_dict(),
               "model_sha256": self.model_sha256, "dim": self.store.dim,
               "center": None if self.center is None else [float(c) for c in self.center],
               "split": self.split}
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
        self.store.save(store_path)


def load_local(home: Home, model: ModelRow) -> LocalIndex:
    """A model's local vectors; a StoreError saying how to add them when there are none."""
    store_path, meta_path = paths(home, model)
    if not has_local(home, model):
        msg = f"The index of model {model.name!r} has no local (region) vectors. {ADD_HINT}"
        raise StoreError(msg)
    try:
        doc = json.loads(meta_path.read_text())
        geometry = Geometry.from_dict(doc["geometry"])
        center = np.asarray(doc["center"], np.float32) if doc.get("center") else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = f"{meta_path}: unreadable local-vector geometry ({e}). {ADD_HINT}"
        raise StoreError(msg) from e
    store = FaissStore.load(store_path, spec="Flat", metric="cosine")
    return LocalIndex(store=store, geometry=geometry, model_sha256=doc.get("model_sha256"),
                      center=center, split=doc.get("split"))


def center_parts(vectors: np.ndarray, center: np.ndarray | None, split: int | None
                 ) -> np.ndarray:
    """Tile-like vectors (n, D) minus `center`, then the learned part (`[:split]`) and the
    pixel part each scaled to unit length (float32)."""
    v = np.asarray(vectors, dtype=np.float32)
    if center is not None:
        v = v - center[None, :]
    if split:
        v = np.concatenate([_unit(v[:, :split]), _unit(v[:, split:])], axis=1)
    return v.astype(np.float32)


PIXEL_SIDE = 8  # side of the downsampled-pixel part of a tile vector


def tile_vectors(encoder: Encoder, crops: np.ndarray) -> np.ndarray:
    """Vectors of square crops, uint8 (n, C, S, S) -> (n, D + C * PIXEL_SIDE**2).

    The encoder's embedding, unit length, beside the crop's pixels downsampled
    to PIXEL_SIDE x PIXEL_SIDE with their own mean removed, unit length: the
    learned part says what kind of structure a tile holds, the pixel part
    where its bright and dark parts lie (what a crop of the very same place
    shares and a learned embedding trained on whole images often blurs).
    """
    import torch
    import torch.nn.functional as F

    learned = _unit(encoder.embed_uint8(crops))  # (n, D)
    x = torch.from_numpy(crops).float().div_(255.0)  # (n, C, S, S)
    p = F.adaptive_avg_pool2d(x, PIXEL_SIDE).flatten(1).numpy()  # (n, C * P * P)
    return np.concatenate([learned, _unit(p - p.mean(1, keepdims=True))], axis=1).astype(
        np.float32)


def tile_dim(encoder: Encoder) -> int:
    return encoder.embed_dim + encoder.channels * PIXEL_SIDE**2


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def embed_tiles(
    encoder: Encoder, pixels: np.ndarray, boxes: Sequence[Box]
) -> np.ndarray:
    """Vectors of the square crops `boxes` of one decoded image (H, W[, 3]); returns (n, D)."""
    crops = [encoder.prepare(pixels[y : y + h, x : x + w]) for x, y, w, h in boxes]
    out = [tile_vectors(encoder, np.stack(crops[s : s + 256]))
           for s in range(0, len(crops), 256)]
    return np.concatenate(out) if out else np.zeros((0, tile_dim(encoder)), np.float32)


def tile_anomaly(amap: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """Mean of an anomaly map (H, W) inside each box; float64 (n,). An integral image."""
    m = np.asarray(amap, dtype=np.float64)
    ii = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    ii[1:, 1:] = m.cumsum(0).cumsum(1)
    out = np.empty(len(boxes))
    for j, (x, y, w, h) in enumerate(boxes):
        x1, y1 = min(x + w, m.shape[1]), min(y + h, m.shape[0])
        area = max(1, (x1 - x) * (y1 - y))
        out[j] = (ii[y1, x1] - ii[y, x1] - ii[y1, x] + ii[y, x]) / area
    return out


def anomaly_boxes(amap: np.ndarray, geometry: Geometry, *, top: int = 1,
                  where: str = "peak", sides: Sequence[int] | None = None) -> list[list[Box]]:
    """The most anomalous squares of an image at each tile side of `geometry`, most anomalous
    first: [[box, ...] per scale]. `where` "tile": among the geometry's own tiles; "peak":
    squares of each side at any position (4-pixel steps), so the square is centred on the
    anomaly rather than on the tile grid (`top` > 1 then takes the next best squares that
    overlap the chosen ones by at most half). `sides`: the square sides (with "peak" only;
    default `default_sides`)."""
    h, w = amap.shape[:2]
    if where not in ("tile", "peak"):
        raise ValueError(f"The 'where' option must be 'tile' or 'peak'. Got {where!r} instead.")
    out: list[list[Box]] = []
    if sides is not None and where != "peak":
        raise ValueError("The 'sides' option needs where='peak' (tiles have the geometry's).")
    if sides is None and where == "peak":
        sides = default_sides(geometry)
    for side in dict.fromkeys(min(int(t), w, h) for t in (sides or geometry.tiles)):
        if where == "tile":
            cands = [b for b in geometry.boxes(w, h) if b[2] == side]
        else:
            step = 4
            cands = [(x, y, side, side) for y in range(0, h - side + 1, step)
                     for x in range(0, w - side + 1, step)]
        scores = tile_anomaly(amap, cands)
        chosen: list[Box] = []
        for i in np.argsort(-scores, kind="stable"):
            b = cands[int(i)]
            if all(_overlap_area(b, c) <= side * side // 2 for c in chosen):
                chosen.append(b)
            if len(chosen) >= max(1, top):
                break
        out.append(chosen)
    return out


def default_sides(geometry: Geometry) -> list[int]:
    """Square sides the anomaly weighting looks at: the geometry's tiles and half the finest
    (at least 8 px): the defect-kind protocol of benchmarks/retrieval.py ranks the half-tile
    square first (small defects fill it; the mean anomaly picks the tightest square)."""
    half = geometry.tiles[-1] // 2
    return list(geometry.tiles) + ([half] if half >= 8 else [])


def most_anomalous_box(amap: np.ndarray, geometry: Geometry) -> Box:
    """The single square (of `default_sides`, any position) with the highest mean anomaly."""
    flat = [b for boxes in anomaly_boxes(amap, geometry) for b in boxes]
    return flat[int(np.argmax(tile_anomaly(amap, flat)))]


def _overlap_area(a: Box, b: Box) -> int:
    return (max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
            * max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])))


def anomaly_vector(
    encoder: Encoder, pixels: np.ndarray, amap: np.ndarray, geometry: Geometry, *, top: int = 1,
    where: str = "peak", scales: str = "best", sides: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[Box]]:
    """An image's vector weighted toward what differs from normal: its most anomalous
    squares (`anomaly_boxes`; anomaly = the mean of `amap`, the anomaly model's map at the
    image's size, inside each square), embedded as tiles are (`tile_vectors`).

    `scales` "each": one part per tile side of `geometry` (the mean unit tile vector of its
    `top` squares), the parts concatenated and scaled so the whole is unit length; "best":
    the single most anomalous square over all sides (its unit tile vector). Returns
    (vector, the boxes used). Images of one defect kind then meet on the defect rather than
    on the background around it.
    """
    h, w = pixels.shape[:2]
    if tuple(amap.shape[:2]) != (h, w):
        msg = f"The anomaly map is {amap.shape[1]}x{amap.shape[0]}; the image is {w}x{h}."
        raise ValueError(msg)
    per_scale = anomaly_boxes(amap, geometry, top=top, where=where, sides=sides)
    if scales == "best":
        flat = [b for boxes in per_scale for b in boxes]
        best = flat[int(np.argmax(tile_anomaly(amap, flat)))]
        return _unit(embed_tiles(encoder, pixels, [best]))[0].astype(np.float32), [best]
    if scales != "each":
        raise ValueError(f"The 'scales' option must be 'each' or 'best'. Got {scales!r} instead.")
    parts, used = [], []
    for boxes in per_scale:
        v = _unit(embed_tiles(encoder, pixels, boxes)).mean(0)
        parts.append(v / max(float(np.linalg.norm(v)), 1e-12))
        used += boxes
    return (np.concatenate(parts) / np.sqrt(len(parts))).astype(np.float32), used


def square_around(box: Box, width: int, height: int) -> Box:
    """The square of side max(w, h) centred on `box`, moved (and shrunk) to fit the image."""
    x, y, w, h = box
    side = min(max(w, h), width, height)
    cx, cy = x + w / 2, y + h / 2
    sx = int(round(min(max(cx - side / 2, 0), width - side)))
    sy = int(round(min(max(cy - side / 2, 0), height - side)))
    return sx, sy, side, side


def query_squares(box: Box, width: int, height: int, geometry: Geometry) -> list[Box]:
    """The squares a region query is embedded at, so that it meets tiles at their own scale:
    the box itself made square; for each tile side larger than the box, the box with context
    up to that side; for each tile side smaller, that square at the box's centre.
    Duplicates dropped."""
    x, y, w, h = box
    out = [square_around(box, width, height)]
    for t in geometry.tiles:
        sq = square_around((x + (w - t) // 2, y + (h - t) // 2, t, t), width, height)
        if sq not in out:
            out.append(sq)
    return out


def check_box(box: Sequence[int], width: int, height: int, *, name: str = "query") -> Box:
    """Validate a box (x, y, w, h) against an image's size; a ValueError naming it if bad."""
    if len(box) != 4:
        msg = f"A box is X,Y,W,H (4 integers). Got {list(box)} instead."
        raise ValueError(msg)
    x, y, w, h = (int(v) for v in box)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        msg = (f"The box {x},{y},{w},{h} does not fit inside {name} ({width}x{height}): "
               "x, y >= 0, w, h >= 1, x + w <= width, y + h <= height.")
        raise ValueError(msg)
    return x, y, w, h


def _embed_rows(
    encoder: Encoder, geometry: Geometry, rows: Sequence[ImageRow], *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Local vectors and their ids for catalog rows; files that no longer decode are skipped."""
    vecs, ids = [], []
    for i, r in enumerate(rows):
        try:
            px = decode_file(from_catalog(r.path), mode=encoder.mode).pixels
        except DecodeError as e:
            log.warning("local vectors: skipped %s", e)
            continue
        boxes = geometry.boxes(px.shape[1], px.shape[0])
        vecs.append(embed_tiles(encoder, px, boxes))
        ids.append(local_ids(r.id, len(boxes)))
        if progress and (i + 1) % 200 == 0:
            log.info("local vectors: %d/%d images", i + 1, len(rows))
    if not vecs:
        return np.zeros((0, tile_dim(encoder)), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vecs), np.concatenate(ids)


def build_local(
    home: Home, model: ModelRow, encoder: Encoder, *, progress: bool = False
) -> LocalIndex:
    """Tile and embed every catalog image, write the local store; the caller holds the lock."""
    rows = home.catalog.images()
    geometry = choose_geometry([(r.width, r.height) for r in rows if r.width and r.height],
                               encoder.image_size)
    vecs, ids = _embed_rows(encoder, geometry, rows, progress=progress)
    store = FaissStore(tile_dim(encoder), "Flat", metric="cosine")
    center = vecs.mean(0) if len(ids) else None
    local = LocalIndex(store=store, geometry=geometry, model_sha256=model.checkpoint_sha256,
                       center=center, split=encoder.embed_dim)
    if len(ids):
        local.add(ids, vecs)
    local.save(home, model)
    home.catalog.update_model_metrics(model.id, {"local_geometry": geometry.as_dict()})
    log.info("local vectors of %s: %d tiles of %d images, tiles %s px",
             model.name, store.ntotal, len(rows), list(geometry.tiles))
    if has_anomaly(home, model):  # rebuilt with the tiles, under the scanning model it had
        scan = load_anomaly(home, model).scan_model
        if scan:
            build_anomaly(home, model, encoder, scan)
    return local


def sync_local(home: Home, model: ModelRow, encoder: Encoder) -> int:
    """Add the tiles of catalog images the local store lacks, drop those of deleted ones.

    Nothing happens for a model without local vectors. Returns the vectors added.
    The model's anomaly-weighted vectors, if any, are brought in step too (`sync_anomaly`).
    """
    sync_anomaly(home, model, encoder)
    if not has_local(home, model):
        return 0
    local = load_local(home, model)
    catalog_ids = np.asarray(home.catalog.image_ids(), dtype=np.int64)
    present = local.store.ids()
    have = np.unique(image_of(present))
    gone = present[~np.isin(image_of(present), catalog_ids)]
    if gone.size:
        local.store.remove(gone)
    missing = np.setdiff1d(catalog_ids, have)
    added = 0
    if missing.size:
        vecs, ids = _embed_rows(encoder, local.geometry,
                                home.catalog.images(ids=missing.tolist()))
        if len(ids):
            local.add(ids, vecs)
        added = len(ids)
    if gone.size or missing.size:
        local.save(home, model)
    return added


def remove_local(home: Home, model: ModelRow, image_ids: Sequence[int]) -> int:
    """Remove the tiles of these images from the local store; returns the vectors removed.
    Their anomaly-weighted vectors, if any, go too (`remove_anomaly`)."""
    remove_anomaly(home, model, image_ids)
    if not has_local(home, model):
        return 0
    local = load_local(home, model)
    present = local.store.ids()
    gone = present[np.isin(image_of(present), np.asarray(list(image_ids), dtype=np.int64))]
    if not gone.size:
        return 0
    n = local.store.remove(gone)
    local.save(home, model)
    return int(n)


def local_status(home: Home, model: ModelRow) -> dict[str, object]:
    """Whether a model has local vectors and how they compare with the catalog."""
    if not has_local(home, model):
        return {"local": False}
    local = load_local(home, model)
    catalog_ids = np.asarray(home.catalog.image_ids(), dtype=np.int64)
    have = np.unique(image_of(local.store.ids()))
    stale = (local.model_sha256 is not None and local.model_sha256 != model.checkpoint_sha256)
    return {"local": True, "local_ntotal": local.store.ntotal,
            "local_missing": int(np.setdiff1d(catalog_ids, have).size),
            "local_extra": int(np.setdiff1d(have, catalog_ids).size),
            "local_stale_model": bool(stale)}


def search_tiles(
    local: LocalIndex, vector: np.ndarray, k: int,
    sizes_of: Callable[[list[int]], dict[int, tuple[int, int]]],
    *, allowed_images: np.ndarray | None = None,
) -> list[tuple[int, float, Box]]:
    """Best-matching images for query vectors (q, D) of one region, e.g. at several scales:
    (image id, score, box), best first.

    Each image counts once, with its best tile over all the query vectors. `sizes_of(ids)` gives the
    catalog (width, height) of image ids; ids it leaves out (deleted since)
    are skipped.
    """
    store = local.store
    if store.ntotal == 0:
        return []
    present = store.ids()
    allowed = None
    if allowed_images is not None:
        allowed = present[np.isin(image_of(present), allowed_images)]
        if not allowed.size:
            return []
    per_image = -(-store.ntotal // max(1, np.unique(image_of(present)).size))  # ceil
    fetch = min(store.ntotal, max(4 * k * per_image, 256))
    while True:
        scores, ids = store.search(local.centered(vector), fetch, allowed_ids=allowed)
        img_of = np.where(ids >= 0, ids >> TILE_BITS, -1)  # (q, fetch)
        cand = [int(i) for i in np.unique(img_of) if i >= 0]
        sizes = sizes_of(cand)
        cand = [i for i in cand if i in sizes]
        if len(cand) >= k or fetch >= store.ntotal:
            break
        fetch = min(store.ntotal, fetch * 4)
    # an image's score: the mean over the query squares of its best tile for each (a tile
    # below the fetched ones counts as the lowest fetched score), so the image that matches
    # the region at every scale beats one that matches a single scale by chance
    floor = np.where(np.isfinite(scores[:, -1]), scores[:, -1], -1.0)  # (q,)
    per = {i: floor.astype(np.float64) for i in cand}
    tile = {i: [-1] * len(scores) for i in cand}
    for j in range(len(scores)):
        for sc, lid, img in zip(scores[j], ids[j], img_of[j], strict=True):
            img = int(img)
            if img in per and tile[img][j] < 0:  # results are best first
                per[img][j], tile[img][j] = float(sc), int(lid) & ((1 << TILE_BITS) - 1)
    ranked = sorted(cand, key=lambda i: -float(per[i].mean()))
    out = []
    for img in ranked[:k]:
        boxes = local.geometry.boxes(*sizes[img])
        t = tile[img][int(np.argmax(per[img]))]
        if 0 <= t < len(boxes):
            out.append((img, float(per[img].mean()), boxes[t]))
    return out


# ---- anomaly-weighted whole-image vectors (issue 14, item 2) ----------------------------------

ANOMALY_HINT = "Run: latentsight index build --anomaly SCAN_MODEL"


def anomaly_paths(home: Home, model: ModelRow) -> tuple[Path, Path]:
    """(faiss file, JSON) of a model's anomaly-weighted vectors."""
    return _files(home, model, "anomaly")


def has_anomaly(home: Home, model: ModelRow) -> bool:
    return _both_exist(anomaly_paths(home, model))


@dataclass
class AnomalyIndex:
    """One vector per catalog image (id = image id): `anomaly_vector` of the image under
    the scanning model `scan_model`'s anomaly map, and the square it describes (`boxes`)."""

    store: FaissStore
    geometry: Geometry
    scan_model: str  # name of the scanning model ("" when built from a scorer object)
    model_sha256: str | None
    scan_sha256: str | None
    boxes: dict[int, Box]
    center: np.ndarray | None = None  # mean anomaly-weighted vector at build time
    split: int | None = None  # where the learned part ends and the pixel part begins

    def centered(self, vectors: np.ndarray) -> np.ndarray:
        """As `LocalIndex.centered`: minus the catalog's mean anomaly-weighted vector (what
        every defect square shares: the cell's texture, the encoder's common direction),
        each part then unit length. Measured on the defect-kind protocol of
        benchmarks/retrieval.py: macro P@10 0.54 uncentred -> 0.60-0.63 centred."""
        return center_parts(vectors, self.center, self.split)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.store.add(ids, self.centered(vectors))

    def fresh_for(self, model: ModelRow) -> bool:
        """Built from `model`'s current checkpoint (or recorded before digests were kept)."""
        return self.model_sha256 in (None, model.checkpoint_sha256)

    def fits(self, model: ModelRow, scan_model: str | object) -> bool:
        """Built from `model`'s checkpoint under `scan_model` (a name; any scorer object
        matches vectors built from one)."""
        want = scan_model if isinstance(scan_model, str) else ""
        return self.scan_model == want and self.fresh_for(model)

    def save(self, home: Home, model: ModelRow) -> None:
        store_path, meta_path = anomaly_paths(home, model)
        store_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT_VERSION, "geometry": self.geometry.as_dict(),
               "scan_model": self.scan_model, "model_sha256": self.model_sha256,
               "scan_sha256": self.scan_sha256, "dim": self.store.dim,
               "boxes": {str(i): list(b) for i, b in self.boxes.items()},
               "center": None if self.center is None else [float(c) for c in self.center],
               "split": self.split}
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(doc)))
        self.store.save(store_path)


def load_anomaly(home: Home, model: ModelRow) -> AnomalyIndex:
    """A model's anomaly-weighted vectors; a StoreError saying how to add them if none."""
    store_path, meta_path = anomaly_paths(home, model)
    if not has_anomaly(home, model):
        msg = f"The index of model {model.name!r} has no anomaly-weighted vectors. {ANOMALY_HINT}"
        raise StoreError(msg)
    try:
        doc = json.loads(meta_path.read_text())
        geometry = Geometry.from_dict(doc["geometry"])
        boxes = {int(i): tuple(int(v) for v in b) for i, b in doc["boxes"].items()}
        center = np.asarray(doc["center"], np.float32) if doc.get("center") else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = f"{meta_path}: unreadable anomaly-weighted vector metadata ({e}). {ANOMALY_HINT}"
        raise StoreError(msg) from e
    store = FaissStore.load(store_path, spec="Flat", metric="cosine")
    return AnomalyIndex(store=store, geometry=geometry, scan_model=str(doc.get("scan_model", "")),
                        model_sha256=doc.get("model_sha256"),
                        scan_sha256=doc.get("scan_sha256"), boxes=boxes,  # type: ignore[arg-type]
                        center=center, split=doc.get("split"))


def _scan_scorer(home: Home, scan_model: str) -> tuple[object, str | None]:
    """The fitted scorer of a scanning model and its checkpoint digest (as
    `manager.load_scorer`, which imports this module, so not called from here)."""
    from latentsight.embedder.errors import ModelError
    from latentsight.embedder.scorer_files import load_scorer_files

    row = home.catalog.model(scan_model)
    state = (row.metrics or {}).get("scoring")
    if not state:
        msg = (f"Model {row.name!r} has no anomaly calibration. Train one on normal images: "
               "latentsight train --normal-label LABEL")
        raise ModelError(msg)
    directory = home.resolve(row.checkpoint_path)
    encoder = Encoder.from_checkpoint(directory, device="cpu",
                                      expected_sha256=row.checkpoint_sha256)
    return load_scorer_files(directory, encoder, state, name=row.name), row.checkpoint_sha256


def _anomaly_rows(
    encoder: Encoder, scorer: object, geometry: Geometry, rows: Sequence[ImageRow]
) -> tuple[np.ndarray, np.ndarray, dict[int, Box]]:
    """Anomaly-weighted vectors, ids and boxes of catalog rows; undecodable files skipped."""
    vecs, ids, boxes = [], [], {}
    for r in rows:
        try:
            px = decode_file(from_catalog(r.path), mode=encoder.mode).pixels
        except DecodeError as e:
            log.warning("anomaly-weighted vectors: skipped %s", e)
            continue
        amap = np.asarray(scorer.anomaly_map([px])[0], dtype=np.float64)  # type: ignore[attr-defined]
        v, used = anomaly_vector(encoder, px, amap, geometry)
        vecs.append(v)
        ids.append(r.id)
        boxes[int(r.id)] = tuple(int(c) for c in used[0])
    if not vecs:
        return np.zeros((0, tile_dim(encoder)), np.float32), np.zeros(0, np.int64), boxes
    return np.stack(vecs).astype(np.float32), np.asarray(ids, np.int64), boxes  # type: ignore[return-value]


def anomaly_index(
    home: Home, model: ModelRow, encoder: Encoder, scan_model: str | object,
    rows: Sequence[ImageRow] | None = None,
) -> AnomalyIndex:
    """The anomaly-weighted vectors of `rows` (default: every catalog image) in memory,
    centred on their mean; the geometry comes from the whole catalog. See build_anomaly."""
    if isinstance(scan_model, str):
        scorer, scan_sha = _scan_scorer(home, scan_model)
        name = scan_model
    else:
        scorer, scan_sha, name = scan_model, None, ""
    every = home.catalog.images()
    geometry = choose_geometry([(r.width, r.height) for r in every if r.width and r.height],
                               encoder.image_size)
    vecs, ids, boxes = _anomaly_rows(encoder, scorer, geometry, every if rows is None else rows)
    store = FaissStore(tile_dim(encoder), "Flat", metric="cosine")
    index = AnomalyIndex(store=store, geometry=geometry, scan_model=name,
                         model_sha256=model.checkpoint_sha256, scan_sha256=scan_sha, boxes=boxes,
                         center=vecs.mean(0) if len(ids) else None, split=encoder.embed_dim)
    if len(ids):
        index.add(ids, vecs)
    return index


def build_anomaly(
    home: Home, model: ModelRow, encoder: Encoder, scan_model: str | object
) -> AnomalyIndex:
    """Index every catalog image by its anomaly-weighted vector (`anomaly_vector`: its most
    anomalous square under the scanning model's map, embedded as a tile is), so that a
    search by anomaly (`Searcher.search(q, anomaly=SCAN_MODEL)`) compares defect with
    defect. `scan_model`: a scanning model's name (`latentsight train --normal-label`) or
    a fitted scorer object (then recorded as ""). The caller holds the write lock."""
    index = anomaly_index(home, model, encoder, scan_model)
    index.save(home, model)
    log.info("anomaly-weighted vectors of %s under %s: %d images", model.name,
             index.scan_model or "<scorer>", index.store.ntotal)
    return index


def sync_anomaly(home: Home, model: ModelRow, encoder: Encoder) -> int:
    """Add the anomaly-weighted vectors of catalog images the store lacks, drop deleted ones.
    Nothing happens without such a store (or one built from a scorer object: no model to
    reload). Returns the vectors added."""
    if not has_anomaly(home, model):
        return 0
    index = load_anomaly(home, model)
    catalog_ids = np.asarray(home.catalog.image_ids(), dtype=np.int64)
    present = index.store.ids()
    gone = present[~np.isin(present, catalog_ids)]
    if gone.size:
        index.store.remove(gone)
        for i in gone:
            index.boxes.pop(int(i), None)
    missing = np.setdiff1d(catalog_ids, present)
    added = 0
    if missing.size and index.scan_model:
        scorer, _sha = _scan_scorer(home, index.scan_model)
        vecs, ids, boxes = _anomaly_rows(encoder, scorer, index.geometry,
                                         home.catalog.images(ids=missing.tolist()))
        if len(ids):
            index.add(ids, vecs)
            index.boxes.update(boxes)
        added = len(ids)
    elif missing.size:
        log.warning("anomaly-weighted vectors of %s were built from a scorer object: %d new "
                    "image(s) not added. %s", model.name, missing.size, ANOMALY_HINT)
    if gone.size or added:
        index.save(home, model)
    return added


def remove_anomaly(home: Home, model: ModelRow, image_ids: Sequence[int]) -> int:
    """Remove these images' anomaly-weighted vectors; returns the vectors removed."""
    if not has_anomaly(home, model):
        return 0
    index = load_anomaly(home, model)
    present = index.store.ids()
    gone = present[np.isin(present, np.asarray(list(image_ids), dtype=np.int64))]
    if not gone.size:
        return 0
    n = index.store.remove(gone)
    for i in gone:
        index.boxes.pop(int(i), None)
    index.save(home, model)
    return int(n)


__all__ = ["ADD_HINT", "ANOMALY_HINT", "AnomalyIndex", "Geometry", "LocalIndex",
           "anomaly_boxes", "anomaly_index", "anomaly_paths", "anomaly_vector", "build_anomaly",
           "build_local",
           "center_parts", "check_box", "choose_geometry", "default_sides", "embed_tiles",
           "has_anomaly", "has_local", "load_anomaly", "load_local", "local_status",
           "most_anomalous_box", "remove_anomaly", "remove_local", "search_tiles",
           "square_around", "sync_anomaly", "sync_local", "tile_anomaly"]
