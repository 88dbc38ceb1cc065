"""Sparse classes on NEU-CLS: does GAN augmentation raise the minority class's F1?

For each of three minority classes: split every class 80/20 (seeded; the 20% is the
held-out real test set), cut the minority class's training images to 20, train the
conditional GAN on the cut training set (all six classes), generate gated synthetic
minority images up to the rich classes' count, then train a small CNN under five
conditions (none, classic, GAN, GAN + classic, and classic + oversampling the 20
real images to the same count, which separates the GAN's content from mere
rebalancing), 3 seeds each, and score per class on the held-out real images only.
Per-class FID and k-NN precision/recall of the GAN use features of a latentsight
autoencoder trained on the training pool (no test images).

    python benchmarks/augment.py            # ~30 min on 2 shared CPU cores
    python benchmarks/augment.py --quick    # a smoke run

Writes docs/benchmarks.md section "## Sparse classes / GAN (issue 6)" and a JSON.
Skips cleanly when ../shared/datasets/neu-cls is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's

NEU = ROOT.parent / "shared" / "datasets" / "neu-cls"
SECTION = "## Sparse classes / GAN (issue 6)"


def load_neu(size: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    from latentsight.embedder.encoder import prepare
    from latentsight.embedder.images import decode_file

    classes = sorted(p.name for p in NEU.iterdir() if p.is_dir())
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((NEU / name).iterdir()):
            xs.append(prepare(decode_file(f, mode="L").pixels, size, 1))
            ys.append(c)
    return torch.from_numpy(np.stack(xs)), np.array(ys), classes


def train_feature_ae(x: torch.Tensor, epochs: int, seed: int):
    """A small latentsight AE on the training pool: the feature extractor for FID/PR."""
    from latentsight.embedder.encoder import Encoder
    from latentsight.embedder.models import create

    torch.manual_seed(seed)
    model = create("ae", image_size=x.shape[-1], depth=3, latent_dim=64, width=16)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            loss, _ = model.loss(x[order[i : i + 64]].float().div(255.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Encoder(model, device="cpu")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minority", nargs="+", default=["crazing", "pitted_surface", "scratches"])
    ap.add_argument("--keep", type=int, default=20, help="minority training images kept")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--gan-steps", type=int, default=800)
    ap.add_argument("--gan-width", type=int, default=16)
    ap.add_argument("--gan-batch", type=int, default=32)
    ap.add_argument("--loss", default="hinge")
    ap.add_argument("--lr", type=float, default=3e-4, help="Adam lr of G and D")
    ap.add_argument("--clf-steps", type=int, default=300)
    ap.add_argument("--clf-width", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "docs" / "bench_augment.json"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", nargs="+", metavar="JSON",
                    help="only write the docs section from these result files (runs merged)")
    args = ap.parse_args()
    if args.render:
        docs = [json.loads(Path(p).read_text()) for p in args.render]
        merged = docs[0]
        for d in docs[1:]:
            merged["runs"].update(d["runs"])
        write_section(merged)
        return 0
    if not NEU.is_dir():
        print(f"skip: NEU-CLS not found at {NEU}")
        return 0
    if args.quick:
        args.minority, args.gan_steps, args.clf_steps, args.seeds = args.minority[:1], 20, 20, 1
    torch.set_num_threads(args.threads)

    from latentsight.training.gan import GANConfig, GANTrainConfig, train_gan
    from latentsight.training.gan.metrics import compare_sets, encoder_features
    from latentsight.training.gan.study import (
        ClassifierConfig,
        Condition,
        run_study,
        stratified_split,
    )
    from latentsight.training.gan.synth import MemorizationGate, generate_gated
    from latentsight.training.gan.train import save_grid

    t_all = time.perf_counter()
    x, y, classes = load_neu(args.size)
    tr, te = stratified_split(y, 0.2, seed=0)
    print(f"NEU-CLS: {len(x)} images at {args.size}x{args.size}; train pool {len(tr)}, "
          f"test {len(te)}; load {os.getloadavg()[0]:.1f}", flush=True)
    t = time.perf_counter()
    enc = train_feature_ae(x[tr], epochs=2 if args.quick else 6, seed=0)
    feats = encoder_features(enc, "bench-ae (trained on the training pool)")
    ae_seconds = time.perf_counter() - t
    x_te, y_te = x[te], torch.from_numpy(y[te])
    out: dict = {"config": vars(args), "classes": classes, "n_test_per_class": int(len(te) / 6),
                 "ae_seconds": round(ae_seconds, 1), "feature_extractor": feats.name, "runs": {}}
    grid_dir = ROOT / "docs" / "img"
    for minority in args.minority:
        m = classes.index(minority)
        rng = np.random.default_rng(1)
        pos_m = rng.permutation(tr[y[tr] == m])[: args.keep]
        keep = np.sort(np.concatenate([tr[y[tr] != m], pos_m]))
        x_tr, y_tr = x[keep], torch.from_numpy(y[keep])
        print(f"\n== minority {minority}: {len(pos_m)} training images (others "
              f"{int((y[keep] != m).sum() / 5)} each)", flush=True)
        t = time.perf_counter()
        cfg = GANTrainConfig(steps=args.gan_steps, batch_size=args.gan_batch, loss=args.loss,
                             lr_g=args.lr, lr_d=args.lr,
                             log_every=max(1, args.gan_steps // 40), device="cpu", seed=0)
        res = train_gan(x_tr, y_tr, classes, cfg,
                        gan=GANConfig(image_size=args.size, g_width=args.gan_width,
                                      d_width=args.gan_width), progress=False)
        gan_seconds = time.perf_counter() - t
        print(f"GAN {args.gan_steps} steps in {gan_seconds:.0f}s; warnings: "
              f"{res.diagnostics['warnings'] or 'none'}", flush=True)
        n_synth = int(np.median(np.bincount(y[keep], minlength=6))) - len(pos_m)
        gate = MemorizationGate(feats(x[pos_m].float().div(255.0)))
        synth, counts = generate_gated(res.model, minority, n_synth, embed=feats,
                                       memorization=gate, seed=0)
        synth_u8 = (synth * 255).round().to(torch.uint8)
        if not args.quick:
            grid = torch.cat([x[pos_m][:8].float().div(255.0), synth[:16]])
            save_grid(grid, grid_dir / f"gan_{minority}.png", nrow=8)
        # per-class FID / precision / recall: generated vs held-out real
        fidpr = {}
        gen = torch.Generator().manual_seed(5)
        for c, name in enumerate(classes):
            real_f = feats(x_te[y_te == c].float().div(255.0))
            fake_f = feats(res.model.sample(torch.full((100,), c), generator=gen))
            ref_f = feats(x_tr[y_tr == c].float().div(255.0))  # the real-vs-real floor
            fidpr[name] = {**compare_sets(real_f, fake_f),
                           "fid_real_train_vs_test": round(
                               compare_sets(real_f, ref_f)["fid"], 4)}
        # the five arms of the classifier study
        syn_y = torch.full((len(synth_u8),), m)
        over = torch.from_numpy(pos_m[rng.integers(0, len(pos_m), len(synth_u8))])
        conds = [
            Condition("none"),
            Condition("classic", classic=True),
            Condition("gan", extra_x=synth_u8, extra_y=syn_y),
            Condition("gan+classic", classic=True, extra_x=synth_u8, extra_y=syn_y),
            Condition("classic+oversample", classic=True, extra_x=x[over], extra_y=syn_y),
        ]
        t = time.perf_counter()
        study = run_study(x_tr, y_tr, x_te, y_te, classes, conds, seeds=range(args.seeds),
                          cfg=ClassifierConfig(steps=args.clf_steps, width=args.clf_width,
                                               batch_size=32))
        clf_seconds = time.perf_counter() - t
        for name, r in study.items():
            v = r["per_class"][minority]
            print(f"  {name:20s} minority F1 {v['f1_mean']:.3f} +- {v['f1_std']:.3f} "
                  f"(P {v['precision_mean']:.3f}, R {v['recall_mean']:.3f}); macro F1 "
                  f"{r['macro_f1_mean']:.3f}", flush=True)
        out["runs"][minority] = {
            "n_minority_train": len(pos_m), "n_synthetic": len(synth_u8), "gate": counts,
            "gate_min_distance": round(gate.min_distance, 4),
            "gan_seconds": round(gan_seconds, 1), "clf_seconds": round(clf_seconds, 1),
            "diagnostics": res.diagnostics, "gan_history_tail": res.history[-3:],
            "fid_pr": fidpr,
            "study": {k: {kk: vv for kk, vv in v.items()} for k, v in study.items()},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out["load_end"] = round(os.getloadavg()[0], 1)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\ntotal {out['total_seconds']:.0f}s", flush=True)
    if not args.no_write and not args.quick:
        write_section(out)
    return 0


def write_section(out: dict) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    body = render(out)
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + body
    path.write_text(text)
    print(f"wrote {path}")


def render(out: dict) -> str:
    c = out["config"]
    arms = ["none", "classic", "gan", "gan+classic", "classic+oversample"]
    lines = [
        SECTION, "",
        f"`python benchmarks/augment.py` on NEU-CLS at {c['size']}x{c['size']} grayscale. "
        f"Every class split 80/20 (seed 0); the minority class keeps {c['keep']} training "
        f"images; the GAN ({c['loss']} loss, widths {c['gan_width']}, batch {c['gan_batch']}, "
        f"{c['gan_steps']} steps, lr {c['lr']}, DiffAugment, EMA) trains on that cut set; "
        "synthetic minority "
        "images (memorization-gated) fill it up to the rich classes' count. Classifier: "
        f"small CNN (width {c['clf_width']}, {c['clf_steps']} steps, batch 32), {c['seeds']} "
        f"seeds; scores on the {out['n_test_per_class']} held-out real test images per class "
        "only. `classic+oversample` repeats the real minority images to the same count as the "
        "synthetic ones: it separates what the GAN's images add from plain rebalancing.", "",
        "Minority-class F1 on held-out real images (mean +- std over seeds):", "",
        "| minority | " + " | ".join(arms) + " | GAN+classic - classic |",
        "|---|" + "---|" * (len(arms) + 1),
    ]
    for mi, run in out["runs"].items():
        s = run["study"]
        cells = [f"{s[a]['per_class'][mi]['f1_mean']:.3f} +- {s[a]['per_class'][mi]['f1_std']:.3f}"
                 for a in arms]
        delta = (s["gan+classic"]["per_class"][mi]["f1_mean"]
                 - s["classic"]["per_class"][mi]["f1_mean"]) * 100
        lines.append(f"| {mi} | " + " | ".join(cells) + f" | {delta:+.1f} points |")
    lines += ["", "Minority precision / recall (mean over seeds):", "",
              "| minority | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for mi, run in out["runs"].items():
        s = run["study"]
        cells = [f"P {s[a]['per_class'][mi]['precision_mean']:.2f} / R "
                 f"{s[a]['per_class'][mi]['recall_mean']:.2f}" for a in arms]
        lines.append(f"| {mi} | " + " | ".join(cells) + " |")
    lines += ["", f"GAN quality per class, features: {out['feature_extractor']} "
              "(100 generated vs the held-out real images; `floor` = FID of the real training "
              "images of the class vs its test images):", "",
              "| minority run | class | FID | floor | precision | recall |",
              "|---|---|---|---|---|---|"]
    for mi, run in out["runs"].items():
        for name, v in run["fid_pr"].items():
            tag = f"**{name}**" if name == mi else name
            lines.append(f"| {mi} | {tag} | {v['fid']:.3f} | {v['fid_real_train_vs_test']:.3f} "
                         f"| {v['precision']:.2f} | {v['recall']:.2f} |")
    lines += ["", "| minority run | GAN s | classifier s (all arms) | generated | rejected as "
              "near-copies | kept | diagnostics |", "|---|---|---|---|---|---|---|"]
    for mi, run in out["runs"].items():
        warn = "; ".join(run["diagnostics"]["warnings"]) or "none"
        lines.append(f"| {mi} | {run['gan_seconds']:.0f} | {run['clf_seconds']:.0f} | "
                     f"{run['gate']['generated']} | {run['gate']['rejected_memorized']} | "
                     f"{run['n_synthetic']} | {warn} |")
    lines += ["", f"Total {out.get('total_seconds', 0):.0f} s on 2 CPU cores shared with other "
              f"jobs (1-minute load average {out.get('load_end', 0)} at the end): timings are "
              "not comparable across runs."]
    if out.get("note"):
        lines += ["", out["note"]]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
