"""Scan reports: scores.csv, heatmap overlays and one self-contained report.html.

The report folder holds only files written here, and report.html refers to
nothing else (relative links to heatmaps/ and neighbors/, an inline SVG
histogram), so the folder can be zipped, mailed or served as it is.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.fsutil import atomic_write, atomic_write_bytes
from latentsight.embedder.images import decode_file, resize
from latentsight.embedder.scoring import TileScorer
from latentsight.index.home import Home
from PIL import Image

MAX_SHOWN = 200  # flagged images shown in report.html (all are in scores.csv)
THUMB = 96  # side of neighbor thumbnails in pixels


class ScanResult(Protocol):
    """One scanned image as the report needs it (`index.scan.ScanItem`)."""

    path: str
    sha256: str | None
    score: float | None
    anomalous: bool | None
    error: str | None
    nearest_ids: list[int] | None


class ScanResults(Protocol):
    """What a report shows of a scan (`index.scan.ScanSummary`, which calls this module)."""

    scan_id: int
    model: str
    threshold: float
    results: Sequence[ScanResult]
    skipped: int

    @property
    def scored(self) -> Sequence[ScanResult]: ...

    @property
    def failed(self) -> Sequence[ScanResult]: ...


def heatmap_name(path: str, sha: str) -> str:
    """The file name of an image's heatmap overlay in the report's heatmaps/ folder."""
    return f"{Path(path).stem[:40]}-{sha[:12]}.png"


def heat_colors(h: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white ("hot") colormap: float (H, W) in [0, 1] -> uint8 (H, W, 3)."""
    rgb = np.stack([3 * h, 3 * h - 1, 3 * h - 2], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def overlay(pixels: np.ndarray, amap: np.ndarray, threshold: float) -> np.ndarray:
    """The image beside itself with the anomaly map blended in; uint8 (H, 2W, 3).

    The map is shown relative to the threshold: at twice the threshold the
    color saturates; below half of it nothing is drawn.
    """
    img = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
    h = np.clip(amap / (2 * max(threshold, 1e-12)), 0, 1)
    alpha = np.clip((h - 0.25) / 0.5, 0, 0.7)[:, :, None]
    blend = img * (1 - alpha) + heat_colors(h) * alpha
    return np.concatenate([img, blend.astype(np.uint8)], axis=1)


def write_overlay(pixels: np.ndarray, amap: np.ndarray, threshold: float, path: Path) -> None:
    out = overlay(pixels, amap, threshold)
    atomic_write(path, lambda tmp: Image.fromarray(out).save(tmp, format="PNG"))


def histogram_svg(scores: list[float], threshold: float, *, bins: int = 40) -> str:
    """An inline SVG histogram of the scores with the threshold as a red line."""
    width, height, pad = 640, 200, 30
    if not scores:
        return f'<svg width="{width}" height="40"><text x="10" y="25">no scores</text></svg>'
    hi = max(max(scores), threshold) * 1.05
    lo = min(min(scores), 0.0)
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    bw = (width - 2 * pad) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + pad}" '
             f'role="img" aria-label="score histogram">']
    for i, c in enumerate(counts):
        bh = (height - pad) * c / top
        color = "#c0392b" if edges[i] >= threshold else "#2c7fb8"
        parts.append(f'<rect x="{pad + i * bw:.1f}" y="{height - bh:.1f}" width="{bw - 1:.1f}" '
                     f'height="{bh:.1f}" fill="{color}"><title>{edges[i]:.3f}-{edges[i + 1]:.3f}'
                     f": {int(c)}</title></rect>")
    tx = pad + (threshold - lo) / (hi - lo) * (width - 2 * pad)
    parts.append(f'<line x1="{tx:.1f}" y1="{pad / 2:.1f}" x2="{tx:.1f}" y2="{height}" '
                 'stroke="red" stroke-width="2" stroke-dasharray="4 2"/>')
    parts.append(f'<text x="{tx + 4:.1f}" y="{pad / 2 + 10:.1f}" font-size="12" fill="red">'
                 f"threshold {threshold:.3f}</text>")
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" '
                 'stroke="#333"/>')
    parts.append(f'<text x="{pad}" y="{height + 18}" font-size="12">{lo:.2f}</text>')
    parts.append(f'<text x="{width - pad - 30}" y="{height + 18}" font-size="12">{hi:.2f}</text>')
    parts.append(f'<text x="{width / 2 - 40:.0f}" y="{height + 18}" font-size="12">'
                 "anomaly score</text></svg>")
    return "\n".join(parts)


def write_report(home: Home, summary: ScanResults, directory: Path, *, encoder: Encoder,
                 scorer: TileScorer, neighbors: object) -> Path:
    """Write scores.csv, heatmaps/, neighbors/ and report.html into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    heat_dir, nb_dir = directory / "heatmaps", directory / "neighbors"
    heat_dir.mkdir(exist_ok=True)
    nb_dir.mkdir(exist_ok=True)
    thr = summary.threshold
    rows = sorted(summary.results, key=lambda r: (r.score is None, -(r.score or 0.0)))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "sha256", "score", "anomalous", "nearest_normal_ids", "error"])
            for r in rows:
                w.writerow([r.path, r.sha256 or "", "" if r.score is None else f"{r.score:.6f}",
                            "" if r.anomalous is None else int(r.anomalous),
                            ";".join(str(i) for i in (r.nearest_ids or [])), r.error or ""])

    atomic_write(directory / "scores.csv", write_csv)

    flagged = [r for r in rows if r.anomalous]
    shown = flagged[:MAX_SHOWN]
    cards = []
    for r in shown:
        name = heatmap_name(r.path, r.sha256 or "")
        if not (heat_dir / name).is_file():  # scored by an earlier, interrupted run
            try:
                px = decode_file(r.path, mode=encoder.mode).pixels
                _, amap = scorer.score_and_map(px)
                write_overlay(px, amap, thr, heat_dir / name)
            except DecodeError:
                continue
        nbs = []
        for i in r.nearest_ids or []:
            thumb = nb_dir / f"{i}.png"
            if not thumb.is_file():
                try:
                    px = decode_file(home.catalog.image(i).path, mode=encoder.mode).pixels
                except Exception:  # noqa: BLE001 - a moved catalog file: show no thumbnail
                    continue
                scale = THUMB / max(px.shape[:2])
                small = resize(px, (max(1, round(px.shape[1] * scale)),
                                    max(1, round(px.shape[0] * scale))))
                atomic_write(thumb, lambda tmp, s=small: Image.fromarray(s).save(tmp, "PNG"))
            nbs.append(f'<figure><img src="neighbors/{i}.png" alt="catalog image {i}">'
                       f"<figcaption>id {i}</figcaption></figure>")
        cards.append(
            f'<div class="card"><h3>{html.escape(r.path)}</h3>'
            f"<p>score <b>{r.score:.3f}</b> (threshold {thr:.3f})</p>"
            f'<img class="heat" src="heatmaps/{html.escape(name)}" alt="heatmap">'
            f'<div class="nbs"><span>nearest normal images:</span>{"".join(nbs) or " none"}'
            "</div></div>"
        )
    failures = "".join(f"<li>{html.escape(r.path)}: {html.escape(r.error or '')}</li>"
                       for r in summary.failed)
    more = (f"<p>{len(flagged) - MAX_SHOWN} more flagged images are listed in "
            '<a href="scores.csv">scores.csv</a>.</p>' if len(flagged) > MAX_SHOWN else "")
    scores = [r.score for r in summary.scored if r.score is not None]
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latentsight scan {summary.scan_id}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table.summary td {{ padding: 2px 12px 2px 0; }}
.card {{ border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px; margin: 12px 0; }}
.card h3 {{ font-size: 14px; word-break: break-all; margin: 4px 0; }}
img.heat {{ max-width: 100%; image-rendering: pixelated; }}
.nbs figure {{ display: inline-block; margin: 4px; text-align: center; font-size: 11px; }}
.nbs img {{ height: {THUMB}px; }}
</style></head><body>
<h1>Anomaly scan {summary.scan_id}</h1>
<table class="summary">
<tr><td>model</td><td>{html.escape(summary.model)}</td></tr>
<tr><td>threshold</td><td>{thr:.4f} (scores are normalized: 1.0 = the model's calibrated
threshold)</td></tr>
<tr><td>images scored</td><td>{len(summary.scored)}</td></tr>
<tr><td>flagged</td><td>{len(flagged)}</td></tr>
<tr><td>unreadable</td><td>{len(summary.failed)}</td></tr>
<tr><td>not images (skipped)</td><td>{summary.skipped}</td></tr>
</table>
<p><a href="scores.csv">scores.csv</a> lists every image.</p>
<h2>Score histogram</h2>
{histogram_svg(scores, thr)}
<h2>Flagged images</h2>
<p>Left: the image; right: where it differs from the normal images (red to white = more
anomalous).</p>
{"".join(cards) or "<p>none</p>"}
{more}
<h2>Unreadable files</h2>
<ul>{failures or "<li>none</li>"}</ul>
</body></html>
"""
    atomic_write_bytes(directory / "report.html", doc.encode())
    return directory / "report.html"
