"""What the dashboard pages compute, without Streamlit: thumbnails, searches, scans, projections.

Every image is reached through a catalog id (or a scan-result id): the paths
come from the catalog, never from text typed into the dashboard. Only a
folder the user explicitly asks to ingest is read from a typed path.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from latentsight.embedder.errors import CatalogError, DecodeError, LatentsightError
from latentsight.embedder.images import decode_file
from latentsight.index.catalog import ImageRow, ModelRow, ScanResultRow, ScanRow
from latentsight.index.home import Home
from latentsight.index.paths import from_catalog
from latentsight.index.search import Hit, Searcher
from PIL import Image
from sqlalchemy import select

THUMB_SIZE = 128  # px, longest side of a cached thumbnail
MAX_UPLOAD_MB = 10  # an upload above this is refused before decoding
SAMPLE_ABOVE = 100_000  # the latent map samples catalogs larger than this
TSNE_MAX = 5_000  # t-SNE is quadratic-ish: it runs on at most this many points
HOVER_IMAGES_MAX = 3_000  # above this many points the tooltips carry no thumbnail


# ---- what the home holds ------------------------------------------------------------------


@dataclass
class HomeState:
    """Enough to tell a page what to run first."""

    root: str
    images: int
    model: str | None  # the active encoder, if any
    indexed: bool  # the active encoder has an index

    def first_step(self) -> str | None:
        """The command to run next, or None when search works."""
        h = f"--home {self.root}"
        if self.images == 0:
            return (f"The catalog is empty. Run: `latentsight ingest DIR --labels-from-folders "
                    f"{h}` (or `latentsight demo {h}` for a ready-made example).")
        if self.model is None:
            return f"No model trained yet. Run: `latentsight train {h}`."
        if not self.indexed:
            return f"Model {self.model!r} has no index yet. Run: `latentsight index build {h}`."
        return None


def home_state(home: Home) -> HomeState:
    cat = home.catalog
    try:
        model = cat.model()
    except CatalogError:
        model = None
    indexed = False
    if model is not None:
        row = cat.index_for(model.id)
        indexed = row is not None and home.resolve(row.path).is_file()
    return HomeState(root=str(home.root), images=cat.count_images(),
                     model=model.name if model else None, indexed=indexed)


def index_generation(home: Home, model: ModelRow) -> tuple[int, str]:
    """(generation, built_at) of the model's index: a cache key that changes on every rebuild."""
    row = home.catalog.index_for(model.id)
    if row is None:
        return 0, ""
    return row.generation, str(row.built_at)


# ---- thumbnails ---------------------------------------------------------------------------


def thumbs_dir(home: Home) -> Path:
    d = home.root / "thumbs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def make_thumbnail(pixels: np.ndarray, size: int = THUMB_SIZE) -> Image.Image:
    """A decoded uint8 (H, W[, 3]) array -> an RGB thumbnail; tiny images are upscaled crisply."""
    img = Image.fromarray(pixels).convert("RGB")
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BOX
    return img.resize(new, resample)


def _write_png(img: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def thumbnail(home: Home, image_id: int) -> Path | None:
    """The cached thumbnail of a catalog image (made on first use); None if it cannot be read."""
    path = thumbs_dir(home) / f"{int(image_id)}.png"
    if path.is_file():
        return path
    try:
        row = home.catalog.image(int(image_id))
        img = decode_file(from_catalog(row.path), mode="RGB")  # stored form -> path (paths.py)
    except LatentsightError:
        return None
    except OSError:
        return None
    _write_png(make_thumbnail(img.pixels), path)
    return path


def scan_thumbnail(home: Home, result_id: int) -> Path | None:
    """The cached thumbnail of a scanned file, reached by its scan-result id."""
    path = thumbs_dir(home) / f"scan-{int(result_id)}.png"
    if path.is_file():
        return path
    row = scan_result(home, result_id)
    if row is None:
        return None
    try:
        img = decode_file(from_catalog(row.path), mode="RGB")
    except (LatentsightError, OSError):
        return None
    _write_png(make_thumbnail(img.pixels), path)
    return path


# ---- search -------------------------------------------------------------------------------


def decode_upload(data: bytes, name: str, *, max_mb: int = MAX_UPLOAD_MB) -> np.ndarray:
    """Check and decode an uploaded file; raises DecodeError naming the upload and the reason."""
    if len(data) > max_mb * 1024 * 1024:
        mb = len(data) / 1024 / 1024
        raise DecodeError(name, f"upload of {mb:.1f} MB is over the {max_mb} MB limit")
    from latentsight.embedder.probe import ProbePool, Upload

    global _upload_pool
    if _upload_pool is None:  # one worker for the server's uploads, with the decoding limits
        _upload_pool = ProbePool(1)
    pr = _upload_pool.probe_one(Upload(name, data), (0, 3))  # native size, RGB
    if pr.error is not None:
        raise DecodeError(name, pr.error)
    return pr.pixels


_upload_pool: Any = None


def search(
    searcher: Searcher,
    query: int | bytes,
    *,
    k: int = 10,
    labels: Sequence[str] = (),
    sources: Sequence[str] = (),
    synthetic: bool | None = None,
) -> list[Hit]:
    """Nearest catalog images to a catalog id or uploaded bytes, with filters applied in the index.

    `synthetic` None keeps every image, True only generated ones, False only real ones.
    """
    if not isinstance(query, int | bytes):
        msg = f"A dashboard query is a catalog id or uploaded bytes. Got {type(query).__name__}."
        raise TypeError(msg)
    cat = searcher.home.catalog
    vec = searcher.query_vector(query)
    allowed = None
    if labels or sources or synthetic is not None:
        rows = cat.images(labels=list(labels) or None, sources=list(sources) or None)
        allowed = np.asarray([r.id for r in rows if synthetic is None or r.synthetic == synthetic],
                             dtype=np.int64)
        if allowed.size == 0:
            return []
    scores, ids = searcher.store.search(vec, k, allowed_ids=allowed)
    found = [int(i) for i in ids[0] if i >= 0]
    rows_by_id = {r.id: r for r in cat.images(ids=found)}
    return [
        Hit(id=i, path=rows_by_id[i].path, label=rows_by_id[i].label,
            source=rows_by_id[i].source, score=float(s))
        for s, i in zip(scores[0].tolist(), ids[0].tolist(), strict=True)
        if i >= 0 and i in rows_by_id
    ]


def to_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode()


def filter_values(home: Home) -> tuple[list[str], list[str]]:
    """The labels and sources present in the catalog, sorted."""
    with home.catalog.session() as s:
        labels = s.scalars(select(ImageRow.label).distinct().where(ImageRow.label.is_not(None)))
        labels = sorted(labels)
        sources = sorted(s.scalars(select(ImageRow.source).distinct()))
    return labels, sources


def browse(
    home: Home,
    *,
    labels: Sequence[str] = (),
    sources: Sequence[str] = (),
    synthetic: bool | None = None,
    offset: int = 0,
    limit: int = 24,
) -> tuple[list[ImageRow], int]:
    """One page of catalog images matching the filters, and how many match in all."""
    from sqlalchemy import func

    def where(q):
        if labels:
            q = q.where(ImageRow.label.in_(list(labels)))
        if sources:
            q = q.where(ImageRow.source.in_(list(sources)))
        if synthetic is not None:
            q = q.where(ImageRow.synthetic.is_(synthetic))
        return q

    with home.catalog.session() as s:
        total = int(s.scalar(where(select(func.count(ImageRow.id)))) or 0)
        q = where(select(ImageRow)).order_by(ImageRow.id).offset(offset).limit(limit)
        return list(s.scalars(q)), total


# ---- anomaly scans ------------------------------------------------------------------------


def scans(home: Home) -> list[ScanRow]:
    with home.catalog.session() as s:
        return list(s.scalars(select(ScanRow).order_by(ScanRow.id.desc())))


def scan_results(home: Home, scan_id: int) -> list[ScanResultRow]:
    with home.catalog.session() as s:
        q = select(ScanResultRow).where(ScanResultRow.scan_id == scan_id)
        return list(s.scalars(q.order_by(ScanResultRow.id)))


def scan_result(home: Home, result_id: int) -> ScanResultRow | None:
    with home.catalog.session() as s:
        return s.get(ScanResultRow, int(result_id))


@dataclass
class Flagging:
    """A scan re-flagged at a threshold."""

    threshold: float
    flagged: int
    normal: int
    failed: int
    order: list[int]  # indices into the results of the flagged ones, most anomalous first


def reflag(results: Sequence[ScanResultRow], threshold: float) -> Flagging:
    """Flag every scored result with score > threshold (higher = more anomalous)."""
    scored = [(i, r.score) for i, r in enumerate(results) if r.score is not None]
    flagged = sorted((i for i, s in scored if s > threshold), key=lambda i: -results[i].score)
    return Flagging(threshold=threshold, flagged=len(flagged), normal=len(scored) - len(flagged),
                    failed=len(results) - len(scored), order=flagged)


def scan_csv(results: Sequence[ScanResultRow], threshold: float) -> bytes:
    rows = [
        {"path": r.path, "sha256": r.sha256 or "", "score": "" if r.score is None else r.score,
         "flagged": "" if r.score is None else int(r.score > threshold), "error": r.error or ""}
        for r in results
    ]
    return to_csv(rows, ["path", "sha256", "score", "flagged", "error"])


def heatmap_overlay(encoder: Any, path: str, *, size: int = THUMB_SIZE) -> Image.Image | None:
    """The image with its per-pixel reconstruction error overlaid in red; None when the
    model cannot reconstruct or the file cannot be read."""
    import torch
    from latentsight.embedder.encoder import prepare

    if not hasattr(encoder, "reconstruct_tensor"):
        return None
    try:
        px = decode_file(from_catalog(path), mode=encoder.mode).pixels
        x = torch.from_numpy(prepare(px, encoder.image_size, encoder.channels))[None].float() / 255
        rec = encoder.reconstruct_tensor(x)  # (1, C, S, S)
    except (LatentsightError, OSError, NotImplementedError, AttributeError):
        return None
    err = (x - rec).abs().mean(dim=1)[0].numpy()  # (S, S)
    base = (x[0].mean(dim=0).numpy() * 255).astype(np.uint8)  # (S, S) gray
    return overlay(base, err, size)


# ---- latent map ---------------------------------------------------------------------------


def catalog_vectors(home: Home, searcher: Searcher) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,), vectors (n, d)) of the active model, read back from its index."""
    store = searcher.store
    ids = store.ids()
    inner = getattr(store.index, "index", None)
    try:
        vecs = inner.reconstruct_n(0, store.ntotal)  # flat indexes keep every vector
        return ids, np.asarray(vecs, dtype=np.float32)
    except (RuntimeError, AttributeError):
        pass
    from latentsight.index.manager import embed_catalog_images

    rows = home.catalog.images(ids=ids.tolist())
    vecs, kept = embed_catalog_images(searcher.encoder, [r.id for r in rows],
                                      [r.path for r in rows], progress=False, workers=0)
    return kept, vecs


def project(
    vectors: np.ndarray, *, method: str = "pca", seed: int = 0
) -> np.ndarray:
    """A 2-D projection (n, 2) of the vectors: "pca" or "tsne"."""
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if method == "pca":
        from sklearn.decomposition import PCA

        if n < 2 or vectors.shape[1] < 2:
            return np.zeros((n, 2), np.float32)
        return PCA(n_components=2, random_state=seed).fit_transform(vectors).astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (n - 1) // 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(vectors).astype(np.float32)
    msg = f"The 'method' option must be 'pca' or 'tsne'. Got {method!r} instead."
    raise ValueError(msg)


def sample_ids(ids: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Positions of at most `limit` ids, a uniform sample in id order."""
    if len(ids) <= limit:
        return np.arange(len(ids))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(ids), size=limit, replace=False))


def latest_scores_by_sha(home: Home) -> dict[str, float]:
    """Anomaly score per sha256 from the most recent finished scans (newer wins)."""
    out: dict[str, float] = {}
    with home.catalog.session() as s:
        q = (select(ScanResultRow.sha256, ScanResultRow.score)
             .join(ScanRow, ScanRow.id == ScanResultRow.scan_id)
             .where(ScanResultRow.score.is_not(None), ScanResultRow.sha256.is_not(None))
             .order_by(ScanRow.id))
        for sha, score in s.execute(q):
            out[sha] = float(score)
    return out


# ---- classes ------------------------------------------------------------------------------


def class_table(home: Home, sparse_below: float | None = None) -> list[dict[str, Any]]:
    """Per label: real and synthetic counts and whether the class is sparse.

    A class is sparse when it has fewer real images than `sparse_below`
    (default: half the median count of real images per class).
    """
    from sqlalchemy import func

    with home.catalog.session() as s:
        q = (select(ImageRow.label, ImageRow.synthetic, func.count())
             .where(ImageRow.label.is_not(None)).group_by(ImageRow.label, ImageRow.synthetic))
        counts: dict[str, dict[str, int]] = {}
        for label, synth, n in s.execute(q):
            counts.setdefault(label, {"real": 0, "synthetic": 0})[
                "synthetic" if synth else "real"] += int(n)
    if not counts:
        return []
    if sparse_below is None:
        sparse_below = 0.5 * float(np.median([c["real"] for c in counts.values()]))
    return [
        {"label": lab, "real": c["real"], "synthetic": c["synthetic"],
         "sparse": c["real"] < sparse_below}
        for lab, c in sorted(counts.items())
    ]


def generators(home: Home) -> list[ModelRow]:
    return [m for m in home.catalog.models() if m.role == "generator"]


def synthetic_ids(home: Home, label: str, limit: int = 8) -> list[int]:
    with home.catalog.session() as s:
        q = (select(ImageRow.id).where(ImageRow.synthetic.is_(True), ImageRow.label == label)
             .order_by(ImageRow.id.desc()).limit(limit))
        return list(s.scalars(q))


# ---- status -------------------------------------------------------------------------------


def list_images(folder: str | Path) -> list[Path]:
    """Every file under a folder the user asked to ingest (recursively, sorted)."""
    from latentsight.index.ingest import iter_files

    return [f for f, _root in iter_files([folder])]


def ingest_folder(
    home: Home,
    folder: str | Path,
    *,
    labels_from_folders: bool = False,
    label: str | None = None,
    source: str = "dashboard",
    chunk: int = 128,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Ingest a folder in chunks of files, reporting (done, total) after each chunk."""
    from latentsight.dashboard.access import check_folder
    from latentsight.index.ingest import ingest_paths

    folder = check_folder(home, folder)  # under LATENTSIGHT_DATA_ROOTS (dashboard/access.py)
    if not folder.is_dir():
        raise CatalogError(f"{folder}: not a folder")
    files = list_images(folder)
    total = {"added": 0, "duplicates": 0, "skipped": 0, "indexed": 0, "failed": []}
    for start in range(0, len(files), chunk):
        part = [str(f) for f in files[start : start + chunk]]
        # decoded in a worker process with the per-file limits, as by the CLI; folder labels
        # as `ingest --labels-from-folders` gives them (a non-UTF-8 name becomes \xNN text)
        rep = ingest_paths(home, part, label=None if labels_from_folders else label,
                           labels_from_folders=labels_from_folders, source=source, workers=1,
                           progress=False)
        d = rep.as_dict()
        for key in ("added", "duplicates", "skipped", "indexed"):
            total[key] += d[key]
        total["failed"].extend(d["failed"])
        if on_progress is not None:
            on_progress(min(start + chunk, len(files)), len(files))
    if on_progress is not None and not files:
        on_progress(0, 0)
    return total


def history(model: ModelRow) -> list[dict[str, float]]:
    """The per-epoch training curve stored in a model's metrics (empty when absent)."""
    h = (model.metrics or {}).get("history") or []
    return [e for e in h if isinstance(e, dict) and "epoch" in e]


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics only (the history and nested dicts are shown elsewhere)."""
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, int | float | str | bool) and not (isinstance(v, float)
                                                                and math.isnan(v))}


def data_url(path: Path | None, size: int = 64) -> str | None:
    """A small inline JPEG of a cached thumbnail, for chart tooltips (None when absent)."""
    import base64

    if path is None:
        return None
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ---- the scan API (index/scan.py), when this build has it ---------------------------------


def scan_api() -> Any | None:
    """The `index.scan` module, or None when this build has no anomaly scanning."""
    import importlib

    try:
        mod = importlib.import_module("latentsight.index.scan")
    except ImportError:
        return None
    return mod if hasattr(mod, "scan_paths") else None


def start_scan(
    home: Home,
    folder: str | Path,
    *,
    fpr: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    poll: float = 0.5,
) -> Any:
    """Scan a folder the user chose with the active model; reports (scored, total) while it runs.

    The scan commits its results in small batches, so progress is read from the catalog.
    Returns the scan API's summary. Raises CatalogError without the scan API.
    """
    import threading

    from latentsight.dashboard.access import check_folder
    from latentsight.embedder.images import looks_like_image

    api = scan_api()
    if api is None:
        raise CatalogError("Scanning is not available in this build (no index/scan.py).")
    folder = check_folder(home, folder)  # under LATENTSIGHT_DATA_ROOTS (dashboard/access.py)
    if not folder.is_dir():
        raise CatalogError(f"{folder}: not a folder")
    total = sum(1 for f in list_images(folder) if looks_like_image(f))
    before = max((s.id for s in scans(home)), default=0)
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["summary"] = api.scan_paths(home, [str(folder)], fpr=fpr, progress=False)
        except Exception as e:  # noqa: BLE001 - handed back to the page below
            out["error"] = e

    t = threading.Thread(target=work, name="latentsight-scan", daemon=True)
    t.start()
    while t.is_alive():
        t.join(poll)
        if on_progress is not None:
            new = [s for s in scans(home) if s.id > before]
            done = len(scan_results(home, new[0].id)) if new else 0
            on_progress(min(done, total), total)
    if "error" in out:
        raise out["error"]
    if on_progress is not None:
        on_progress(total, total)
    return out["summary"]


def anomaly_overlay(encoder: Any, scorer: Any, path: str, *,
                    size: int = THUMB_SIZE) -> Image.Image | None:
    """The scan API scorer's per-pixel anomaly map over the image, or None when unavailable."""
    try:
        px = decode_file(from_catalog(path), mode=encoder.mode).pixels
        m = np.asarray(scorer.anomaly_map([px])[0], dtype=np.float32)  # (H, W)
    except (LatentsightError, OSError, ValueError, TypeError, AttributeError):
        return None
    return overlay(px, m, size)


def overlay(pixels: np.ndarray, amap: np.ndarray, size: int = THUMB_SIZE) -> Image.Image:
    """A gray image with a per-pixel map (any scale, same H, W) added in red."""
    gray = pixels.astype(np.float32).mean(axis=-1) if pixels.ndim == 3 else pixels.astype(
        np.float32)
    gray = gray / 255.0  # (H, W)
    m = amap - amap.min()
    m = m / m.max() if m.max() > 0 else m
    rgb = np.stack([gray, gray, gray], axis=-1) * 0.6  # (H, W, 3)
    rgb[..., 0] = np.clip(rgb[..., 0] + m, 0, 1)
    return make_thumbnail((rgb * 255).astype(np.uint8), size)


# ---- the GAN (training/gan/), when this build has it --------------------------------------


def synth_api() -> Any | None:
    """`training.gan.synth` with its `synthesize`, or None when this build has no GAN."""
    import importlib

    try:
        synth = importlib.import_module("latentsight.training.gan.synth")
        train = importlib.import_module("latentsight.training.gan.train")
    except ImportError:
        return None
    if not (hasattr(synth, "synthesize") and hasattr(train, "load_generator")):
        return None
    return synth


def synthesize(home: Home, label: str, n: int, *, device: str = "auto") -> Any:
    """Generate `n` gated images of `label` with the latest generator; returns its report."""
    import importlib

    synth = synth_api()
    if synth is None:
        raise CatalogError("Synthesis is not available in this build (no training/gan/).")
    train = importlib.import_module("latentsight.training.gan.train")
    model, row = train.load_generator(home, None)
    return synth.synthesize(home, model, row, label, n, plausibility="auto", seed=0,
                            device=device, notify=lambda _msg: None)
