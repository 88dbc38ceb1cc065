"""Anomaly benchmark on NEU-CLS: one-class protocol, synthetic defects, scan throughput.

    nice -n 5 python benchmarks/anomaly_models.py [--epochs 8] [--classes crazing,patches]
        [--seed 0] [--scale 1.0] [--stride 48] [--no-write]

(a) One-class protocol per class: train (normal images only) on 80% of the
    class, calibrate on a held-out part of that 80%, test on the class's
    other 20% plus as many images drawn from the other five classes. Mean
    AUROC of every scorer beside the PCA-32 reconstruction baseline (64x64
    pixels), computed in the same run.
    `combined` (texture + knn, CombinedScorer's default parts) is computed from
    its parts' outputs, exactly as CombinedScorer does, to save a second pass.
(b) Synthetic defects (scratch, spot, patch of another class's texture;
    1-5% of the image area) pasted into the held-out 20%: AUROC of the
    defective copies against the clean originals, for all and for defects
    >= 2% of the area; localization = the heatmap's maximum falls inside the
    defect mask (grown by 4 px).
(c) Scan throughput (images/s, whole `scan_paths` incl. decoding, kNN
    neighbors and catalog writes) beside the bare model forward over the
    same tiles, measured in the same run.

Results are appended to docs/benchmarks.md under "## Anomaly (issue 4)".
Skips cleanly when ../shared/datasets/neu-cls is absent.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's

NEU = ROOT.parent / "shared" / "datasets" / "neu-cls"
SCORER_NAMES = ("mse", "ssim", "local-mse", "local-ssim", "knn", "texture", "combined")
SECTION = "## Anomaly (issue 4)"


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(y, np.r_[normal, anomalous]))


def pca_scores(train: np.ndarray, test: np.ndarray, k: int = 32) -> np.ndarray:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, random_state=0).fit(train)
    rec = pca.inverse_transform(pca.transform(test))
    return ((rec - test) ** 2).mean(1)


def pixels64(imgs: list[np.ndarray]) -> np.ndarray:
    from latentsight.embedder.images import resize

    return np.stack([resize(p, 64).astype(np.float32).ravel() / 255 for p in imgs])


def run(args: argparse.Namespace) -> str:
    from latentsight.embedder.images import decode_file
    from latentsight.embedder.scoring import make_scorer
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.manager import load_scorer
    from latentsight.training.anomaly import train_scorer
    from latentsight.training.defects import KINDS, paste_defect, peak_inside
    from latentsight.training.train import TrainConfig

    bank = {} if args.max_bank is None else {"max_bank": args.max_bank}
    classes = sorted(p.name for p in NEU.iterdir() if p.is_dir())
    if args.classes:
        classes = [c for c in classes if c in args.classes.split(",")]
    files = {c: sorted((NEU / c).iterdir()) for c in sorted(p.name for p in NEU.iterdir()
                                                             if p.is_dir())}
    rng = np.random.default_rng(args.seed)
    px = {c: [decode_file(f).pixels for f in fs] for c, fs in files.items()}
    work = Path(tempfile.mkdtemp(prefix="anomaly-bench-"))
    rows_a, rows_b, thr_rows, speed, text = [], [], [], None, ""
    t_all = time.perf_counter()
    for c in classes:
        t0 = time.perf_counter()
        perm = rng.permutation(len(files[c]))
        n_tr = int(0.8 * len(perm))
        tr_idx, te_idx = perm[:n_tr], perm[n_tr:]
        others = [(o, i) for o in files if o != c for i in range(len(files[o]))]
        te_idx = te_idx[: args.n_test]
        pick = rng.choice(len(others), len(te_idx), replace=False)
        other_px = [px[others[j][0]][others[j][1]] for j in pick]
        normal_px = [px[c][i] for i in te_idx]
        # the defective copies of the held-out normal images
        defect_px, masks, areas = [], [], []
        for n, img in enumerate(normal_px):
            kind = KINDS[n % len(KINDS)]
            area = float(rng.uniform(0.01, 0.05))
            o = others[int(rng.integers(len(others)))]
            d, m = paste_defect(img, kind, rng, area=area, donor=px[o[0]][o[1]])
            defect_px.append(d)
            masks.append(m)
            areas.append(float(m.mean()))
        areas_np = np.asarray(areas)
        # the scanning model: trained on the class's 80% only
        home = Home(work / c)
        src = work / f"{c}-train"
        src.mkdir()
        for i in tr_idx:
            os.symlink(files[c][i], src / files[c][i].name)
        ingest_paths(home, [src], label=c, progress=False, workers=0)
        cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=2e-3, patience=args.epochs,
                          name=f"scan-{c}", device="cpu", seed=args.seed,
                          model_config={"image_size": 64, "depth": 3, "width": args.width,
                                        "latent_dim": 128})
        res = train_scorer(home, c, cfg, fpr=0.01, scale=args.scale, build=False,
                           progress=False,
                           scorer_params={"stride": args.stride, **bank})
        model = home.catalog.model(res.name)
        encoder, stored = load_scorer(home, model, "cpu")  # the default scorer, as scans use it
        state = model.metrics["scoring"]
        cal_rows = home.catalog.images(ids=state["calib_ids"])
        cal_px = [decode_file(r.path).pixels for r in cal_rows]
        ref_px = [decode_file(r.path).pixels for r in home.catalog.images(ids=state["train_ids"])]
        t_train = time.perf_counter() - t0
        print(f"{c}: trained and calibrated in {t_train:.0f}s", flush=True)
        # the PCA-32 baseline, same split
        train_px = [px[c][i] for i in tr_idx]
        p_tr = pixels64(train_px)
        p_norm, p_other, p_def = (pca_scores(p_tr, pixels64(x))
                                  for x in (normal_px, other_px, defect_px))
        row_a = {"class": c, "pca32": auroc(p_norm, p_other)}
        big = areas_np >= 0.02
        row_b = {"class": c, "pca32": auroc(p_norm, p_def), "pca32_ge2": auroc(p_norm,
                                                                              p_def[big])}
        outs = {}
        for name in SCORER_NAMES[:-1]:
            if name == stored.name:
                sc = stored
                cal = sc.decision_function(cal_px)
            else:
                params = bank if name in ("knn", "texture") else {}
                sc = make_scorer(name, encoder, scale=args.scale, fpr=0.01, stride=args.stride,
                                 **params)
                sc.fit(cal_px, **({"reference": ref_px} if sc.uses_reference else {}))
                cal = sc.decision_scores_
            sm = [sc.score_and_map(d) for d in defect_px]
            outs[name] = {"cal": cal, "norm": sc.decision_function(normal_px),
                          "other": sc.decision_function(other_px),
                          "def": np.asarray([s_ for s_, _ in sm]), "maps": [m_ for _, m_ in sm]}
            print(f"  {name}: {time.perf_counter() - t0:.0f}s", flush=True)
        # combined = CombinedScorer(parts=(texture, knn)) computed from its parts' outputs
        a, b = outs["texture"], outs["knn"]
        scale_c = float(np.quantile((a["cal"] + b["cal"]) / 2, 0.99, method="higher"))
        outs["combined"] = {k: (a[k] + b[k]) / 2 / scale_c for k in ("norm", "other", "def")}
        outs["combined"]["maps"] = [(ma + mb) / 2 / scale_c
                                    for ma, mb in zip(a["maps"], b["maps"], strict=True)]
        for name in SCORER_NAMES:
            o = outs[name]
            row_a[name] = auroc(o["norm"], o["other"])
            row_b[name] = auroc(o["norm"], o["def"])
            row_b[f"{name}_ge2"] = auroc(o["norm"], o["def"][big])
            row_b[f"{name}_loc"] = float(np.mean([peak_inside(m_, mask, margin=4) for m_, mask
                                                  in zip(o["maps"], masks, strict=True)]))
        held = outs[stored.name]["norm"]
        thr_rows.append({"class": c, "fpr_heldout": float((held > 1.0).mean())})
        rows_a.append(row_a)
        rows_b.append(row_b)
        print(f"{c}: train+calibrate {t_train:.0f}s, total {time.perf_counter() - t0:.0f}s | "
              f"(a) " + " ".join(f"{k}={v:.3f}" for k, v in row_a.items() if k != "class")
              + " | (b>=2%) " + " ".join(f"{k}={v:.3f}" for k, v in row_b.items()
                                          if k.endswith("_ge2")), flush=True)
        if speed is None:
            speed = throughput(home, model, encoder, stored, normal_px + defect_px, work, args)
        text = report(rows_a, rows_b, thr_rows, *speed, time.perf_counter() - t_all, args,
                      n_classes=len(classes))
        if not args.no_write:
            write_section(text)
    shutil.rmtree(work, ignore_errors=True)
    return text


def throughput(home, model, encoder, scorer, images, work, args) -> tuple[float, float]:
    """(scan images/s, bare forward images/s) over the same 60 images, same run."""
    from latentsight.embedder.scoring import tile_positions
    from latentsight.index.manager import build_index
    from latentsight.index.scan import scan_paths
    from PIL import Image

    scan_dir = work / "scan"
    scan_dir.mkdir()
    for n, img in enumerate(images[:60]):
        Image.fromarray(img).save(scan_dir / f"{n:03d}.png")
    build_index(home, model, device="cpu", progress=False, workers=0)
    t0 = time.perf_counter()
    summ = scan_paths(home, [scan_dir], progress=False, device="cpu")
    scan_s = time.perf_counter() - t0
    n_img = len(summ.scored)
    tiles = []
    t = encoder.image_size
    for img in images[:60]:
        x, _ = scorer._prepare(img)
        for y in tile_positions(x.shape[1], t, args.stride):
            for x0 in tile_positions(x.shape[2], t, args.stride):
                tiles.append(x[:, y : y + t, x0 : x0 + t])
    batch = torch.stack(tiles)
    with torch.no_grad():
        t0 = time.perf_counter()
        for s in range(0, len(batch), 64):
            encoder.model.features(batch[s : s + 64])
        fwd_s = time.perf_counter() - t0
    return n_img / scan_s, n_img / fwd_s


def report(rows_a, rows_b, thr_rows, scan_ips, fwd_ips, total, args, n_classes=6) -> str:
    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    from latentsight.embedder.scoring import KNNScorer, TextureScorer

    def default_bank(cls: type) -> int:
        return inspect.signature(cls).parameters["max_bank"].default

    bank_text = (f"{args.max_bank} vectors" if args.max_bank is not None else
                 f"at most {default_bank(TextureScorer)} (texture) and "
                 f"{default_bank(KNNScorer)} (knn) vectors")
    lines = [SECTION, "",
             f"`benchmarks/anomaly.py` on NEU-CLS, seed {args.seed}, CPU (torch threads "
             f"{torch.get_num_threads()}), {args.epochs} epochs per class, 64-pixel tiles "
             f"{args.stride} px apart at scale {args.scale} (200x200 -> "
             f"{round(200 * args.scale)}), {args.n_test} held-out images per class (+ as many "
             f"others), kNN bank {bank_text}, AE width {args.width}, depth 3. "
             f"Total run time {total / 60:.1f} min on a 2-core machine "
             f"(load average {os.getloadavg()[0]:.1f} when written: other jobs shared it, so "
             "absolute times are inflated; ratios are measured in the same run)."
             + (f" **Partial: {len(rows_a)} of {n_classes} classes done when this was "
                "written.**" if len(rows_a) < n_classes else ""), "",
             "### (a) One-class protocol (AUROC; train on 80% of a class, test on its other "
             "20% + as many from the other classes)", "",
             "| class | PCA-32 | " + " | ".join(SCORER_NAMES) + " |",
             "|---" * (2 + len(SCORER_NAMES)) + "|"]
    for r in rows_a:
        lines.append(f"| {r['class']} | {r['pca32']:.3f} | "
                     + " | ".join(f"{r[n]:.3f}" for n in SCORER_NAMES) + " |")
    lines.append(f"| **mean** | **{mean(rows_a, 'pca32'):.3f}** | "
                 + " | ".join(f"**{mean(rows_a, n):.3f}**" for n in SCORER_NAMES) + " |")
    lines += ["", "### (b) Synthetic defects in held-out images (AUROC defective vs clean "
              "copies, all sizes 1-5% / only >= 2% of the area; localization = heatmap "
              "maximum inside the defect, 4 px margin)", "",
              "| scorer | AUROC all | AUROC >= 2% | localization |", "|---|---|---|---|",
              f"| PCA-32 (64x64 pixels) | {mean(rows_b, 'pca32'):.3f} | "
              f"{mean(rows_b, 'pca32_ge2'):.3f} | - |"]
    for n in SCORER_NAMES:
        lines.append(f"| {n} | {mean(rows_b, n):.3f} | {mean(rows_b, n + '_ge2'):.3f} | "
                     f"{mean(rows_b, n + '_loc'):.3f} |")
    lines += ["", "Per class, AUROC >= 2% for each scorer:", "",
              "| class | PCA-32 | " + " | ".join(SCORER_NAMES) + " |",
              "|---" * (2 + len(SCORER_NAMES)) + "|"]
    for r in rows_b:
        lines.append(f"| {r['class']} | {r['pca32_ge2']:.3f} | "
                     + " | ".join(f"{r[n + '_ge2']:.3f}" for n in SCORER_NAMES) + " |")
    fprs = ", ".join(f"{r['class']} {r['fpr_heldout']:.3f}" for r in thr_rows)
    from latentsight.embedder.scoring import DEFAULT_SCORER

    lines += ["", f"False-positive rate of the calibrated {DEFAULT_SCORER} threshold (target "
              f"0.01) on the held-out 20% normals: {fprs}.", "",
              "### (c) Scan throughput", "",
              f"`scan_paths` over 60 images (decode, tiles, kNN score + map, nearest normals "
              f"from the index, catalog writes): **{scan_ips:.1f} images/s**; the bare model "
              f"forward over the same tiles: {fwd_ips:.1f} images/s (scan = "
              f"{scan_ips / fwd_ips:.2f}x of the bare forward).", ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if SECTION in old:
        head, rest = old.split(SECTION, 1)
        nxt = rest.find("\n## ")
        old = head + (rest[nxt + 1 :] if nxt >= 0 else "")
    path.write_text(old.rstrip() + "\n\n" + text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="split, defects and training seed")
    ap.add_argument("--scale", type=float, default=1.0, help="the scorers' default: native size")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--stride", type=int, default=48, help="tile stride at the scaled size")
    ap.add_argument("--max-bank", type=int, default=None,
                    help="kNN memory bank size (default: each scorer's own)")
    ap.add_argument("--classes", default="")
    ap.add_argument("--n-test", type=int, default=60, help="held-out images per class")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not NEU.is_dir():
        print(f"skipped: NEU-CLS data set not found at {NEU}")
        return
    torch.set_num_threads(args.threads)
    text = run(args)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
