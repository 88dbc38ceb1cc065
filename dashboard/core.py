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
from latentsight.dashboard.access import check_folder
from latentsight.embedder.errors import DecodeError, LatentsightError
from latentsight.embedder.images import decode_file, looks_like_image
from latentsight.index import classes
from latentsight.index.catalog import ModelRow, ScanResultRow, ScanRow
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths, iter_files
from latentsight.index.paths import from_catalog
from latentsight.index.scan import load_scorer, scan_paths
from latentsight.index.search import Searcher
from latentsight.training.gan.synth import synthesize as run_synthesis
from latentsight.training.gan.train import load_generator
from PIL import Image

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
        # a FAISS index or a Milvus Lite database is a file; a Milvus server is a URI
        indexed = row is not None and ("://" in row.path or home.resolve(row.path).exists())
    return HomeState(root=str(home.root), images=cat.count_images(),
                     model=model.name if model else None, indexed=indexed)


def index_generation(home: Home, model: ModelRow) -> tuple[int, str]:
    """(generation, built_at) of the model's index: a cache key that changes on every rebuild."""
    row = home.catalog.index_for(model.id)
    if row is None:
        return 0, ""
    return row.generation, str(row.built_at)


# ---- thumbnails ---------------------------------------------------------------------------


_THUMB_DIRS: set[Path] = set()  # made already in this process: no mkdir per card per rerun


def thumbs_dir(home: Home) -> Path:
    d = home.root / "thumbs"
    if d not in _THUMB_DIRS or not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        _THUMB_DIRS.add(d)
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
    row = home.catalog.scan_result(result_id)
    if row is None:
        return None
    try:
        img = decode_file(from_catalog(row.path), mode="RGB")
    except (LatentsightError, OSError):
        return None
    _write_png(make_thumbnail(img.pixels), path)
    return path


# ---- search -------------------------------------------------------------------------------

SYNTHETIC_CHOICES = ("real only", "all", "synthetic only")  # the default first, as in the CLI


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


def search_options(labels: Sequence[str] = (), sources: Sequence[str] = (),
                   synthetic: str = SYNTHETIC_CHOICES[0]) -> dict[str, Any]:
    """The page's filters as `Searcher.search` keyword arguments (empty = no filter)."""
    if synthetic not in SYNTHETIC_CHOICES:
        msg = f"synthetic must be one of {SYNTHETIC_CHOICES}. Got {synthetic!r} instead."
        raise ValueError(msg)
    return {"label": list(labels) or None, "source": list(sources) or None,
            "include_synthetic": synthetic != "real only",
            "synthetic": True if synthetic == "synthetic only" else None}


def synthetic_flag(choice: str) -> bool | None:
    """A synthetic choice as a catalog filter: False real only, True synthetic only, None all."""
    return {"real only": False, "all": None, "synthetic only": True}[choice]


def search_hits(searcher: Searcher, query: Any, *, k: int, tags: Sequence[str] = (),
                box: tuple[int, int, int, int] | None = None, **options: Any) -> list[Any]:
    """`Searcher.search`, keeping only images with any of `tags` (when given).

    The vector search filters by label, source and synthetic itself; tags live in the
    catalog only, so a tagged search asks for more hits (4k, then doubling) and keeps the
    tagged ones until it has k or has seen the whole index.
    """
    if not tags:
        return searcher.search(query, k=k, box=box, **options)
    tagged = searcher.home.catalog.tagged_ids(tags)
    if not tagged:
        return []
    total = searcher.home.catalog.count_images()
    want = max(4 * k, 50)
    while True:
        hits = searcher.search(query, k=min(want, total), box=box, **options)
        kept = [h for h in hits if h.id in tagged]
        if len(kept) >= k or want >= total or len(hits) < min(want, total):
            return kept[:k]
        want *= 2


def default_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centre quarter of an image: where a region box starts before the analyst moves it."""
    w, h = max(1, width // 2), max(1, height // 2)
    return (width - w) // 2, (height - h) // 2, w, h


def clamp_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A drawn box (x0, y0, x1, y1 in pixel coordinates, any order) -> (x, y, w, h) inside
    the image, at least one pixel."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    x = int(min(max(0, math.floor(x0 + 0.5)), width - 1))
    y = int(min(max(0, math.floor(y0 + 0.5)), height - 1))
    w = int(max(1, min(width - x, math.floor(x1 + 0.5) - x)))
    h = int(max(1, min(height - y, math.floor(y1 + 0.5) - y)))
    return x, y, w, h


def boxed(pixels: np.ndarray, box: Sequence[int], size: int = THUMB_SIZE,
          colour: tuple[int, int, int] = (255, 40, 40)) -> Image.Image:
    """A thumbnail of decoded pixels with the region box (x, y, w, h) outlined."""
    from PIL import ImageDraw

    img = make_thumbnail(pixels, size)
    sx, sy = img.width / pixels.shape[1], img.height / pixels.shape[0]
    x, y, w, h = box
    ImageDraw.Draw(img).rectangle([x * sx, y * sy, (x + w) * sx - 1, (y + h) * sy - 1],
                                  outline=colour, width=2)
    return img


def boxed_file(path: str, box: Sequence[int], size: int = THUMB_SIZE) -> Image.Image | None:
    """A catalog file's thumbnail with its matching region outlined; None when unreadable."""
    try:
        px = decode_file(from_catalog(path), mode="RGB").pixels
    except (LatentsightError, OSError):
        return None
    return boxed(px, box, size)


def png_data_uri(pixels: np.ndarray) -> str:
    """Decoded pixels as a PNG data URI (how the region picker draws the image)."""
    import base64

    buf = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def to_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode()


# ---- anomaly scans ------------------------------------------------------------------------


def default_scan(home: Home, scans: Sequence[ScanRow]) -> ScanRow | None:
    """The newest scan that scored at least one image (else the newest scan)."""
    for s in scans:
        if s.n_images > 0 or (s.status == "running" and home.catalog.count_scan_results(s.id)):
            return s
    return scans[0] if scans else None


@dataclass
class Flagging:
    """A scan re-flagged at a threshold."""

    threshold: float
    flagged: int
    normal: int
    failed: int
    order: list[int]  # indices into the results of the flagged ones, most anomalous first
    unflagged: list[int]  # indices of the scored, unflagged ones, most anomalous first


def reflag(results: Sequence[ScanResultRow], threshold: float) -> Flagging:
    """Flag every scored result with score > threshold (higher = more anomalous)."""
    scored = sorted(((i, r.score) for i, r in enumerate(results) if r.score is not None),
                    key=lambda t: -t[1])
    flagged = [i for i, s in scored if s > threshold]
    rest = [i for i, s in scored if not s > threshold]
    return Flagging(threshold=threshold, flagged=len(flagged), normal=len(rest),
                    failed=len(results) - len(scored), order=flagged, unflagged=rest)


def threshold_range(scores: Sequence[float], threshold: float) -> tuple[float, float, float]:
    """(low, high, step) of a threshold slider that holds every score and the scan's threshold.

    The scan's own threshold is never clamped, so the page's counts are the scan's.
    """
    lo, hi = min(min(scores), threshold), max(max(scores), threshold)
    step = (hi - lo) / 200 if hi > lo else 1.0
    return float(lo - step), float(hi + step), float(step)


REVIEW_LABELS = {"defect": "defect", "false_alarm": "false alarm", "missed": "missed"}


def scan_csv(results: Sequence[ScanResultRow], threshold: float,
             reviews: dict[int, Any] | None = None) -> bytes:
    """The scan as CSV: path, sha256, score, flagged, error, and each analyst review."""
    reviews = reviews or {}
    rows = []
    for r in results:
        rev = reviews.get(r.id)
        rows.append({
            "path": r.path, "sha256": r.sha256 or "", "score": "" if r.score is None else r.score,
            "flagged": "" if r.score is None else int(r.score > threshold),
            "error": r.error or "", "review": rev.mark if rev else "",
            "reviewer": rev.reviewer if rev else "",
            "reviewed_at": rev.at.isoformat() if rev and rev.at else ""})
    return to_csv(rows, ["path", "sha256", "score", "flagged", "error", "review", "reviewer",
                         "reviewed_at"])


def calibrated_models(home: Home) -> list[ModelRow]:
    """Encoders with a fitted anomaly scorer (what a scan or a plausibility gate can use)."""
    return [m for m in home.catalog.models()
            if m.role == "encoder" and (m.metrics or {}).get("scoring")]


def heatmap_overlay(encoder: Any, path: str, *, size: int = THUMB_SIZE,
                    opacity: float = 1.0) -> Image.Image | None:
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
    return overlay(base, err, size, opacity=opacity)


# ---- latent map ---------------------------------------------------------------------------


def catalog_vectors(searcher: Searcher) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,), vectors (n, d)) of the searcher's model, read back from its store."""
    ids = np.sort(searcher.store.ids())
    return ids, searcher.store.vectors(ids)


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
    return {sha: hit[0] for sha, hit in home.catalog.latest_scores().items()}


def palette(n: int) -> list[str]:
    """n distinct colours: plotly's 24 + 26 qualitative ones, then evenly spaced hues."""
    import colorsys

    import plotly.express as px

    base = list(dict.fromkeys(px.colors.qualitative.Dark24 + px.colors.qualitative.Alphabet))
    if n <= len(base):
        return base[:n]
    extra = []
    for i in range(n - len(base)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.85)
        extra.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return base + extra


def selected_ids(selection: Any) -> list[int]:
    """Catalog ids of the points a plotly selection event holds (box, lasso or click)."""
    if not selection:
        return []
    points = selection.get("points", []) if isinstance(selection, dict) else getattr(
        selection, "points", [])
    out = []
    for p in points or []:
        cd = p.get("customdata")
        if cd is None:
            continue
        if isinstance(cd, dict):  # a base64-encoded array: the map sends plain lists instead
            continue
        out.append(int(cd[0] if isinstance(cd, list | tuple) else cd))
    return list(dict.fromkeys(out))


# ---- classes ------------------------------------------------------------------------------


def class_table(home: Home, sparse_below: float | None = None) -> list[dict[str, Any]]:
    """Per label: real and synthetic counts and whether the class is sparse.

    The rule of `latentsight classes` (index/classes.py): sparse when it has fewer real
    images than `sparse_below` (default: half the median real count per label).
    """
    return classes.class_table(home.catalog, sparse_below=sparse_below).rows


def generators(home: Home) -> list[ModelRow]:
    return [m for m in home.catalog.models() if m.role == "generator"]


def synthetic_ids(home: Home, label: str, limit: int = 8) -> list[int]:
    rows, _ = home.catalog.page(labels=[label], synthetic=True, limit=limit, newest_first=True)
    return [r.id for r in rows]


# ---- status -------------------------------------------------------------------------------


def server_folder(text: str, what: str = "folder") -> Path:
    """A folder typed into the dashboard: absolute, existing, a directory (else CatalogError).

    A relative path would resolve against the server's working directory, which the
    analyst cannot see, so it is refused.
    """
    text = (text or "").strip()
    if not text:
        raise CatalogError(f"Type the {what}'s path on the server first.")
    folder = Path(text).expanduser()
    if not folder.is_absolute():
        raise CatalogError(f"{text}: a relative path; give the {what}'s absolute path on the "
                           "server (relative paths would resolve against the server's working "
                           "directory).")
    if not folder.is_dir():
        raise CatalogError(f"{folder}: not a folder")
    return folder


def list_images(folder: str | Path) -> list[Path]:
    """Every file under a folder the user asked to ingest (recursively, sorted)."""
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
    # absolute, a folder, and under LATENTSIGHT_DATA_ROOTS (dashboard/access.py)
    folder = check_folder(home, server_folder(str(folder)))
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


# ---- scanning (index/scan.py) -------------------------------------------------------------


def start_scan(
    home: Home,
    folder: str | Path,
    *,
    model: str | None = None,
    fpr: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    poll: float = 0.5,
) -> Any:
    """Scan a folder the user chose with a calibrated model; reports (scored, total) while it
    runs. The scan commits its results in small batches, so progress is read from the catalog.
    Returns the scan's summary.
    """
    import threading

    # absolute, a folder, and under LATENTSIGHT_DATA_ROOTS (dashboard/access.py)
    folder = check_folder(home, server_folder(str(folder)))
    total = sum(1 for f in list_images(folder) if looks_like_image(f))
    before = max((s.id for s in home.catalog.scans(limit=1)), default=0)
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["summary"] = scan_paths(home, [str(folder)], model=model, fpr=fpr,
                                        progress=False)
        except Exception as e:  # noqa: BLE001 - handed back to the page below
            out["error"] = e

    t = threading.Thread(target=work, name="latentsight-scan", daemon=True)
    t.start()
    while t.is_alive():
        t.join(poll)
        if on_progress is not None:
            new = [s for s in home.catalog.scans(limit=1) if s.id > before]
            done = home.catalog.count_scan_results(new[0].id) if new else 0
            on_progress(min(done, total), total)
    if "error" in out:
        raise out["error"]
    if on_progress is not None:
        on_progress(total, total)
    return out["summary"]


def anomaly_overlay(encoder: Any, scorer: Any, path: str, *, size: int = THUMB_SIZE,
                    opacity: float = 1.0) -> Image.Image | None:
    """The scorer's per-pixel anomaly map over the image, or None when unavailable."""
    try:
        px = decode_file(from_catalog(path), mode=encoder.mode).pixels
        m = np.asarray(scorer.anomaly_map([px])[0], dtype=np.float32)  # (H, W)
    except (LatentsightError, OSError, ValueError, TypeError, AttributeError):
        return None
    return overlay(px, m, size, opacity=opacity)


def overlay(pixels: np.ndarray, amap: np.ndarray, size: int = THUMB_SIZE, *,
            opacity: float = 1.0) -> Image.Image:
    """A gray image with a per-pixel map (any scale, same H, W) added in red at `opacity`."""
    gray = pixels.astype(np.float32).mean(axis=-1) if pixels.ndim == 3 else pixels.astype(
        np.float32)
    gray = gray / 255.0  # (H, W)
    m = amap - amap.min()
    m = m / m.max() if m.max() > 0 else m
    o = float(np.clip(opacity, 0.0, 1.0))
    rgb = np.stack([gray, gray, gray], axis=-1) * (1.0 - 0.4 * o)  # (H, W, 3)
    rgb[..., 0] = np.clip(rgb[..., 0] + o * m, 0, 1)
    return make_thumbnail((rgb * 255).astype(np.uint8), size)


# ---- the GAN (training/gan/) --------------------------------------------------------------


def gan_classes(home: Home, gan: str) -> list[str]:
    """The classes the generator `gan` was trained on (what it can be asked for)."""
    model, _row = load_generator(home, gan)
    return list(model.config.classes)


def plausibility_gate(home: Home, model: str, device: str = "cpu") -> Any:
    """The anomaly scorer of the calibrated model `model` as a synthesis gate (True = reject)."""
    import torch

    _encoder, scorer = load_scorer(home, home.catalog.model(model), device)

    def gate(images: torch.Tensor) -> np.ndarray:
        px = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (N, C, S, S)
        arrays = [p[0] if p.shape[0] == 1 else p.transpose(1, 2, 0) for p in px]
        return np.asarray(scorer.predict(arrays)).astype(bool).reshape(-1)

    return gate


def synthesize(home: Home, label: str, n: int, *, gan: str, gate: str | None,
               device: str = "auto") -> Any:
    """Generate `n` images of `label` with the generator `gan`, gated by the calibrated model
    `gate` (None = no plausibility gate); returns the synthesis report."""
    if label not in gan_classes(home, gan):
        msg = f"The generator {gan!r} does not know the class {label!r}."
        raise CatalogError(msg)
    model, row = load_generator(home, gan)
    plaus = plausibility_gate(home, gate) if gate else None
    return run_synthesis(home, model, row, label, n, plausibility=plaus, seed=0, device=device,
                         notify=lambda _msg: None)
