"""The augmentation study: does adding synthetic images of a sparse class help a classifier?

A small CNN is trained from scratch under each condition (real only, real + classic
augmentation, real + synthetic, ...) for the same number of steps, several seeds
each, and scored per class (precision, recall, F1) on held-out real images only.
Results are mean +- std over the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from latentsight.training.train import augment as flips_and_turns
from sklearn.metrics import precision_recall_fscore_support
from torch import nn


@dataclass
class ClassifierConfig:
    steps: int = 600  # optimizer steps, the same for every condition (not epochs)
    batch_size: int = 64  # images per step
    lr: float = 3e-3  # peak AdamW learning rate (cosine-decayed)
    width: int = 16  # channels of the first stage; doubles per stage
    device: str = "cpu"  # the study is small; cpu is the default


@dataclass
class Condition:
    """One arm of the study: extra training images and whether classic augmentation is on."""

    name: str
    classic: bool = False  # random flips, 90-degree turns and pad-and-crop shifts
    extra_x: torch.Tensor | None = None  # uint8 (M, C, S, S) added to the real training set
    extra_y: torch.Tensor | None = None  # (M,) class ids


class SmallCNN(nn.Module):
    """Three conv stages (conv-BN-ReLU x2, max-pool), global average pool, linear head."""

    def __init__(self, *, channels: int, n_classes: int, width: int = 16) -> None:
        super().__init__()
        layers, cin = [], channels
        for i in range(3):
            w = width * 2**i
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.MaxPool2d(2)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))  # (B, n_classes)


def classic_augment(x: torch.Tensor, gen: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Per-sample flips, 90-degree turns and a random crop after reflect padding. x (B, C, S, S)."""
    b, _c, s, _ = x.shape
    pad = max(1, s // 8) if pad is None else pad
    x = flips_and_turns(x, gen)  # the encoders' classic augmentation, same random draws
    padded = F.pad(x, [pad] * 4, mode="reflect")  # (B, C, S+2p, S+2p)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    return torch.stack([padded[i, :, oy[i] : oy[i] + s, ox[i] : ox[i] + s] for i in range(b)])


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, cfg: ClassifierConfig, *, classic: bool,
    seed: int,
) -> SmallCNN:
    """Train a SmallCNN on uint8 images x (N, C, S, S) with class ids y (N,)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(cfg.device)
    net = SmallCNN(channels=x.shape[1], n_classes=n_classes, width=cfg.width).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    net.train()
    for _step in range(cfg.steps):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
        xb = x[idx].float().div_(255.0)
        if classic:
            xb = classic_augment(xb, gen)
        loss = F.cross_entropy(net(xb.to(dev)), y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    dev = next(net.parameters()).device
    out = [net(x[i : i + batch_size].float().div(255.0).to(dev)).argmax(1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
                     ) -> dict[str, dict[str, float]]:
    p, r, f, n = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(classes))), zero_division=0)
    return {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                "support": int(n[i])} for i, c in enumerate(classes)}


def run_study(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    classes: Sequence[str],
    conditions: Sequence[Condition],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    cfg: ClassifierConfig | None = None,
) -> dict[str, dict]:
    """Per condition: per-class precision/recall/F1 mean and std over seeds, on real test images.

    Returns {condition: {"per_class": {label: {"f1_mean", "f1_std", ...}},
    "per_seed": [...], "n_train": int, "macro_f1_mean", "macro_f1_std"}}.
    """
    cfg = cfg or ClassifierConfig()
    results: dict[str, dict] = {}
    for cond in conditions:
        x, y = train_x, train_y
        if cond.extra_x is not None and len(cond.extra_x):
            x = torch.cat([train_x, cond.extra_x])
            y = torch.cat([train_y, cond.extra_y])
        per_seed = []
        for seed in seeds:
            net = train_classifier(x, y, len(classes), cfg, classic=cond.classic, seed=seed)
            per_seed.append(per_class_scores(test_y.numpy(), predict(net, test_x), classes))
        results[cond.name] = summarize(per_seed, classes, n_train=len(x))
    return results


def summarize(per_seed: list[dict], classes: Sequence[str], *, n_train: int) -> dict:
    out: dict = {"per_class": {}, "per_seed": per_seed, "n_train": n_train}
    for c in classes:
        row = {}
        for m in ("precision", "recall", "f1"):
            v = np.array([s[c][m] for s in per_seed])
            row[f"{m}_mean"], row[f"{m}_std"] = float(v.mean()), float(v.std())
        row["support"] = per_seed[0][c]["support"]
        out["per_class"][c] = row
    macro = np.array([np.mean([s[c]["f1"] for c in classes]) for s in per_seed])
    out["macro_f1_mean"], out["macro_f1_std"] = float(macro.mean()), float(macro.std())
    return out


def stratified_split(
    y: np.ndarray, test_frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) with `test_frac` of every class in test (at least 1 each)."""
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(y):
        pos = rng.permutation(np.flatnonzero(y == c))
        k = max(1, int(round(len(pos) * test_frac))) if len(pos) > 1 else 0
        te.extend(pos[:k])
        tr.extend(pos[k:])
    return np.sort(np.array(tr, dtype=np.int64)), np.sort(np.array(te, dtype=np.int64))
