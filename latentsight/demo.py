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

from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.manager import build_index
from latentsight.index.search import Searcher
from latentsight.training.evaluate import evaluate_retrieval
from latentsight.training.train import TrainConfig, train

DEMO_MODEL = "demo-ae"
DEMO_GAN = "demo-gan"
SPARSE_DIGIT = "digit_3"


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


def _cli() -> str:
    """How the user ran latentsight (`.venv/bin/latentsight` under `make demo`)."""
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 if Path(argv0).name == "latentsight" else "latentsight"


def say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(home: Home, *, epochs: int = 8, device: str = "auto") -> int:
    t0 = time.perf_counter()
    data = home.root / "demo-data"
    n = export_digits(data)
    say(f"[1/6] digits exported to {data} ({n} new PNG files)")

    rep = ingest_paths(home, [str(data)], labels_from_folders=True, source="demo")
    say(f"[2/6] ingest: added {rep.added}, duplicates {rep.duplicates}, failed {len(rep.failed)}")

    try:
        model = home.catalog.model(DEMO_MODEL)
        say(f"[3/6] model {DEMO_MODEL} exists already; reusing it")
    except CatalogError:
        # InfoNCE on views with the nuisances a search should ignore (small crops, rotations,
        # brightness/contrast, noise; no flips or turns: a 6 is not a 9). Reconstruction
        # alone ties raw pixels here; this beats them on the invariance step (5b).
        cfg = TrainConfig(
            model="ae", epochs=epochs, batch_size=64, lr=3e-3, patience=3, name=DEMO_MODEL,
            device=device, augment=False, crop_scale=0.85, rotate_deg=20.0, aux="infonce",
            jitter=0.3, noise=0.12,
            pixel_pca=0,  # the learned embedding alone, as the demo's figures and screenshots
            model_config={"image_size": 32, "depth": 3, "latent_dim": 64, "width": 16},
        )
        res = train(home, cfg)
        say(f"[3/6] trained {res.name}: val_loss {res.metrics['val_loss']:.4f} in "
            f"{res.metrics['train_seconds']:.0f}s")
        model = home.catalog.model(DEMO_MODEL)
    home.catalog.set_active(DEMO_MODEL)

    st = build_index(home, model, device=device)
    say(f"[4/6] index built: {st.ntotal} vectors ({st.spec}) -> {st.path}")

    searcher = Searcher(home, DEMO_MODEL, device=device)
    rows = home.catalog.images(labels=["digit_3", "digit_7"])[:1] + home.catalog.images(
        labels=["digit_7"])[:1]
    for row in rows:
        hits = searcher.search(row.id, k=6)
        labels = ", ".join(f"{h.label}({h.score:.2f})" for h in hits[1:])
        say(f"      query id {row.id} ({row.label}) -> {labels}")

    res = evaluate_retrieval(home, model=DEMO_MODEL, k=10, device=device, progress=False)
    base = res["baseline_raw_pixels"]
    say(f"[5/6] retrieval precision@10: {DEMO_MODEL} {res['precision_at_k']:.3f} "
        f"(mAP {res['map']:.3f}) vs raw pixels {base['precision_at_k']:.3f} "
        f"(mAP {base['map']:.3f})")
    invariance_step(home, device=device)
    synthesis_step(home, device=device)
    run_scan_demo(home, data, epochs=epochs, device=device)
    say(f"done in {time.perf_counter() - t0:.0f}s. Home: {home.root}")
    say(f"try: latentsight search {rows[0].path} --home {home.root} --k 5")
    say(f"open the dashboard on this data: {_cli()} dashboard --home {home.root}")
    print("", file=sys.stderr)
    return 0


def invariance_step(home: Home, *, device: str = "auto", n_queries: int = 300) -> dict:
    """Why learn an embedding: queries are held-out digits rotated, shifted, brightened or
    noised (one nuisance each); relevant = same digit. The demo model beside raw pixels and
    PCA-64, macro precision@10 (mean over digits), on the same images."""
    from latentsight.embedder.images import decode_file
    from latentsight.index.manager import load_encoder
    from latentsight.index.paths import from_catalog
    from latentsight.training.evaluate import invariance_scores, perturb

    t0 = time.perf_counter()
    rows = [r for r in home.catalog.images(labeled_only=True) if not r.synthetic]
    rng = np.random.default_rng(0)
    held = set(rng.choice(len(rows), min(n_queries, len(rows) // 3), replace=False).tolist())
    px = [decode_file(from_catalog(r.path)).pixels for r in rows]
    gallery = [p for i, p in enumerate(px) if i not in held]
    g_labels = [r.label for i, r in enumerate(rows) if i not in held]
    queries = [perturb(px[i], rng) for i in sorted(held)]
    q_labels = [rows[i].label for i in sorted(held)]
    enc = load_encoder(home, home.catalog.model(DEMO_MODEL), device)
    res = invariance_scores(enc, gallery, g_labels, queries, q_labels, k=10)
    m, raw, pca = res["model"], res["raw_pixels"], res["pca64"]
    say(f"[5b/6] invariance ({len(queries)} held-out digits, each rotated, shifted, brightened "
        f"or noised, against {len(gallery)}): macro precision@10 {DEMO_MODEL} "
        f"{m['macro_precision_at_k']:.3f} vs raw pixels {raw['macro_precision_at_k']:.3f}, "
        f"PCA-64 {pca['macro_precision_at_k']:.3f} (micro {m['precision_at_k']:.3f} / "
        f"{raw['precision_at_k']:.3f} / {pca['precision_at_k']:.3f}; "
        f"{time.perf_counter() - t0:.0f}s)")
    return res


def synthesis_step(home: Home, *, device: str = "auto", keep: int = 15, steps: int = 300) -> dict:
    """Make one digit sparse, train the conditional GAN briefly, synthesize, measure F1.

    In memory: digits at 16x16, a stratified 75/25 split, `keep` training images of
    SPARSE_DIGIT. The GAN (registered as DEMO_GAN, role generator) trains on that cut
    set; gated samples go into the catalog (source=synthetic, left out of search);
    a small CNN is trained on real vs real + synthetic (2 seeds) and its F1 on the
    sparse digit, on held-out real digits, is printed. One split, a short run: it
    shows the mechanism, not a general result (see docs/benchmarks.md for NEU-CLS).
    """
    from dataclasses import asdict

    import torch
    from sklearn.datasets import load_digits

    from latentsight.training.gan import GANConfig, GANTrainConfig, train_gan
    from latentsight.training.gan.study import (
        ClassifierConfig,
        Condition,
        run_study,
        stratified_split,
    )
    from latentsight.training.gan.synth import synthesize
    from latentsight.training.gan.train import load_generator, save_gan, save_grid

    t0 = time.perf_counter()
    digits = load_digits()
    px = np.clip(digits.images / 16.0 * 255.0, 0, 255).astype(np.uint8)  # (N, 8, 8)
    x = torch.from_numpy(np.stack([np.asarray(Image.fromarray(p).resize(
        (16, 16), Image.Resampling.BILINEAR)) for p in px]))[:, None]  # (N, 1, 16, 16)
    y = torch.from_numpy(digits.target.astype(np.int64))
    classes = [f"digit_{i}" for i in range(10)]
    sparse = classes.index(SPARSE_DIGIT)
    tr, te = stratified_split(y.numpy(), 0.25, seed=0)
    tr = np.concatenate([tr[y[tr] != sparse], tr[y[tr] == sparse][:keep]])
    x_tr, y_tr = x[tr], y[tr]
    try:
        model, row = load_generator(home, DEMO_GAN)
        say(f"[6/6] GAN {DEMO_GAN} exists already; reusing it")
    except CatalogError:
        cfg = GANTrainConfig(steps=steps, batch_size=32, lr_g=5e-4, lr_d=5e-4, sample_every=0,
                             log_every=25, device=device)
        res = train_gan(x_tr, y_tr, classes, cfg, gan=GANConfig(image_size=16, g_width=16,
                                                                d_width=16), progress=False)
        model = res.model
        directory = home.models_dir / DEMO_GAN
        metrics = {"train_seconds": round(res.seconds, 2), "steps": steps,
                   "diagnostics": res.diagnostics, "history": res.history,
                   "sparse": SPARSE_DIGIT, "kept": keep}
        sha = save_gan(model, directory, {"name": DEMO_GAN, "metrics": metrics})
        home.catalog.add_model(name=DEMO_GAN, kind=model.kind, config=asdict(model.config),
                               checkpoint_path=home.rel(directory), checkpoint_sha256=sha,
                               metrics=metrics, activate=False, role="generator")
        _, row = load_generator(home, DEMO_GAN)
        warn = "; ".join(res.diagnostics["warnings"]) or "no failure signature"
        say(f"[6/6] GAN trained on {len(tr)} digits with only {keep} of {SPARSE_DIGIT}: "
            f"{steps} steps in {res.seconds:.0f}s ({warn})")
    gen = torch.Generator().manual_seed(0)
    grid = home.reports_dir / "demo_gan_samples.png"
    save_grid(model.sample(torch.arange(10).repeat_interleave(8), generator=gen), grid, nrow=8)
    say(f"      sample grid (one row per digit): {grid}")
    if home.catalog.count_images(label=SPARSE_DIGIT, synthetic=True) == 0:
        rep = synthesize(home, model, row, SPARSE_DIGIT, 16, seed=0, device=device,
                         plausibility="auto", notify=lambda m: say(f"      {m}"))
        say(f"      synth: {rep.accepted} {SPARSE_DIGIT} images into the catalog "
            f"(source=synthetic; {rep.rejected_memorized} near-copies rejected); search "
            "leaves them out unless --include-synthetic")
    n_synth = int(np.median(np.bincount(y_tr.numpy()))) - keep
    synth = (model.sample(torch.full((n_synth,), sparse), generator=gen) * 255).round()
    conds = [Condition("real"), Condition("real+synthetic", extra_x=synth.to(torch.uint8),
                                          extra_y=torch.full((n_synth,), sparse))]
    study = run_study(x_tr, y_tr, x[te], y[te], classes, conds, seeds=(0, 1),
                      cfg=ClassifierConfig(steps=200, width=8, batch_size=32))
    a = study["real"]["per_class"][SPARSE_DIGIT]
    b = study["real+synthetic"]["per_class"][SPARSE_DIGIT]
    say(f"      {SPARSE_DIGIT} F1 on held-out real digits: real only {a['f1_mean']:.3f} "
        f"(recall {a['recall_mean']:.2f}) -> with {n_synth} synthetic {b['f1_mean']:.3f} "
        f"(recall {b['recall_mean']:.2f}); 2 seeds, one split, {time.perf_counter() - t0:.0f}s")
    say("      note: much of such a gain can come from rebalancing alone; on NEU-CLS, repeating "
        "the real images did as well (docs/benchmarks.md)")
    return {"real": a, "real+synthetic": b, "n_synthetic": n_synth}


DEMO_SCANNER = "demo-scan"


def run_scan_demo(home: Home, data: Path, *, epochs: int = 8, device: str = "auto") -> float:
    """Anomaly step: train on digit 0 only, scan the other digits, print AUROC; returns it."""
    from latentsight.index.scan import scan_paths
    from latentsight.training.anomaly import evaluate_anomaly, train_scorer

    t0 = time.perf_counter()
    try:
        home.catalog.model(DEMO_SCANNER)
        say(f"[scan 1/3] model {DEMO_SCANNER} exists already; reusing it")
    except CatalogError:
        cfg = TrainConfig(  # half the epochs: one-digit-vs-rest is easy, the demo stays short
            epochs=max(2, epochs // 2), batch_size=64, lr=3e-3, patience=3, name=DEMO_SCANNER,
            device=device,
            model_config={"image_size": 32, "depth": 3, "latent_dim": 64, "width": 16},
        )
        # The default scorer (`detector`), the engine scans, the dashboard and the GAN gate use.
        res = train_scorer(home, "digit_0", cfg, fpr=0.01, progress=False)
        say(f"[scan 1/3] trained {res.name} on {res.n_train} images of digit 0 only; threshold "
            f"calibrated on {res.n_calib} held-out ones (target false-positive rate 0.01); "
            f"scorer {res.scorer} (the default; --scorer picks another)")
    ev = evaluate_anomaly(home, normal_label="digit_0", model=DEMO_SCANNER, device=device,
                          max_per_label=40, progress=False)
    say(f"[scan 2/3] digit 0 = normal, digits 1-9 = anomalies: AUROC {ev['auroc']:.3f}, "
        f"AUPR {ev['aupr']:.3f}, F1 {ev['f1']:.3f}, false-positive rate {ev['fpr']:.3f} "
        f"(over {ev['n_normal']} held-out zeros and {ev['n_anomalous']} other digits)")
    report = home.reports_dir / "demo-scan"
    summary = scan_paths(home, [data / "digit_0", data / "digit_6"], model=DEMO_SCANNER,
                         report_dir=report, device=device, progress=False)
    say(f"[scan 3/3] scanned digit_0/ and digit_6/: {summary.n_flagged} of "
        f"{len(summary.scored)} flagged; report: {report / 'report.html'} "
        f"({time.perf_counter() - t0:.0f}s)")
    try:
        home.catalog.set_active(DEMO_MODEL)  # search keeps using the retrieval model
    except CatalogError:
        pass
    say(f"try: latentsight scan {data / 'digit_8'} --model {DEMO_SCANNER} --home {home.root}")
    return float(ev["auroc"])
