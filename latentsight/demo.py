"""`latentsight demo`: the whole pipeline on scikit-learn's bundled digits, no download.

digits (1797 images, 8x8, 10 classes) -> PNGs upscaled to 32x32 -> ingest with
labels -> train an autoencoder -> index -> searches -> precision@10 beside raw pixels.
Re-running it reuses what is already there (nothing is ingested twice).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from embedder.errors import CatalogError
from index.home import Home
from index.ingest import ingest_paths
from index.manager import build_index
from index.search import Searcher
from training.evaluate import evaluate_retrieval
from training.train import TrainConfig, train

DEMO_MODEL = "demo-ae"


def export_digits(directory: Path, size: int = 32) -> int:
    """Write the digits as PNGs, one folder per digit; returns the number of files written."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = 0
    for i, (img, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = directory / f"digit_{target}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.png"
        if path.exists():
            continue
        px = np.clip(img / 16.0 * 255.0, 0, 255).astype(np.uint8)  # (8, 8) in 0..16 -> 0..255
        Image.fromarray(px, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(path)
        written += 1
    return written


def say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(home: Home, *, epochs: int = 8, device: str = "auto") -> int:
    t0 = time.perf_counter()
    data = home.root / "demo-data"
    n = export_digits(data)
    say(f"[1/5] digits exported to {data} ({n} new PNG files)")

    rep = ingest_paths(home, [str(data)], labels_from_folders=True, source="demo")
    say(f"[2/5] ingest: added {rep.added}, duplicates {rep.duplicates}, failed {len(rep.failed)}")

    try:
        model = home.catalog.model(DEMO_MODEL)
        say(f"[3/5] model {DEMO_MODEL} exists already; reusing it")
    except CatalogError:
        cfg = TrainConfig(
            model="ae", epochs=epochs, batch_size=64, lr=3e-3, patience=3, name=DEMO_MODEL,
            device=device, augment=False, crop_scale=0.0, rotate_deg=0.0, aux="none",
            model_config={"image_size": 32, "depth": 3, "latent_dim": 64, "width": 32},
        )
        res = train(home, cfg)
        say(f"[3/5] trained {res.name}: val_loss {res.metrics['val_loss']:.4f} in "
            f"{res.metrics['train_seconds']:.0f}s")
        model = home.catalog.model(DEMO_MODEL)
    home.catalog.set_active(DEMO_MODEL)

    st = build_index(home, model, device=device)
    say(f"[4/5] index built: {st.ntotal} vectors ({st.spec}) -> {st.path}")

    searcher = Searcher(home, DEMO_MODEL, device=device)
    rows = home.catalog.images(labels=["digit_3", "digit_7"])[:1] + home.catalog.images(
        labels=["digit_7"])[:1]
    for row in rows:
        hits = searcher.search(row.id, k=6)
        labels = ", ".join(f"{h.label}({h.score:.2f})" for h in hits[1:])
        say(f"      query id {row.id} ({row.label}) -> {labels}")

    res = evaluate_retrieval(home, model=DEMO_MODEL, k=10, device=device, progress=False)
    base = res["baseline_raw_pixels"]
    say(f"[5/5] retrieval precision@10: {DEMO_MODEL} {res['precision_at_k']:.3f} "
        f"(mAP {res['map']:.3f}) vs raw pixels {base['precision_at_k']:.3f} "
        f"(mAP {base['map']:.3f})")
    say(f"done in {time.perf_counter() - t0:.0f}s. Home: {home.root}")
    say(f"try: latentsight search {rows[0].path} --home {home.root} --k 5")
    print("", file=sys.stderr)
    return 0
