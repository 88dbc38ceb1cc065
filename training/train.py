"""Train an encoder on catalog images: a visible loop, AdamW, warm-up + cosine LR, early stopping.

    cfg = TrainConfig(model="ae", epochs=20)
    result = train(home, cfg)          # checkpoint saved and registered, now the active model
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from embedder.data import FileImages, iter_batches
from embedder.errors import CatalogError
from embedder.models import create, resolve_device, save_checkpoint
from index.home import Home
from index.paths import from_catalog


@dataclass
class TrainConfig:
    model: str = "ae"  # registry name: ae (vae, vit with issue 3)
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 64  # small batches generalize better on small catalogs
    lr: float = 2e-3  # peak AdamW learning rate after warm-up
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_frac: float = 0.05  # fraction of all steps spent warming the LR up linearly
    val_frac: float = 0.1  # held-out fraction for validation loss and early stopping
    patience: int = 5  # epochs without validation improvement before stopping
    seed: int = 0  # seeds the split, the init and the augmentations
    augment: bool = True  # random flips and 90-degree turns (textures have no "up")
    labels: list[str] = field(default_factory=list)  # restrict to these labels (empty = all)
    name: str | None = None  # model name; default "<kind>-<timestamp>"
    device: str = "auto"  # auto | cpu | cuda
    model_config: dict[str, Any] = field(default_factory=dict)  # e.g. image_size, latent_dim


@dataclass
class TrainResult:
    name: str
    kind: str
    checkpoint: str
    metrics: dict[str, Any]


def get_lr(step: int, total: int, *, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 5% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and 90-degree turns, per sample. x: (B, C, S, S)."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    turns = torch.randint(0, 4, (b,), generator=gen)
    x = x.clone()
    x[flip_h] = x[flip_h].flip(3)
    x[flip_v] = x[flip_v].flip(2)
    for t in (1, 2, 3):
        m = turns == t
        if m.any():
            x[m] = torch.rot90(x[m], t, dims=(2, 3))
    return x


def load_images(
    home: Home, *, labels: list[str], image_size: int, channels: int, progress: bool = True
) -> tuple[torch.Tensor, list[int]]:
    """Decode the selected catalog images into one uint8 tensor (N, C, S, S)."""
    rows = home.catalog.images(labels=labels or None)
    if not rows:
        what = f" with labels {labels}" if labels else ""
        raise CatalogError(f"No catalog images{what} to train on. Run: latentsight ingest PATH")
    paths = [from_catalog(r.path) for r in rows]  # catalog text form -> a path to open
    ds = FileImages([r.id for r in rows], paths, image_size=image_size, channels=channels)
    xs, ids = [], []
    bar = tqdm(total=len(ds), desc="loading", unit="img", file=sys.stderr,
               disable=not progress or None)
    for b_ids, x, bad in iter_batches(ds, batch_size=256):
        if len(b_ids):
            xs.append(x)
            ids.extend(b_ids.tolist())
        bar.update(len(b_ids) + len(bad))
    bar.close()
    if not xs:
        raise CatalogError("None of the selected catalog images could be read.")
    return torch.cat(xs), ids


def train(home: Home, cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train, keep the best validation checkpoint, register it as the active model."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = create(cfg.model, **cfg.model_config)
    mcfg = model.config
    data, _ids = load_images(home, labels=cfg.labels, image_size=mcfg.image_size,
                             channels=mcfg.channels, progress=progress)
    n = len(data)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(n * cfg.val_frac))) if n >= 10 else 0
    val, tr = data[perm[:n_val]], data[perm[n_val:]]
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(tr) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_frac))
    best, best_state, best_epoch, bad_epochs, history = math.inf, None, 0, 0, []
    step, t0 = 0, time.perf_counter()
    bar = tqdm(total=total, desc=f"train {cfg.model}", unit="step", file=sys.stderr,
               disable=not progress or None)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(tr), generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            x = tr[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]].float().div_(255.0)
            if cfg.augment:
                x = augment(x, gen)
            lr = get_lr(step, total, peak=cfg.lr, warmup=warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, _parts = model.loss(x.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running += float(loss.detach())
            step += 1
            bar.update(1)
        train_loss = running / steps_per_epoch
        val_loss = evaluate(model, val if n_val else tr, device)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr})
        bar.set_postfix(epoch=epoch, train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        print(f"epoch {epoch:3d} | train {train_loss:.5f} | val {val_loss:.5f} | lr {lr:.2e}",
              file=sys.stderr)
        if val_loss < best - 1e-6:
            best, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                print(f"early stop at epoch {epoch} (best {best_epoch})", file=sys.stderr)
                break
    bar.close()
    seconds = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    name = cfg.name or f"{cfg.model}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    if any(m.name == name for m in home.catalog.models()):
        raise CatalogError(f"A model named {name!r} exists already; pick another --name.")
    metrics = {
        "val_loss": best, "best_epoch": best_epoch, "epochs_run": len(history),
        "train_seconds": round(seconds, 2), "n_train": len(tr), "n_val": n_val,
        "device": str(device), "history": history,
    }
    directory = home.models_dir / name
    train_state = {k: v for k, v in asdict(cfg).items() if k != "model_config"}
    meta = {"name": name, "train": train_state, "metrics": metrics}
    sha = save_checkpoint(model, directory, meta)
    home.catalog.add_model(name=name, kind=cfg.model, config=asdict(mcfg),
                           checkpoint_path=home.rel(directory), checkpoint_sha256=sha,
                           metrics=metrics)
    return TrainResult(name=name, kind=cfg.model, checkpoint=str(directory), metrics=metrics)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: torch.Tensor, device: torch.device,
             batch_size: int = 256) -> float:
    """Mean loss over `data` in eval mode (no augmentation)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        x = data[i : i + batch_size].float().div_(255.0).to(device)
        loss, _ = model.loss(x)
        total += float(loss) * len(x)
        count += len(x)
    return total / max(1, count)


def _seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
