"""Train the conditional GAN: a visible loop, three losses, EMA, DiffAugment, failure checks.

    cfg = GANTrainConfig(steps=2000, loss="hinge")
    res = train_gan(x_uint8, y, classes, cfg, gan=GANConfig(image_size=32))
    res.model.sample(torch.tensor([0, 0, 1]))       # (3, C, S, S) in [0, 1]

`train_gan_on_catalog` does the same on the catalog's real labeled images and
registers the result as a model with role "generator" (never the active encoder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from latentsight.embedder.data import FileImages, iter_batches
from latentsight.embedder.errors import ModelError
from latentsight.embedder.models import (
    CONFIG_FILE,
    checked_config,
    load_weights,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)
from latentsight.embedder.progress import bar_disabled
from latentsight.index.catalog import check_model_name
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.training.gan.diffaug import POLICIES, diff_augment
from latentsight.training.gan.model import ConditionalGAN, GANConfig, to_signed
from tqdm import tqdm

log = logging.getLogger(__name__)

LOSSES = ("ns", "hinge", "wgan-gp")
# The discriminator loss when D cannot tell real from fake (logits 0): the reference
# for "collapsed to ~0". WGAN's critic loss has no such level.
CHANCE_D_LOSS = {"ns": 2 * math.log(2), "hinge": 2.0}


@dataclass
class GANTrainConfig:
    steps: int = 2000  # generator updates; a few thousand suffice for 32x32 on small data
    batch_size: int = 64  # real images per step (and as many fakes)
    loss: str = "hinge"  # ns (non-saturating) | hinge | wgan-gp
    lr_g: float = 2e-4  # Adam learning rate of the generator
    lr_d: float = 2e-4  # Adam learning rate of the discriminator
    beta1: float = 0.0  # Adam beta1; 0 is the usual choice with spectral norm
    beta2: float = 0.99  # Adam beta2
    d_steps: int = 1  # discriminator updates per generator update (WGAN-GP likes more)
    gp_weight: float = 10.0  # gradient-penalty weight (wgan-gp only)
    ema_beta: float = 0.999  # EMA decay of the generator weights (warmed up early on)
    diffaug: list[str] = field(default_factory=lambda: list(POLICIES))  # empty = off
    class_power: float = 0.5  # class sampling prob ~ count**power: 0 uniform, 1 by image
    sample_every: int = 500  # save a sample grid every N steps (0 = only at the end)
    log_every: int = 50  # record the loss curves every N steps
    seed: int = 0  # seeds noise, batches and init
    device: str = "auto"  # auto | cpu | cuda

    def validate(self) -> None:
        if self.loss not in LOSSES:
            msg = f"The 'loss' must be one of {LOSSES}. Got {self.loss!r} instead."
            raise ValueError(msg)
        if self.steps < 1 or self.batch_size < 2:
            msg = f"Need steps >= 1 and batch_size >= 2. Got {self.steps}, {self.batch_size}."
            raise ValueError(msg)
        for name in self.diffaug:
            if name not in POLICIES:
                msg = f"Unknown DiffAugment policy {name!r}. Allowed: {POLICIES}."
                raise ValueError(msg)


@dataclass
class GANResult:
    model: ConditionalGAN
    history: list[dict[str, float]]
    diagnostics: dict[str, Any]
    seconds: float
    grids: list[str] = field(default_factory=list)
    name: str | None = None
    checkpoint: str | None = None


# ---- losses ---------------------------------------------------------------------------------


def d_loss_fn(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from real and fake logits (B,)."""
    if kind == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp; the penalty is added by the caller


def g_loss_fn(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss from fake logits (B,)."""
    if kind == "ns":
        return F.softplus(-fake).mean()
    return -fake.mean()  # hinge and wgan-gp


def gradient_penalty(d: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """(||grad D(x_hat)|| - 1)^2 on random interpolates of real and fake (Gulrajani et al.)."""
    eps = torch.rand(len(real), 1, 1, 1, device=real.device)  # (B, 1, 1, 1)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = d(x_hat, y)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def ema_beta_at(step: int, beta: float) -> float:
    """EMA decay warm-up: early on the average must not be dominated by the random init."""
    return min(beta, (1.0 + step) / (10.0 + step))


# ---- the loop -------------------------------------------------------------------------------


def train_gan(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    cfg: GANTrainConfig,
    *,
    gan: GANConfig | None = None,
    grid_dir: str | Path | None = None,
    progress: bool = True,
) -> GANResult:
    """Train on uint8 images x (N, C, S, S) with class ids y (N,) into `classes`."""
    cfg.validate()
    gcfg = dataclasses.replace(gan or GANConfig(), classes=list(classes))
    gcfg.validate()
    if x.ndim != 4 or x.shape[1] != gcfg.channels or x.shape[2] != gcfg.image_size:
        msg = (f"Images must be (N, {gcfg.channels}, {gcfg.image_size}, {gcfg.image_size}) "
               f"uint8. Got shape {tuple(x.shape)} instead.")
        raise ValueError(msg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = ConditionalGAN(config=gcfg).to(device)
    g, d = model.generator, model.discriminator
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    sampler = _ClassSampler(y, gcfg.n_classes, cfg.class_power, gen)
    aug = (lambda t: diff_augment(t, cfg.diffaug)) if cfg.diffaug else (lambda t: t)
    fixed_y = torch.arange(gcfg.n_classes).repeat_interleave(8)  # grid: 8 samples per class
    grids: list[str] = []
    history: list[dict[str, float]] = []
    acc = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
    n_acc, t0 = 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=f"gan {cfg.loss}", unit="step", file=sys.stderr,
               disable=bar_disabled(progress))
    for step in range(1, cfg.steps + 1):
        g.train()
        d.train()
        for _ in range(cfg.d_steps):
            idx = sampler.batch(cfg.batch_size)
            real = to_signed(x[idx].to(device).float().div_(255.0))  # (B, C, S, S)
            yb = y[idx].to(device)
            z = torch.randn(len(idx), gcfg.z_dim, device=device)
            with torch.no_grad():
                fake = g(z, yb)  # (B, C, S, S)
            real_a, fake_a = aug(real), aug(fake)
            d_real, d_fake = d(real_a, yb), d(fake_a, yb)
            loss_d = d_loss_fn(cfg.loss, d_real, d_fake)
            if cfg.loss == "wgan-gp":
                loss_d = loss_d + cfg.gp_weight * gradient_penalty(d, real_a, fake_a, yb)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        z = torch.randn(len(idx), gcfg.z_dim, device=device)
        fake = g(z, yb)
        loss_g = g_loss_fn(cfg.loss, d(aug(fake), yb))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        model.update_ema(ema_beta_at(step, cfg.ema_beta))

        acc["d_loss"] += float(loss_d.detach())
        acc["g_loss"] += float(loss_g.detach())
        acc["d_real"] += float(d_real.detach().mean())
        acc["d_fake"] += float(d_fake.detach().mean())
        n_acc += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {"step": step, **{k: round(v / n_acc, 5) for k, v in acc.items()}}
            history.append(rec)
            bar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_loss']:.3f}")
            acc = dict.fromkeys(acc, 0.0)
            n_acc = 0
        if grid_dir is not None and (
            (cfg.sample_every and step % cfg.sample_every == 0) or step == cfg.steps
        ):
            path = Path(grid_dir) / f"step_{step:06d}.png"
            save_grid(model.sample(fixed_y, generator=torch.Generator().manual_seed(0)), path,
                      nrow=8)
            grids.append(str(path))
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    model.to("cpu").eval()
    diag = diagnose(model, history, x, y, loss=cfg.loss)
    for w in diag["warnings"]:
        log.warning("%s", w)
    return GANResult(model=model, history=history, diagnostics=diag, seconds=seconds, grids=grids)


class _ClassSampler:
    """Batches whose class mix follows count**power: sparse classes are seen more often."""

    def __init__(self, y: torch.Tensor, n_classes: int, power: float, gen: torch.Generator):
        self.by_class = [torch.nonzero(y == c).flatten() for c in range(n_classes)]
        counts = torch.tensor([len(i) for i in self.by_class], dtype=torch.float64)
        w = torch.where(counts > 0, counts.clamp(min=1) ** power, torch.zeros_like(counts))
        self.p = w / w.sum()
        self.gen = gen

    def batch(self, n: int) -> torch.Tensor:
        cls = torch.multinomial(self.p, n, replacement=True, generator=self.gen)  # (n,)
        out = torch.empty(n, dtype=torch.int64)
        for c in cls.unique().tolist():
            m = cls == c
            pool = self.by_class[c]
            out[m] = pool[torch.randint(len(pool), (int(m.sum()),), generator=self.gen)]
        return out


# ---- failure signatures ---------------------------------------------------------------------


@torch.no_grad()
def diagnose(
    model: ConditionalGAN,
    history: list[dict[str, float]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    n_per_class: int = 16,
    min_diversity: float = 0.25,
) -> dict[str, Any]:
    """Look for the known failure signatures in the loss curves and the samples.

    - discriminator collapse: D loss over the last fifth of training below a tenth
      of its chance level (D separates real from fake perfectly; G gets no signal);
    - generator loss climbing: G loss rises steadily over the second half (Spearman
      rho > 0.5) by more than 0.5 (logit units);
    - mode collapse per label: the mean pairwise pixel distance of a label's samples
      below `min_diversity` times that of its real images.
    """
    warnings: list[str] = []
    out: dict[str, Any] = {"d_loss_collapse": False, "g_loss_climbing": False}
    if len(history) >= 5:
        d_loss = np.array([h["d_loss"] for h in history])
        g_loss = np.array([h["g_loss"] for h in history])
        tail = d_loss[-max(1, len(d_loss) // 5):].mean()
        out["d_loss_tail"] = round(float(tail), 4)
        if loss in CHANCE_D_LOSS and tail < 0.1 * CHANCE_D_LOSS[loss]:
            out["d_loss_collapse"] = True
            warnings.append(
                f"discriminator loss collapsed to {tail:.3f} (chance level "
                f"{CHANCE_D_LOSS[loss]:.2f}): D wins outright and the generator learns nothing; "
                "try more DiffAugment, fewer steps or a lower --lr-d")
        half = g_loss[len(g_loss) // 2:]
        rho = _spearman(np.arange(len(half)), half)
        q = max(1, len(half) // 2)
        rise = float(half[-q:].mean() - half[:q].mean())
        out["g_loss_trend_rho"] = round(rho, 3)
        out["g_loss_rise"] = round(rise, 4)
        if rho > 0.5 and rise > 0.5:
            out["g_loss_climbing"] = True
            warnings.append(
                f"generator loss kept climbing over the second half (rho {rho:.2f}, +{rise:.2f}): "
                "the discriminator is overpowering it; use the sample grid from before the rise "
                "or train for fewer steps")
    diversity: dict[str, float] = {}
    gen = torch.Generator().manual_seed(1234)
    for c, name in enumerate(model.config.classes):
        real = x[y == c]
        if len(real) < 2:
            continue
        pick = torch.randperm(len(real), generator=gen)[:64]
        real_f = real[pick].float().div(255.0).flatten(1)  # (n, C*S*S)
        fake_f = model.sample(torch.full((n_per_class,), c), generator=gen).flatten(1)
        ratio = float(_mean_pdist(fake_f) / max(_mean_pdist(real_f), 1e-8))
        diversity[name] = round(ratio, 4)
    out["diversity"] = diversity
    alike = [k for k, v in diversity.items() if v < min_diversity]
    out["low_diversity_labels"] = alike
    if alike:
        warnings.append(
            f"samples of label(s) {alike} are nearly all alike (diversity ratio < "
            f"{min_diversity} of the real images'): mode collapse; try more DiffAugment, "
            "a lower learning rate or another --loss")
    out["warnings"] = warnings
    return out


def _mean_pdist(f: torch.Tensor) -> float:
    d = torch.cdist(f, f)  # (n, n)
    n = len(f)
    return float(d.sum() / max(1, n * (n - 1)))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return 0.0
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


# ---- grids and checkpoints ------------------------------------------------------------------


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8) -> Path:
    """Write images (N, C, S, S) in [0, 1] as one PNG grid, `nrow` images per row."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path


def write_loss_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """The recorded loss curves as CSV (step, d_loss, g_loss, d_real, d_fake)."""
    path = Path(path)
    cols = ["step", "d_loss", "g_loss", "d_real", "d_fake"]
    rows = [",".join(cols)] + [",".join(str(h[c]) for c in cols) for h in history]
    path.write_text("\n".join(rows) + "\n")
    return path


def save_gan(model: ConditionalGAN, directory: str | Path, meta: dict[str, Any]) -> str:
    """safetensors (generator, EMA, discriminator) + config.json; returns the checkpoint digest."""
    return save_checkpoint(model, directory, meta)


def load_gan(directory: str | Path, *, expected_sha256: str | None = None) -> ConditionalGAN:
    """Rebuild a ConditionalGAN exactly from `save_gan`'s files (never unpickles anything).

    The same checks as an encoder's `load_checkpoint`: config size limit, JSON,
    kind, field names and types, the weights' sha256 against the catalog's.
    """
    doc, cfg_path, w_path = read_checkpoint(directory, kinds=[ConditionalGAN.kind],
                                            expected_sha256=expected_sha256,
                                            what="a GAN checkpoint")
    config = checked_config(doc["config"], GANConfig, path=cfg_path, kind="GAN")
    try:
        model = ConditionalGAN(config=config)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{cfg_path}: invalid GAN config: {e}") from e
    load_weights(model, w_path)
    return model


def gan_dir(home: Home, row: Any) -> Path:
    """A GAN's checkpoint folder from its catalog row.

    Rows store it relative to the home (a moved or copied home keeps its GANs).
    Rows written before that hold an absolute path; when that path is gone (the
    home was moved), the folder of the same name under HOME/models is used.
    """
    path = home.resolve(row.checkpoint_path)
    if Path(row.checkpoint_path).is_absolute() and not path.is_dir():
        moved = home.models_dir / path.name
        if moved.is_dir():
            return moved
    return path


# ---- on the catalog -------------------------------------------------------------------------


def load_real_images(
    home: Home, *, labels: list[str] | None, image_size: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[int]]:
    """Real (non-synthetic) labeled catalog images -> (x uint8, y, classes, image ids)."""
    rows = home.catalog.images(labels=labels or None, labeled_only=True, synthetic=False)
    if not rows:
        what = f" with labels {labels}" if labels else ""
        msg = (f"No real labeled catalog images{what} to train the GAN on. "
               "Run: latentsight ingest PATH --labels-from-folders")
        raise CatalogError(msg)
    label_of = {r.id: r.label for r in rows}
    ds = FileImages([r.id for r in rows], [r.path for r in rows], image_size=image_size,
                    channels=channels)
    xs, ids = [], []
    workers = 0 if len(ds) < 512 else None  # spawning workers costs more than small reads
    for b_ids, xb, _bad in iter_batches(ds, batch_size=256, workers=workers):
        if len(b_ids):
            xs.append(xb)
            ids.extend(int(i) for i in b_ids)
    if not xs:
        raise CatalogError("None of the selected catalog images could be read.")
    classes = sorted({label_of[i] for i in ids})
    y = torch.tensor([classes.index(label_of[i]) for i in ids], dtype=torch.int64)
    return torch.cat(xs), y, classes, ids


def train_gan_on_catalog(
    home: Home,
    cfg: GANTrainConfig,
    *,
    gan: GANConfig | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
    holdout: float = 0.0,
    progress: bool = True,
) -> GANResult:
    """Train on every real labeled image (or `labels`), save, register with role generator.

    With `holdout` > 0, that fraction of every class (seeded) is kept out of training
    and recorded, so `latentsight eval augment` can test on images the GAN never saw.
    """
    from latentsight.training.gan.study import stratified_split

    if not 0.0 <= holdout < 1.0:
        msg = f"The 'holdout' fraction must be in [0, 1). Got {holdout} instead."
        raise ValueError(msg)
    gcfg = gan or GANConfig()
    name = name or f"gan-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    check_model_name(name)  # before anything is written under models/NAME
    if any(m.name == name for m in home.catalog.models()):
        raise CatalogError(f"A model named {name!r} exists already; pick another --name.")
    x, y, classes, ids = load_real_images(home, labels=labels, image_size=gcfg.image_size,
                                          channels=gcfg.channels)
    held: list[int] = []
    if holdout > 0:
        tr, te = stratified_split(y.numpy(), holdout, seed=cfg.seed)
        held = [ids[i] for i in te]
        x, y, ids = x[tr], y[tr], [ids[i] for i in tr]
    directory = home.models_dir / name
    res = train_gan(x, y, classes, cfg, gan=gcfg, grid_dir=directory / "samples",
                    progress=progress)
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    metrics = {
        "train_seconds": round(res.seconds, 2), "steps": cfg.steps, "loss": cfg.loss,
        "n_train": len(ids), "n_holdout": len(held), "class_counts": counts,
        "history": res.history, "diagnostics": res.diagnostics, "grids": res.grids,
    }
    meta = {"name": name, "train": asdict(cfg), "metrics": metrics, "train_image_ids": ids,
            "holdout_image_ids": held}
    sha = save_gan(res.model, directory, meta)
    write_loss_curves(res.history, directory / "losses.csv")
    home.catalog.add_model(name=name, kind=ConditionalGAN.kind, config=asdict(res.model.config),
                           checkpoint_path=home.rel(directory), checkpoint_sha256=sha,
                           metrics=metrics, activate=False, role="generator")
    res.name, res.checkpoint = name, str(directory)
    return res


def gan_meta(row: Any, home: Home) -> dict[str, Any]:
    """The JSON written beside a GAN's weights (training ids, held-out ids, history)."""
    path = gan_dir(home, row)
    try:
        return json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path / CONFIG_FILE}: cannot read: {e}") from e


def load_generator(home: Home, name: str | None = None) -> tuple[ConditionalGAN, Any]:
    """The GAN called `name`, or the newest generator in the catalog; (model, catalog row)."""
    if name is None:
        gens = [m for m in home.catalog.models() if m.role == "generator"]
        if not gens:
            raise CatalogError("No GAN trained yet. Run: latentsight gan train")
        row = gens[-1]
    else:
        row = home.catalog.model(name)
        if row.role != "generator":
            raise CatalogError(f"Model {name!r} is a {row.role}, not a GAN generator.")
    return load_gan(gan_dir(home, row), expected_sha256=row.checkpoint_sha256), row
