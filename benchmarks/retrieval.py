"""Retrieval across protocols: every encoder beside raw pixels and PCA-64, micro and macro.

Protocols (each in its own temporary home, through the product's own paths:
`ingest_paths`, `training.train.train`, the checkpoint's `Encoder`):

- neu: NEU-CLS, whole-image texture classes (6 labels).
- elpv4: ELPV cells, four labels: mono/poly x functional (p=0) / defective (p=1).
- defects: functional ELPV cells (mono and poly) with a pasted defect kind:
  scratch (a thin line), spot (a dark disk), patch (a square of a NEU texture);
  label = kind. Whole-image rows, and "box" rows: region search with the
  defect's box over the local tile vectors (`Searcher.search(box=...)`).
- digits: invariance. Gallery = sklearn digits at 32x32; queries = held-out
  digits rotated, shifted, brightened or noised; relevant = same digit.

Encoders: ae, vae, vit, each without and with the InfoNCE auxiliary objective;
"pca+X" rows are the product's combined embedding (`latentsight train
--pixel-pca 64`: the checkpoint holds PCA-64 of the training images' pixels and
the search vector is [unit(PCA-64), unit(X)]), indexed through the product's
own path; the "X" row of the same run is its learned part alone. On the defect
protocol, "X anomaly" rows are the anomaly-weighted vectors that `latentsight
index build --anomaly SCAN_MODEL` stores (`index.local.build_anomaly`: each
image's `anomaly_vector`, the tile vector of its most anomalous square under a
detector fitted on other normal cells through the public `make_scorer(...).fit`
/ `anomaly_map` API, centred on the catalog mean by `center_parts`), compared
leave-one-out as `search --anomaly` compares them; "X anomaly uncentred" the
same before centring; "X anomaly search" the query's most anomalous square
against every tile (`Searcher.search(anomaly=...)` without those vectors);
"raw pixels anomaly" the same square's pixels alone; "X anomaly (background)" the
same vectors under a background model instead (the detector fitted on the gallery itself,
defects included: `latentsight train --normal-label '*'`), for homes where no label marks
the normal images. With --pca-standardize the
combined rows are "pca(std)+X" (`train --pixel-pca 64 --pixel-pca-standardize`).
Baselines: raw pixels (L2) and PCA-64 (L2), on the same images. Marked "(best)":
the learned row with the best worst-protocol macro precision@10 among those
that beat PCA-64 on every protocol (micro and macro); otherwise the table says
none qualifies.

    python benchmarks/retrieval.py                  # every protocol and variant (subsets)
    python benchmarks/retrieval.py --protocols digits --only ae --no-write
    python benchmarks/retrieval.py --seed 1 --only 'pca(std)+ae+infonce-photo' --no-box \
        --no-anomaly --no-write --json out.json   # the default, another seed

Writes `## Retrieval across protocols (issue 14)` in docs/benchmarks.md and
benchmarks/results/retrieval_protocols.json. Protocols whose data set is absent
are skipped (digits needs only scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's

import numpy as np  # noqa: E402
import torch  # noqa: E402
from latentsight.embedder.encoder import Encoder  # noqa: E402
from latentsight.embedder.images import decode_file, prepare  # noqa: E402
from latentsight.index.home import Home  # noqa: E402
from latentsight.index.ingest import ingest_paths  # noqa: E402
from latentsight.index.manager import build_index, embed_catalog_images, load_encoder  # noqa: E402
from latentsight.index.paths import from_catalog  # noqa: E402
from latentsight.training.evaluate import (  # noqa: E402
    pca_components,
    query_scores,
    retrieval_scores,
)
from latentsight.training.train import TrainConfig, train  # noqa: E402
from PIL import Image  # noqa: E402

DATA = Path(os.environ.get("LATENTSIGHT_BENCH_DATA", ROOT.parent / "shared" / "datasets"))
NEU, ELPV = DATA / "neu-cls", DATA / "elpv"
SECTION = "Retrieval across protocols (issue 14)"
RESULTS = ROOT / "benchmarks" / "results" / "retrieval_protocols.json"
K = 10

# every view field spelled out: a variant must not change when TrainConfig's defaults do
AUGMENT = {"augment": True, "crop_scale": 0.5, "rotate_deg": 10.0, "jitter": 0.0, "noise": 0.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "ae": {"model": "ae", "aux": "none", **AUGMENT},
    "ae+infonce": {"model": "ae", "aux": "infonce", **AUGMENT},  # the default before issue 14
    "vae": {"model": "vae", "aux": "none", **AUGMENT},
    "vae+infonce": {"model": "vae", "aux": "infonce", **AUGMENT},
    "vit": {"model": "vit", "aux": "none", **AUGMENT},
    "vit+infonce": {"model": "vit", "aux": "infonce", **AUGMENT},
    # the demo's recipe: no flips or turns, milder crops, rotations, photometric views
    "ae+infonce-photo": {"model": "ae", "aux": "infonce", "augment": False, "crop_scale": 0.85,
                         "rotate_deg": 20.0, "jitter": 0.3, "noise": 0.12},
}
# What `latentsight train` trains with no options (TrainConfig's defaults, issue 14): the
# ae+infonce-photo views, indexed as [unit(PCA-64 of standardized pixels), unit(learned)].
# A "pca(std)+X" name given to --only runs variant X with --pixel-pca-standardize.
DEFAULT_VARIANT = "pca(std)+ae+infonce-photo"
BOX_VARIANTS = ("ae", "ae+infonce", "ae+infonce-photo")  # region search: a tile index each
WEIGHTS: tuple[float, ...] = ()  # --explore: rows [unit(PCA), w * unit(learned)] (--weights)
EXPLORE = False  # --explore: also rows with the learned part centred on its gallery mean
PCA_STANDARDIZE = False  # --pca-standardize: "pca+X" rows with --pixel-pca-standardize
SEED = 0  # --seed: the subsets, the pasted defects, the digit queries and the training seed


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- protocol data --------------------------------------------------------------------------


def neu_groups(per_label: int, rng: np.random.Generator) -> dict[str, list[Path]]:
    groups = {}
    for d in sorted(p for p in NEU.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.bmp")) or sorted(d.iterdir())
        groups[d.name] = [files[i] for i in sorted(rng.choice(len(files), per_label, False))]
    return groups


def elpv_rows() -> list[tuple[Path, float, str]]:
    rows = []
    for line in (ELPV / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((ELPV / parts[0], float(parts[1]), parts[2]))
    return rows


def elpv4_groups(per_label: int, rng: np.random.Generator) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for kind in ("mono", "poly"):
        for p, name in ((0.0, "functional"), (1.0, "defective")):
            files = [f for f, q, t in elpv_rows() if t == kind and q == p]
            pick = sorted(rng.choice(len(files), min(per_label, len(files)), False))
            groups[f"{kind}-{name}"] = [files[i] for i in pick]
    return groups


def paste_defect(img: np.ndarray, kind: str, rng: np.random.Generator,
                 textures: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Paste one defect of `kind` into a copy of img (H, W) uint8; returns (image, box)."""
    from PIL import ImageDraw

    h, w = img.shape
    out = Image.fromarray(img.copy())
    if kind == "scratch":
        length = rng.uniform(0.25, 0.5) * w
        ang = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        dx, dy = math.cos(ang) * length / 2, math.sin(ang) * length / 2
        shade = int(np.clip(np.median(img) + rng.choice([-1, 1]) * rng.uniform(70, 110), 0, 255))
        ImageDraw.Draw(out).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=shade,
                                 width=int(rng.integers(2, 4)))
        x0, x1 = sorted((cx - dx, cx + dx))
        y0, y1 = sorted((cy - dy, cy + dy))
        box = (int(x0) - 3, int(y0) - 3, int(x1 - x0) + 6, int(y1 - y0) + 6)
    elif kind == "spot":
        r = rng.uniform(0.03, 0.07) * w
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        shade = int(np.clip(np.median(img) * rng.uniform(0.1, 0.35), 0, 255))
        ImageDraw.Draw(out).ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
        box = (int(cx - r) - 2, int(cy - r) - 2, int(2 * r) + 4, int(2 * r) + 4)
    else:  # patch of another texture
        side = int(rng.uniform(0.15, 0.25) * w)
        tex = textures[int(rng.integers(len(textures)))]
        ty, tx = rng.integers(0, tex.shape[0] - side), rng.integers(0, tex.shape[1] - side)
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        arr = np.asarray(out).copy()
        arr[y : y + side, x : x + side] = tex[ty : ty + side, tx : tx + side]
        out = Image.fromarray(arr)
        box = (x, y, side, side)
    x, y, bw, bh = box
    x, y = max(0, x), max(0, y)
    box = (x, y, max(1, min(bw, w - x)), max(1, min(bh, h - y)))
    return np.asarray(out), box


def defect_groups(per_label: int, rng: np.random.Generator, out: Path
                  ) -> tuple[dict[str, list[Path]], dict[str, tuple[int, int, int, int]]]:
    normal = [f for f, q, _t in elpv_rows() if q == 0.0]
    base = [normal[i] for i in rng.choice(len(normal), 3 * per_label, False)]
    textures = [np.asarray(Image.open(f).convert("L"))
                for d in sorted(p for p in NEU.iterdir() if p.is_dir())
                for f in sorted(d.iterdir())[:3]]
    groups: dict[str, list[Path]] = {}
    boxes = {}
    for i, f in enumerate(base):
        kind = ("scratch", "spot", "patch")[i % 3]
        img, box = paste_defect(np.asarray(Image.open(f).convert("L")), kind, rng, textures)
        d = out / kind
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{i:04d}.png"
        Image.fromarray(img).save(path)
        groups.setdefault(kind, []).append(path)
        boxes[path.name] = box
    return groups, boxes


def transform_digit(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random nuisance: rotation, shift, brightness or noise. img (32, 32) uint8."""
    kind = int(rng.integers(4))
    pil = Image.fromarray(img)
    if kind == 0:
        pil = pil.rotate(float(rng.uniform(15, 25) * rng.choice([-1, 1])),
                         resample=Image.Resampling.BILINEAR)
        return np.asarray(pil)
    if kind == 1:
        dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
        return np.roll(np.roll(img, dy, 0), dx, 1)
    if kind == 2:
        return np.clip(img.astype(np.float64) * 0.7 + 70, 0, 255).astype(np.uint8)
    return np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)


def digits_data(out: Path, n_gallery: int, n_query: int, rng: np.random.Generator):
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [np.asarray(Image.fromarray(np.clip(x / 16 * 255, 0, 255).astype(np.uint8)).resize(
        (32, 32), Image.Resampling.BILINEAR)) for x in d.images]
    order = rng.permutation(len(imgs))
    gal, qry = order[:n_gallery], order[n_gallery : n_gallery + n_query]
    groups: dict[str, list[Path]] = {}
    for i in gal:
        folder = out / f"digit_{d.target[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.png"
        Image.fromarray(imgs[i]).save(path)
        groups.setdefault(f"digit_{d.target[i]}", []).append(path)
    queries = [transform_digit(imgs[i], rng) for i in qry]
    return groups, queries, [f"digit_{d.target[i]}" for i in qry]


# ---- evaluation -----------------------------------------------------------------------------


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def figures(s) -> dict[str, float]:
    return {"p": s.precision_at_k, "p_macro": s.macro_precision_at_k, "map": s.map,
            "map_macro": s.macro_map}


class Protocol:
    """A home with labeled images, an image size, and optional held-out queries."""

    def __init__(self, name: str, home: Home, size: int, queries=None, query_labels=None,
                 boxes=None) -> None:
        self.name, self.home, self.size = name, home, size
        self.queries, self.query_labels, self.boxes = queries, query_labels, boxes
        self.maps: list[np.ndarray] | None = None  # anomaly maps (defect protocol)
        self.background_maps: list[np.ndarray] | None = None  # from a model of every image
        self.scorer = None  # the detector those maps come from
        rows = home.catalog.images(labeled_only=True)
        self.rows = rows
        self.labels = [r.label for r in rows]
        self.px = np.stack([prepare(decode_file(from_catalog(r.path)).pixels, size, 1)
                            for r in rows]).reshape(len(rows), -1).astype(np.float32) / 255.0
        self.qpx = None if queries is None else np.stack(
            [prepare(q, size, 1) for q in queries]).reshape(len(queries), -1).astype(
                np.float32) / 255.0

    def score(self, gallery: np.ndarray, queries: np.ndarray | None, metric: str):
        if self.queries is None:
            return retrieval_scores(gallery, self.labels, k=K, metric=metric)
        return query_scores(queries, self.query_labels, gallery, self.labels, k=K,
                            metric=metric)

    def baselines(self) -> dict[str, dict[str, float]]:
        out = {"raw pixels": figures(self.score(self.px, self.qpx, "l2"))}
        self.pca_g, self.pca_q = self.pca()
        out["PCA-64"] = figures(self.score(self.pca_g, self.pca_q, "l2"))
        return out

    def pca(self) -> tuple[np.ndarray, np.ndarray | None]:
        from sklearn.decomposition import PCA

        c = min(64, len(self.px) - 1)
        if self.qpx is None:
            return pca_components(self.px, c), None
        p = PCA(n_components=c, random_state=0).fit(self.px)
        return p.transform(self.px).astype(np.float32), p.transform(self.qpx).astype(np.float32)

    def learned(self, enc: Encoder) -> tuple[np.ndarray, np.ndarray | None]:
        vecs, kept = embed_catalog_images(enc, [r.id for r in self.rows],
                                          [r.path for r in self.rows], progress=False, workers=0)
        assert len(kept) == len(self.rows)
        q = None if self.queries is None else enc.embed_pixels(self.queries)
        return vecs, q

    def learned_part(self, enc: Encoder) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's learned embedding alone (`embed_learned`, no pixel PCA, not centred):
        what `latentsight train` without --pixel-pca indexes."""
        def run(pixels: list[np.ndarray]) -> np.ndarray:
            x = torch.from_numpy(np.stack([enc.prepare(p) for p in pixels])).float() / 255
            with torch.no_grad():
                return enc.model.embed_learned(x).numpy()

        g = run([decode_file(from_catalog(r.path)).pixels for r in self.rows])
        return g, None if self.queries is None else run(self.queries)

    def box_scores(self, model: str, anomaly: object | None = None) -> dict[str, float]:
        """Region search with each image's defect box (or, with `anomaly`, a scorer: its most
        anomalous square, `Searcher.search(anomaly=...)`); its own image left out."""
        from latentsight.index.local import has_local
        from latentsight.index.search import Searcher
        from latentsight.training.evaluate import precision_and_ap, summarize

        row = self.home.catalog.model(model)
        if not has_local(self.home, row):
            build_index(self.home, row, device="cpu", progress=False, workers=0, local=True)
        s = Searcher(self.home, model, device="cpu")
        rels, labs = [], []
        for r in self.rows:
            how = {"anomaly": anomaly} if anomaly is not None else {
                "box": self.boxes[Path(r.path).name]}
            hits = [h for h in s.search(r.id, k=K + 1, **how) if h.id != r.id][:K]
            rels.append([h.label == r.label for h in hits] + [False] * (K - len(hits)))
            labs.append(r.label)
        prec, ap = precision_and_ap(np.asarray(rels), K)
        return {**figures(summarize(prec, ap, np.asarray(labs), k=K, n=len(self.rows))),
                "note": f"mAP over the top {K} only"}


def make_protocol(name: str, tmp: Path, rng: np.random.Generator, per_label: int) -> Protocol:
    home = Home(tmp / f"home-{name}")
    queries = qlabels = boxes = None
    if name == "neu":
        groups, size = neu_groups(per_label, rng), 64
    elif name == "elpv4":
        groups, size = elpv4_groups(per_label, rng), 64
    elif name == "defects":
        groups, boxes = defect_groups(per_label, rng, tmp / "defects")
        size = 64
    else:
        groups, queries, qlabels = digits_data(tmp / "digits", 10 * per_label, 5 * per_label, rng)
        size = 32
    for label, files in groups.items():
        ingest_paths(home, [str(f) for f in files], label=label, progress=False, workers=0)
    return Protocol(name, home, size, queries, qlabels, boxes)


def _detector(imgs: list[np.ndarray]) -> object:
    """The default detector fitted through the public API (make_scorer, fit): the first
    quarter of `imgs` calibrates, the rest is the reference, as `train_scorer` splits."""
    from latentsight.embedder.models import create
    from latentsight.embedder.scoring import DEFAULT_SCORER, make_scorer

    n_cal = max(4, len(imgs) // 4)
    enc = Encoder(create("ae", image_size=64, depth=3, width=16), device="cpu")
    return make_scorer(DEFAULT_SCORER, enc).fit(imgs[:n_cal], reference=imgs[n_cal:])


def gallery_pixels(proto: Protocol) -> list[np.ndarray]:
    """The protocol's gallery images at native size, decoded once."""
    if getattr(proto, "_pixels", None) is None:
        proto._pixels = [decode_file(from_catalog(r.path)).pixels for r in proto.rows]
    return proto._pixels


def anomaly_maps(proto: Protocol, n_normal: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Anomaly maps of the defect protocol's images from the default detector, fitted on
    normal cells outside the gallery (public API: make_scorer, fit, anomaly_map)."""
    used = {Path(r.path).name for r in proto.rows}
    normal = [f for f, q, _t in elpv_rows() if q == 0.0 and f.name not in used]
    pick = [normal[i] for i in rng.choice(len(normal), n_normal, False)]
    proto.scorer = _detector([decode_file(f).pixels for f in pick])
    return proto.scorer.anomaly_map(gallery_pixels(proto))


def background_maps(proto: Protocol, rng: np.random.Generator) -> list[np.ndarray]:
    """Maps from a background model: the default detector fitted on the gallery itself, every
    image (each with its defect), as `latentsight train --normal-label '*'` fits it: a
    random quarter calibrates, the rest is the reference."""
    imgs = gallery_pixels(proto)
    return _detector([imgs[i] for i in rng.permutation(len(imgs))]).anomaly_map(imgs)


ANOMALY_MODES = {"anomaly": {}}  # the library's defaults: the most anomalous square, any side
EXPLORE_ANOMALY = {"anomaly tile-best": {"where": "tile", "scales": "best"},
                   "anomaly fine": {"fine": 1.0}, "anomaly fine/4": {"fine": 0.25},
                   "anomaly fine/2+fine/4": {"fine": (0.5, 0.25)},
                   "anomaly top2": {"top": 2}}


def anomaly_scores(proto: Protocol, enc: Encoder, maps: list[np.ndarray] | None = None,
                   **mode: Any) -> dict[str, dict[str, float]]:
    """'X anomaly': what `latentsight index build --anomaly` stores and `search --anomaly`
    compares (`build_anomaly`: each image's `anomaly_vector`, centred on the catalog's mean
    by `center_parts`), leave-one-out; the maps are the protocol's own (computed once).
    'X anomaly uncentred': the same vectors before centring."""
    from latentsight.index.local import anomaly_vector, center_parts, choose_geometry, tile_dim

    geo = choose_geometry([(r.width, r.height) for r in proto.rows], enc.image_size)
    if "fine" in mode:
        f = mode.pop("fine")
        mode["sides"] = [int(geo.tiles[-1] * x) for x in (f if isinstance(f, tuple) else (f,))]
    vecs = np.stack([anomaly_vector(enc, decode_file(from_catalog(r.path)).pixels, m, geo,
                                    **mode)[0]
                     for r, m in zip(proto.rows, proto.maps if maps is None else maps,
                                     strict=True)])
    split = enc.embed_dim if vecs.shape[1] == tile_dim(enc) else None  # scales='best'
    return {"": figures(proto.score(center_parts(vecs, vecs.mean(0), split), None, "cosine")),
            " uncentred": figures(proto.score(vecs, None, "cosine"))}


def pixel_anomaly_scores(proto: Protocol, side: int = 16) -> dict[str, float]:
    """Baseline for the anomaly rows: the same most anomalous square (the library's default
    choice), described by its pixels alone (side x side, own mean removed, unit length)."""
    from latentsight.embedder.images import resize
    from latentsight.index.local import choose_geometry, most_anomalous_box

    geo = choose_geometry([(r.width, r.height) for r in proto.rows], 64)
    vecs = []
    for r, m in zip(proto.rows, proto.maps, strict=True):
        px = decode_file(from_catalog(r.path)).pixels
        x, y, w, h = most_anomalous_box(m, geo)
        v = resize(px[y : y + h, x : x + w], side).astype(np.float32).ravel()
        vecs.append(v - v.mean())
    return figures(proto.score(unit(np.stack(vecs)), None, "cosine"))


def run_variant(proto: Protocol, name: str, epochs: int, box: bool,
                standardize: bool = False) -> dict[str, Any]:
    fields = dict(VARIANTS[name])
    std = standardize or PCA_STANDARDIZE
    mc: dict[str, Any] = {"image_size": proto.size}
    if fields["model"] in ("ae", "vae"):
        mc |= {"width": 16, "depth": 3 if proto.size == 32 else 4}
    if fields["model"] == "vit":
        mc |= {"patch_size": 4 if proto.size == 32 else 8}
    ep = epochs * (2 if fields["model"] == "vit" else 1)
    k = min(64, len(proto.rows) - 1)
    cfg = TrainConfig(**fields, epochs=ep, name=name.replace("+", "_"), device="cpu", patience=100,
                      model_config=mc, pixel_pca=k, pixel_pca_standardize=std, seed=SEED)
    t0, c0 = time.perf_counter(), time.process_time()
    train(proto.home, cfg, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    enc = load_encoder(proto.home, proto.home.catalog.model(name.replace("+", "_")), "cpu")
    g, q = proto.learned(enc)  # the product's: [unit(pixel PCA), unit(learned)]
    lg, lq = proto.learned_part(enc)  # the learned part alone, as indexed without --pixel-pca
    out = {"variant": name, "epochs": ep, "train_wall_s": round(wall, 1),
           "train_cpu_s": round(cpu, 1),
           "scores": {name: figures(proto.score(lg, lq, "cosine")),
                      f"{'pca(std)' if std else 'pca'}+{name}":
                      figures(proto.score(g, q, "cosine"))}}
    if EXPLORE:
        cg = unit(lg - lg.mean(0))
        cq = None if q is None else unit(lq - lg.mean(0))
        out["scores"][f"{name} centred"] = figures(proto.score(cg, cq, "cosine"))
        ug = np.concatenate([g[:, :k], cg], 1)
        uq = None if q is None else np.concatenate([q[:, :k], cq], 1)
        out["scores"][f"pca+{name} centred"] = figures(proto.score(ug, uq, "cosine"))
        cg, cq = g[:, k:], None if q is None else q[:, k:]
        for w in WEIGHTS:
            wg = np.concatenate([g[:, :k], w * cg], 1)
            wq = None if q is None else np.concatenate([q[:, :k], w * cq], 1)
            out["scores"][f"pca+{name} w{w:g}"] = figures(proto.score(wg, wq, "cosine"))
    if proto.maps is not None and name in BOX_VARIANTS:
        t0 = time.perf_counter()
        modes = ANOMALY_MODES | (EXPLORE_ANOMALY if EXPLORE else {})
        for row, mode in modes.items():
            for suffix, f in anomaly_scores(proto, enc, **mode).items():
                out["scores"][f"{name} {row}{suffix}"] = f
        if proto.background_maps is not None:
            out["scores"][f"{name} anomaly (background)"] = anomaly_scores(
                proto, enc, maps=proto.background_maps)[""]
        out["anomaly_seconds"] = round(time.perf_counter() - t0, 1)
    if box and proto.boxes is not None and name in BOX_VARIANTS:
        t0 = time.perf_counter()
        out["scores"][f"{name} box"] = proto.box_scores(name.replace("+", "_"))
        if proto.scorer is not None:
            out["scores"][f"{name} anomaly search"] = proto.box_scores(
                name.replace("+", "_"), anomaly=proto.scorer)
        out["box_seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ---- report ---------------------------------------------------------------------------------


def choose_default(table: dict[str, dict[str, dict[str, float]]], protocols: list[str]):
    """The learned row with the best worst-protocol macro P@10 among rows that beat PCA-64
    on every protocol (micro and macro P@10). Returns (default or None, best worst-case row,
    {row: protocols where it loses to PCA-64})."""
    rows = {m for p in protocols for m in table[p]} - {"raw pixels", "PCA-64"}
    rows = {m for m in rows if not m.endswith(" box") and all(m in table[p] for p in protocols)}
    losses = {m: [p for p in protocols
                  if table[p][m]["p"] <= table[p]["PCA-64"]["p"]
                  or table[p][m]["p_macro"] <= table[p]["PCA-64"]["p_macro"]] for m in rows}
    ok = [m for m in rows if not losses[m]]

    def worst(m: str) -> float:
        return min(table[p][m]["p_macro"] for p in protocols)

    best = max(rows, key=worst) if rows else None
    return (max(ok, key=worst) if ok else None), best, losses


DISCUSSION = """\
How to read it. Micro and macro agree on neu, elpv4 and defects because every
label has the same number of images; they differ a little on digits (unequal
digit counts) and will differ on a real, unbalanced defect catalog. Chance is
1/6 (neu), 1/4 (elpv4), 1/3 (defects), 1/10 (digits). 50 images per label and
4 epochs on a 2-core CPU shared with other jobs (load 6-11 during the run):
the rows rank recipes, they do not measure what a longer training reaches.
Run at commit 59b1588 (the pca(std) pass at 528ffb0) as two processes in parallel, `nice
-n 15 python benchmarks/retrieval.py --protocols neu,defects --per-label 50
--epochs 4 --json A --no-write` (2084 s) and `--protocols elpv4,digits` (1487
s); the `pca(std)+X` rows come from a second pass on the same images (`--only
ae,ae+infonce,ae+infonce-photo --pca-standardize --no-box --no-anomaly`, same
seed and protocol order; its `X` rows matched the first pass's to 3 decimals).
'train s' is wall time on that loaded machine (ae+infonce-photo: 306 s over the
four protocols, 42 s of CPU in the training process).

Which encoder gets where (macro P@10, beside PCA-64 of the same run):
- neu (whole-image textures, PCA-64 0.402): the InfoNCE encoders alone are best
  (ae+infonce 0.619, vit+infonce 0.585); adding PCA lowers them (pca+ae+infonce
  0.548) and standardized PCA more (pca(std)+ae+infonce 0.510).
- elpv4 (PCA-64 0.379): no learned part alone gets past 0.353
  (ae+infonce-photo); the combined rows do, best with the standardized pixel PCA:
  pca(std)+ae+infonce-photo 0.536 (pca+X at most 0.452). **Goal 0.70: not met.**
- defects (PCA-64 0.331): every whole-image vector stays at chance (0.32-0.35).
  What finds the defect kind is the anomaly-weighted vector: `ae+infonce
  anomaly` 0.750 (mAP 0.682; ae 0.725, ae+infonce-photo 0.725), which is what
  `latentsight index build --anomaly SCAN_MODEL` now stores and `latentsight
  search QUERY --anomaly SCAN_MODEL` compares: each image's most anomalous
  square under the detector, its tile vector centred on the catalog's mean
  (uncentred 0.735 / 0.687 / 0.689), beside the same square's raw pixels 0.631.
  Searching the query's square against every tile (`anomaly search`, what
  `--anomaly` does when those vectors were not built) gives 0.451-0.470, region
  search with the true defect box 0.439-0.478. **Goal >= 0.60 on defect kinds: met by
  the anomaly-weighted vectors** (one protocol, one seed; not yet measured on
  held-out real-defect images outside the project).
- digits (invariance, PCA-64 0.733): ae+infonce-photo alone 0.780, with
  standardized PCA 0.772; the default recipe's flips and turns hurt (ae+infonce
  0.497, pca+ae+infonce 0.697).

Beating PCA-64 everywhere. One row beats PCA-64 on all four protocols, micro
and macro: pca(std)+ae+infonce-photo, i.e. `TrainConfig(model="ae",
aux="infonce", augment=False, crop_scale=0.85, rotate_deg=20, jitter=0.3,
noise=0.12, pixel_pca=64, pixel_pca_standardize=True)` (the demo's views with the
standardized pixel PCA), at the training cost of its ae+infonce-photo row (the PCA is one SVD
after training). Its worst protocol is defects (whole-image, 0.341 vs
0.331: chance-level for both, a margin within one seed's noise; there the
anomaly-weighted search is the tool), so "beat PCA-64 on every protocol" is met
by this row in this run, narrowly on defects, and by no row of the recipe that
was the default then (ae+infonce).
Since issue 14's seed runs (below) it is the product default: `latentsight train` with
no options trains it (`TrainConfig`'s `SEARCH_DEFAULTS`; scan models, `--normal-label`,
keep tile crops, flips and turns, no photometric views and no pixel PCA), and
`--augment --crop-scale 0.5 --rotate 10 --jitter 0 --noise 0 --pixel-pca 0` gives the
earlier default (ae+infonce) back. The standardized PCA alone (pca(std)+ae) loses on
neu (0.310) and pca(std)+ae+infonce on digits (0.719), so neither of those was a
candidate.

Seeds 0-4: the default beside raw pixels, PCA-64 and the earlier default. Same
protocols, 50 images per label, 4 epochs; `--seed S` draws other subsets, pasted
defects and digit queries and seeds the training, so each seed's baselines are its own.
Run at commit 770a495 as two processes in parallel (`LATENTSIGHT_BENCH_DATA=../shared/datasets
nice -n 15 python benchmarks/retrieval.py --protocols neu,defects --per-label 50
--epochs 4 --seed S --only 'pca(std)+ae+infonce-photo,ae+infonce' --no-box --no-anomaly
--no-write --json FILE`, and `--protocols elpv4,digits`), load average 4-17 from other jobs.
Raw results: benchmarks/results/retrieval_protocols/seeds/ (PROTOCOLS-sS.json: the default,
seeds 0-1; PROTOCOLS-run2-sS.json: ae+infonce at seeds 0-1, both at seeds 2-4).
Seed 0 reproduces the table above to 3 decimals except the default's neu row (0.444 here,
0.442 above). Macro P@10 (micro differs from macro by at most 0.015, on digits):

| method | seed | neu | elpv4 | defects | digits | worst | loses to PCA-64 on |
| --- | --- | --- | --- | --- | --- | --- | --- |
| raw pixels | 0 | 0.392 | 0.374 | 0.329 | 0.733 | 0.329 | - |
| raw pixels | 1 | 0.428 | 0.446 | 0.342 | 0.754 | 0.342 | - |
| raw pixels | 2 | 0.393 | 0.441 | 0.346 | 0.757 | 0.346 | - |
| raw pixels | 3 | 0.395 | 0.486 | 0.348 | 0.740 | 0.348 | - |
| raw pixels | 4 | 0.427 | 0.461 | 0.375 | 0.729 | 0.375 | - |
| PCA-64 | 0 | 0.402 | 0.379 | 0.331 | 0.733 | 0.331 | - |
| PCA-64 | 1 | 0.440 | 0.449 | 0.335 | 0.754 | 0.335 | - |
| PCA-64 | 2 | 0.410 | 0.446 | 0.341 | 0.757 | 0.341 | - |
| PCA-64 | 3 | 0.409 | 0.486 | 0.344 | 0.740 | 0.344 | - |
| PCA-64 | 4 | 0.436 | 0.468 | 0.369 | 0.729 | 0.369 | - |
| **pca(std)+ae+infonce-photo (default)** | 0 | 0.444 | 0.536 | 0.341 | 0.772 | 0.341 | none |
| **pca(std)+ae+infonce-photo (default)** | 1 | 0.440 | 0.541 | 0.369 | 0.798 | 0.369 | neu |
| **pca(std)+ae+infonce-photo (default)** | 2 | 0.431 | 0.555 | 0.352 | 0.804 | 0.352 | none |
| **pca(std)+ae+infonce-photo (default)** | 3 | 0.405 | 0.577 | 0.361 | 0.794 | 0.361 | neu |
| **pca(std)+ae+infonce-photo (default)** | 4 | 0.437 | 0.582 | 0.343 | 0.793 | 0.343 | defects |
| ae+infonce (default before) | 0 | 0.619 | 0.302 | 0.347 | 0.497 | 0.302 | elpv4, digits |
| ae+infonce (default before) | 1 | 0.572 | 0.322 | 0.316 | 0.501 | 0.316 | elpv4, defects, digits |
| ae+infonce (default before) | 2 | 0.593 | 0.298 | 0.337 | 0.466 | 0.298 | elpv4, defects, digits |
| ae+infonce (default before) | 3 | 0.468 | 0.357 | 0.351 | 0.430 | 0.351 | elpv4, digits |
| ae+infonce (default before) | 4 | 0.527 | 0.358 | 0.345 | 0.482 | 0.345 | elpv4, defects, digits |

Mean over the five seeds (± sample std), macro P@10: default 0.432 ± 0.015 / 0.558 ±
0.021 / 0.353 ± 0.012 / 0.792 ± 0.012 (neu / elpv4 / defects / digits) against PCA-64
0.419 ± 0.018 / 0.446 ± 0.041 / 0.344 ± 0.015 / 0.743 ± 0.013 and raw pixels 0.407 /
0.442 / 0.348 / 0.743; the earlier default 0.556 / 0.327 / 0.339 / 0.475. Worst
protocol, mean over seeds: default 0.353, PCA-64 0.344, raw pixels 0.348, earlier
default 0.322. What holds: the default beats PCA-64 clearly on elpv4 (+0.09 to +0.16)
and digits (+0.04 to +0.06) at every seed. What does not: on neu (+0.042, -0.0003 i.e.
0.4400 vs 0.4403, +0.022, -0.003, +0.001) and defects (+0.011, +0.034, +0.011, +0.017,
-0.026) the margin is within seed noise, and by the strict rule (beat PCA-64 on every
protocol, micro and macro) the default qualifies at seeds 0 and 2 only; its neu mAP is
below PCA-64's at every seed (-0.012 to -0.067). The earlier default loses to PCA-64 on
two or three protocols at every seed, so by worst protocol the change is still an
improvement (0.322 -> 0.353 mean worst), but "beats PCA-64 everywhere" is a seed-0
result, not a robust one; whole-image defects stay at chance for every vector (the
anomaly-weighted rows above are the tool there). Cost: the default's training took
85-123 s wall over the four protocols per seed (33-39 s CPU in the training process; the
pixel PCA is one SVD after training), the earlier default 66-148 s (30-36 s CPU).
**ELPV-4 goal 0.70: still not met** (0.536-0.582). The default's PCA and its brightness
jitter leave brightness out: a catalog whose labels differ by brightness alone is served
worse (`--no-pixel-pca-standardize --jitter 0`).
"""


def render(table, runs, protocols, note) -> str:
    default, best, losses = choose_default(table, protocols)
    methods = ["raw pixels", "PCA-64"] + [m for m in sorted(
        {m for p in protocols for m in table[p]} - {"raw pixels", "PCA-64"},
        key=lambda m: (m.split()[0].removeprefix("pca+").removeprefix("pca(std)+"), m))]
    hdr = "| method | " + " | ".join(f"{p} P@{K} micro / macro | {p} mAP micro / macro"
                                     for p in protocols) + " | worst macro P@10 | train s |"
    lines = [f"## {SECTION}", "", note, "", hdr,
             "|" + " --- |" * (2 + 2 * len(protocols) + 1)]
    by_run = {(r["variant"], r["protocol"]): r["train_wall_s"] for r in runs}  # latest rerun
    train_s: dict[str, list[float]] = {}
    for (variant, _proto), sec in by_run.items():
        train_s.setdefault(variant, []).append(sec)
    for m in methods:
        cells, worst = [], []
        for p in protocols:
            f = table[p].get(m)
            if f is None:
                cells += ["-", "-"]
                continue
            cells += [f"{f['p']:.3f} / {f['p_macro']:.3f}",
                      f"{f['map']:.3f} / {f['map_macro']:.3f}"]
            worst.append(f["p_macro"])
        base = m.removeprefix("pca+").removeprefix("pca(std)+").split(" ")[0]
        ts = sum(train_s.get(base, [])) if base in train_s else None
        name = f"**{m} (best)**" if m == default else m
        w = f"{min(worst):.3f}" if len(worst) == len(protocols) else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {w} | "
                     f"{'-' if ts is None else f'{ts:.0f}'} |")
    if default:
        said = ("trains it" if default == DEFAULT_VARIANT else
                f"({DEFAULT_VARIANT}) loses to PCA-64 on "
                f"{', '.join(losses.get(DEFAULT_VARIANT, [])) or '-'}")
        lines += ["", f"Best by worst protocol among rows that beat PCA-64 on every protocol "
                  f"(micro and macro): **{default}**. `latentsight train` with no options "
                  f"{said}."]
    else:
        lines += ["", "No learned row beats PCA-64 on every protocol (micro and macro), so none "
                  f"is marked default. Best worst-protocol macro P@{K}: {best} "
                  f"(loses to PCA-64 on {', '.join(losses.get(best, [])) or '-'}). "
                  f"`latentsight train` ({DEFAULT_VARIANT}) loses to PCA-64 on "
                  f"{', '.join(losses.get(DEFAULT_VARIANT, [])) or '-'}."]
    return "\n".join(lines) + "\n\n" + DISCUSSION


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default="neu,elpv4,defects,digits")
    ap.add_argument("--only", default="", help="comma-separated variants (default: all); "
                    "'pca(std)+X' = variant X with --pixel-pca-standardize")
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds the subsets, pasted defects, digit queries and the training")
    ap.add_argument("--per-label", type=int, default=60, help="images per label (subsets)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs (the ViT gets twice as many)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-box", action="store_true", help="skip the region-search rows")
    ap.add_argument("--no-anomaly", action="store_true", help="skip the anomaly-weighted rows")
    ap.add_argument("--explore", action="store_true", help="extra rows: centring, --weights")
    ap.add_argument("--weights", default="", help="with --explore: weightings, e.g. 0.5,2")
    ap.add_argument("--pca-standardize", action="store_true",
                    help="pca+X rows with `train --pixel-pca-standardize` (rows named pca(std)+X)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path, default=RESULTS, help="where to write the raw results")
    ap.add_argument("--merge", type=Path, nargs="*", default=None,
                    help="render from --json files of earlier runs (one per protocol), no training")
    args = ap.parse_args()
    if args.merge:
        docs = [json.loads(p.read_text()) for p in args.merge]
        table: dict[str, dict[str, dict[str, float]]] = {}
        for d in docs:
            for proto, rows in d["table"].items():
                table.setdefault(proto, {}).update(rows)
        runs = [r for d in docs for r in d["runs"]]
        protocols = [p for p in ("neu", "elpv4", "defects", "digits") if p in table]
        text = render(table, runs, protocols, docs[0]["note"].split(" whole run")[0] +
                      " Protocols ran as separate processes, merged with --merge (see below).")
        print(text)
        RESULTS.write_text(json.dumps({"table": table, "runs": runs, "note": docs[0]["note"]},
                                      indent=1))
        if not args.no_write:
            from benchmarks.report import replace_section

            replace_section(SECTION, text.split("\n", 2)[2])
        return 0
    torch.set_num_threads(args.threads)
    global WEIGHTS, EXPLORE, PCA_STANDARDIZE, SEED
    WEIGHTS = tuple(float(w) for w in args.weights.split(",") if w)
    EXPLORE = args.explore
    PCA_STANDARDIZE = args.pca_standardize
    SEED = args.seed
    rng = np.random.default_rng(args.seed)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n.removeprefix("pca(std)+") not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    protocols = []
    for p in args.protocols.split(","):
        need = {"neu": [NEU], "elpv4": [ELPV], "defects": [ELPV, NEU], "digits": []}[p]
        if all(d.is_dir() for d in need):
            protocols.append(p)
        else:
            log(f"skip {p}: data set not found under {DATA}")
    table: dict[str, dict[str, dict[str, float]]] = {}
    runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ls-bench-ret-") as tmp:
        for p in protocols:
            proto = make_protocol(p, Path(tmp), rng, args.per_label)
            table[p] = proto.baselines()
            if p == "defects" and not args.no_anomaly:
                t0 = time.perf_counter()
                proto.maps = anomaly_maps(proto, 2 * args.per_label, rng)
                proto.background_maps = background_maps(proto, rng)
                table[p]["raw pixels anomaly"] = pixel_anomaly_scores(proto)
                log(f"defects: anomaly maps in {time.perf_counter() - t0:.0f}s; raw pixels "
                    f"anomaly {json.dumps(table[p]['raw pixels anomaly'])}")
            log(f"{p}: {len(proto.rows)} images; baselines {json.dumps(table[p])}")
            for n in names:
                r = run_variant(proto, n.removeprefix("pca(std)+"), args.epochs,
                                not args.no_box, standardize=n.startswith("pca(std)+"))
                table[p].update(r.pop("scores"))
                runs.append({"protocol": p, **r})
                v = n.removeprefix("pca(std)+")
                log(f"{p} {n}: {json.dumps({m: table[p][m] for m in table[p] if v in m})} "
                    f"train {r['train_wall_s']}s")
            proto.home.close()
    note = (f"Subsets: {args.per_label} images per label (digits: {10 * args.per_label} gallery, "
            f"{5 * args.per_label} transformed held-out queries), seed {args.seed}, one run; "
            f"{args.epochs} epochs for the conv models, {2 * args.epochs} for the ViT "
            "(short: CPU budget), 64x64 (digits 32x32), CPU with "
            f"{args.threads} torch thread(s) on a 2-core machine shared with other jobs "
            f"(load {os.getloadavg()[0]:.1f}); whole run {time.perf_counter() - t_start:.0f}s. "
            "Leave-one-out over the gallery (digits: queries against the gallery). "
            "'pca+X' = unit PCA-64 components beside the unit X embedding; 'X box' = region "
            "search with the pasted defect's box over local tile vectors (own image left out; "
            "mAP over the top 10 only). 'train s' = training wall seconds summed over protocols.")
    text = render(table, runs, protocols, note)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"table": table, "runs": runs, "note": note}, indent=1))
    if not args.no_write:
        from benchmarks.report import replace_section

        replace_section(SECTION, text.split("\n", 2)[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
