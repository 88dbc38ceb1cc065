"""`eval gan` and `eval augment` on the catalog: per-class FID/PR and the augmentation study.

The real images compared against are the GAN's held-out images when it was trained
with `--holdout` (it never saw them), else all real images of the class, and the
result says which.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.manager import load_encoder
from latentsight.training.gan.metrics import compare_sets, encoder_features, inception_features
from latentsight.training.gan.study import ClassifierConfig, Condition, run_study, stratified_split
from latentsight.training.gan.train import gan_meta, load_generator, load_real_images


def evaluate_gan(
    home: Home,
    *,
    gan: str | None = None,
    n: int = 200,
    encoder_model: str | None = None,
    inception: str | None = None,
    k: int = 3,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """FID, precision and recall per class between real and generated images."""
    model, row = load_generator(home, gan)
    meta = gan_meta(row, home)
    if inception:
        feats = inception_features(inception, device="cpu" if device == "auto" else device)
    else:
        enc_row = home.catalog.model(encoder_model)
        feats = encoder_features(load_encoder(home, enc_row, device), enc_row.name)
    cfg = model.config
    x, y, classes, ids = load_real_images(home, labels=cfg.classes, image_size=cfg.image_size,
                                          channels=cfg.channels)
    held = set(meta.get("holdout_image_ids") or [])
    use_held = bool(held)
    gen = torch.Generator().manual_seed(seed)
    per_class: dict[str, Any] = {}
    for name in cfg.classes:
        if name not in classes:
            continue
        c = classes.index(name)
        pick = [i for i, (yy, iid) in enumerate(zip(y.tolist(), ids, strict=True))
                if yy == c and (not use_held or iid in held)]
        if len(pick) < 2:
            per_class[name] = {"error": f"only {len(pick)} real image(s) to compare with"}
            continue
        real = feats(x[pick].float().div(255.0))
        fake = feats(model.sample(torch.full((n,), cfg.classes.index(name)), generator=gen))
        per_class[name] = compare_sets(real, fake, k=k)
    return {"gan": row.name, "feature_extractor": feats.name, "k": k, "n_generated": n,
            "real_set": "held-out images (never seen by the GAN)" if use_held
            else "all real images of the class (the GAN trained on them)",
            "per_class": per_class}


def augment_study_on_catalog(
    home: Home,
    label: str,
    *,
    gan: str | None = None,
    n_synth: int | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    test_frac: float = 0.2,
    classic: bool = False,
    steps: int = 600,
    device: str = "cpu",
) -> dict[str, Any]:
    """Classifier on real vs real + synthetic `label` images; scored on real test images only."""
    model, row = load_generator(home, gan)
    meta = gan_meta(row, home)
    cfg = model.config
    if label not in cfg.classes:
        msg = f"Label {label!r} unknown to GAN {row.name!r}. It knows: {cfg.classes}."
        raise CatalogError(msg)
    x, y, classes, ids = load_real_images(home, labels=cfg.classes, image_size=cfg.image_size,
                                          channels=cfg.channels)
    held = set(meta.get("holdout_image_ids") or [])
    if held:
        te = np.array([i for i, iid in enumerate(ids) if iid in held], dtype=np.int64)
        tr = np.array([i for i, iid in enumerate(ids) if iid not in held], dtype=np.int64)
        note = "test = the GAN's held-out images (it never saw them)"
    else:
        tr, te = stratified_split(y.numpy(), test_frac, seed=0)
        note = ("WARNING: the GAN was trained without --holdout, so it saw these test images; "
                "the synthetic arm's scores are optimistic")
    c = classes.index(label)
    counts = np.bincount(y[tr].numpy(), minlength=len(classes))
    n_synth = n_synth if n_synth is not None else max(0, int(np.median(counts)) - int(counts[c]))
    synth = (model.sample(torch.full((n_synth,), cfg.classes.index(label)),
                          generator=torch.Generator().manual_seed(99)) * 255).round().to(
        torch.uint8)
    extra_y = torch.full((n_synth,), c)
    conds = [Condition("real"), Condition("real+synthetic", extra_x=synth, extra_y=extra_y)]
    if classic:
        conds += [Condition("classic", classic=True),
                  Condition("classic+synthetic", classic=True, extra_x=synth, extra_y=extra_y)]
    res = run_study(x[tr], y[tr], x[te], y[te], classes, conds, seeds=seeds,
                    cfg=ClassifierConfig(steps=steps, device=device))
    return {"gan": row.name, "label": label, "n_synthetic": n_synth, "seeds": list(seeds),
            "n_train_real": len(tr), "n_test_real": len(te), "test_set": note,
            "train_counts": {cl: int(counts[i]) for i, cl in enumerate(classes)},
            "conditions": {k: {kk: vv for kk, vv in v.items() if kk != "per_seed"}
                           for k, v in res.items()}}
