"""Train an encoder on catalog images: a visible loop, AdamW, warm-up + cosine LR, early stopping.

    cfg = TrainConfig(model="ae", epochs=20)
    result = train(home, cfg)          # checkpoint saved and registered, now the active model

Every model is trained through the same public interface: `model.loss(x, epoch=e)`
(e = epochs trained so far, a float; the VAE ramps its KL weight with it) and,
with the auxiliary objective on, `model.embed(x)` of two augmented views.

The auxiliary objective ("infonce") is an augmentation-consistency term in the
style of SimCLR: two random views of each image (crops, flips, turns, small
rotations) pass through `embed` and a small projection head that lives only
during training; the InfoNCE loss pulls the two views of an image together and
pushes other images away. It shapes the embedding used for search directly,
which reconstruction alone does poorly on textures.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from latentsight.embedder.data import FileImages, iter_batches
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.images import resize
from latentsight.embedder.models import create, resolve_device, save_checkpoint
from latentsight.embedder.models.inputs import fit_pixel_pca
from latentsight.embedder.progress import bar_disabled
from latentsight.index.catalog import check_model_name
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.paths import from_catalog
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    model: str = "ae"  # registry name: ae | vae | vit
    epochs: int = 8  # upper bound; early stopping on the validation objective may end sooner
    batch_size: int = 64  # small batches generalize better on small catalogs
    lr: float = 2e-3  # peak AdamW learning rate after warm-up
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_frac: float = 0.05  # fraction of all steps spent warming the LR up linearly
    val_frac: float = 0.1  # held-out fraction for validation loss and early stopping
    patience: int = 5  # epochs without validation improvement before stopping
    seed: int = 0  # seeds the split, the init and the augmentations
    # Fields left None take the default of the kind of training (`resolve`): whole images
    # (search) or tile crops (scans) differ; a trained model's JSON records the values used.
    augment: bool | None = None  # random flips and 90-degree turns; None: off / on (scans)
    crop_scale: float = 0.85  # random crops, side in [crop_scale, 1] x image, resized back; 0 = off
    rotate_deg: float = 20.0  # small random rotations up to +/- this many degrees; 0 = off
    jitter: float | None = None  # random brightness/contrast up to this fraction; None: 0.3 / 0
    noise: float | None = None  # Gaussian noise, std up to this (pixels in [0, 1]); None: 0.12 / 0
    aux: str = "infonce"  # auxiliary objective on two views: none | infonce (see benchmarks.md)
    aux_weight: float = 1.0  # weight of the auxiliary term beside the model's own loss
    aux_temperature: float = 0.2  # InfoNCE softmax temperature (SimCLR uses 0.1-0.5)
    labels: list[str] = field(default_factory=list)  # restrict to these labels (empty = all)
    name: str | None = None  # model name; default "<kind>-<timestamp>"
    device: str = "auto"  # auto | cpu | cuda
    model_config: dict[str, Any] = field(default_factory=dict)  # e.g. image_size, latent_dim
    crops: bool = False  # train on random image_size crops of native-size images (for scans)
    tile_scale: float = 1.0  # with crops: resize factor before cropping (mildly reduced resolution)
    image_ids: list[int] = field(default_factory=list)  # only these catalog ids (empty = all)
    geometry: str = "auto"  # auto: input aspect from the images, aspect kept + padded;
    #                         square: image_size x image_size, squashed (models before issue 14)
    pixel_pca: int | None = None  # > 0: embedding = [unit(this many pixel PCs), unit(learned)];
    #                                None: 64 / 0 (scans)
    pixel_pca_standardize: bool | None = None  # PCA of each image's standardized pixels; None: on


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


# The defaults that differ between the two kinds of training, for TrainConfig fields left None.
# Whole images (search): the recipe benchmarks/retrieval.py picks by its worst protocol
# (pca(std)+ae+infonce-photo, the only row that beats PCA-64 on every protocol: issue 14,
# docs/benchmarks.md); no flips or turns, photometric views, PCA-64 of standardized pixels.
SEARCH_DEFAULTS: dict[str, Any] = {"augment": False, "jitter": 0.3, "noise": 0.12,
                                   "pixel_pca": 64, "pixel_pca_standardize": True}
# Tile crops (scan models): flips and turns, nothing photometric, no pixel PCA, as before
# issue 14 (the search recipe was not measured for scanning).
SCAN_DEFAULTS: dict[str, Any] = {"augment": True, "jitter": 0.0, "noise": 0.0,
                                 "pixel_pca": 0, "pixel_pca_standardize": False}


def resolve(cfg: TrainConfig) -> TrainConfig:
    """cfg with every field left None set to the default of its kind of training
    (SCAN_DEFAULTS with `crops`, else SEARCH_DEFAULTS); fields given are kept."""
    defaults = SCAN_DEFAULTS if cfg.crops else SEARCH_DEFAULTS
    return replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})


AUX_OBJECTIVES = ("none", "infonce")
GEOMETRIES = ("auto", "square")
SQUARE_BELOW = 1.15  # a median aspect within [1/1.15, 1.15] keeps a square input
MAX_ASPECT = 4  # the long side of the input is at most this many short sides
PCA_SAMPLE = 2000  # images the pixel PCA is fitted on (a seeded sample above that)


def choose_input(sizes: list[tuple[int, int]], model_config: dict[str, Any], kind: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input geometry from the training images' (width, height): (model config, record).

    The short side stays the configured `image_size` (default 64); the long side follows
    the images' median aspect, rounded to what the model divides by (2**depth for the
    conv models, the patch side for the ViT), at most MAX_ASPECT times the short side.
    Images of another aspect are fitted aspect-preserving and padded (resize "pad").
    An explicit `image_width` in `model_config` is kept.
    """
    from latentsight.embedder.models import config_class

    defaults = config_class(kind)()
    mc = dict(model_config)
    side = int(mc.get("image_size", defaults.image_size))
    multiple = (int(mc.get("patch_size", getattr(defaults, "patch_size", 8))) if kind == "vit"
                else 2 ** int(mc.get("depth", getattr(defaults, "depth", 4))))
    aspects = [w / h for w, h in sizes if w and h]
    aspect = float(np.median(aspects)) if aspects else 1.0
    mc.setdefault("resize", "pad")
    record: dict[str, Any] = {"median_aspect": round(aspect, 4), "from_images": len(aspects)}
    if "image_width" not in mc and not 1 / SQUARE_BELOW <= aspect <= SQUARE_BELOW:
        long = max(multiple, round(side * max(aspect, 1 / aspect) / multiple) * multiple)
        long = min(long, MAX_ASPECT * side)
        if aspect > 1:
            mc["image_width"] = long
        else:
            mc["image_size"], mc["image_width"] = long, side
    h = int(mc.get("image_size", side))
    record |= {"height": h, "width": int(mc.get("image_width") or h), "resize": mc["resize"]}
    return mc, record


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and 90-degree turns, per sample. x: (B, C, H, W);
    a non-square input turns by 180 degrees only (a quarter turn would change its shape)."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    turns = torch.randint(0, 4, (b,), generator=gen)
    if x.shape[2] != x.shape[3]:
        turns = (turns // 2) * 2  # 0 or 2
    x = x.clone()
    x[flip_h] = x[flip_h].flip(3)
    x[flip_v] = x[flip_v].flip(2)
    for t in (1, 2, 3):
        m = turns == t
        if m.any():
            x[m] = torch.rot90(x[m], t, dims=(2, 3))
    return x


def crop_rotate(
    x: torch.Tensor, gen: torch.Generator, *, crop_scale: float, rotate_deg: float
) -> torch.Tensor:
    """Random crops (side in [crop_scale, 1], resized back) and small rotations, per sample.

    One affine resampling per image; x: (B, C, S, S) -> (B, C, S, S). Reflection
    padding keeps rotated corners textured instead of black.
    """
    b = x.shape[0]
    scale = torch.ones(b)
    if crop_scale > 0:
        scale = crop_scale + (1 - crop_scale) * torch.rand(b, generator=gen)  # (B,)
    angle = (2 * torch.rand(b, generator=gen) - 1) * math.radians(rotate_deg)  # (B,)
    room = 1 - scale  # how far the crop centre may move, in [-1, 1] coordinates
    shift = (2 * torch.rand(b, 2, generator=gen) - 1) * room[:, None]  # (B, 2)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)  # (B, C, S, S)


def make_view(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """One random training view of a float batch (B, C, S, S) under cfg's augmentations
    (fields left None: the defaults of cfg's kind of training, `resolve`)."""
    cfg = resolve(cfg)
    if cfg.crop_scale > 0 or cfg.rotate_deg > 0:
        x = crop_rotate(x, gen, crop_scale=cfg.crop_scale, rotate_deg=cfg.rotate_deg)
    if cfg.augment:
        x = augment(x, gen)
    if cfg.jitter > 0 or cfg.noise > 0:
        x = photometric(x, gen, jitter=cfg.jitter, noise=cfg.noise)
    return x


def photometric(x: torch.Tensor, gen: torch.Generator, *, jitter: float, noise: float
                ) -> torch.Tensor:
    """Random contrast and brightness (each up to `jitter`) and Gaussian noise (std up to
    `noise`), per sample; x: (B, C, S, S) in [0, 1] -> same shape, clipped to [0, 1]."""
    b = x.shape[0]
    gain = 1 + jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)  # (B, 1, 1, 1)
    shift = jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)  # (B, 1, 1, 1)
    std = noise * torch.rand(b, 1, 1, 1, generator=gen)  # (B, 1, 1, 1)
    eps = torch.randn(x.shape, generator=gen) * std
    return (x * gain + shift + eps.to(x)).clamp_(0, 1)


def projection_head(dim: int, *, hidden: int = 256, out: int = 128) -> torch.nn.Module:
    """SimCLR-style MLP on top of the embedding; used for the auxiliary loss, then dropped."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, out),
    )


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent) between two views a, b of shape (B, d); row i matches row i."""
    z = F.normalize(torch.cat([a, b]), dim=1)  # (2B, d)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim.fill_diagonal_(float("-inf"))  # an item is not its own positive
    n = a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)  # (2B,)
    return F.cross_entropy(sim, target)


def load_images(
    home: Home, *, labels: list[str], image_size: int, channels: int, progress: bool = True,
    ids: list[int] | None = None, image_width: int = 0, resize: str = "squash",
) -> tuple[torch.Tensor, list[int]]:
    """Decode the selected catalog images into one uint8 tensor (N, C, H, W)."""
    rows = home.catalog.images(labels=labels or None, ids=ids or None, synthetic=False)
    if not rows:
        what = f" with labels {labels}" if labels else ""
        raise CatalogError(f"No catalog images{what} to train on. Run: latentsight ingest PATH")
    paths = [from_catalog(r.path) for r in rows]  # catalog text form -> a path to open
    ds = FileImages([r.id for r in rows], paths, image_size=image_size, channels=channels,
                    image_width=image_width, resize=resize)
    xs, ids = [], []
    bar = tqdm(total=len(ds), desc="loading", unit="img", file=sys.stderr,
               disable=bar_disabled(progress))
    for b_ids, x, bad in iter_batches(ds, batch_size=256):
        if len(b_ids):
            xs.append(x)
            ids.extend(b_ids.tolist())
        bar.update(len(b_ids) + len(bad))
    bar.close()
    if not xs:
        raise CatalogError("None of the selected catalog images could be read.")
    return torch.cat(xs), ids


class CropImages:
    """Native-size images; indexing with ids returns fresh random crops, uint8 (B, C, S, S)."""

    def __init__(self, images: list[torch.Tensor], size: int, gen: torch.Generator) -> None:
        self.images, self.size, self.gen = images, size, gen

    @classmethod
    def load(cls, home: Home, cfg: TrainConfig, *, size: int, channels: int,
             gen: torch.Generator) -> CropImages:
        from latentsight.embedder.images import decode_file
        from latentsight.embedder.scoring import to_channels

        rows = home.catalog.images(labels=cfg.labels or None, ids=cfg.image_ids or None)
        if not rows:
            raise CatalogError("No catalog images to train on. Run: latentsight ingest PATH")
        mode = "L" if channels == 1 else "RGB"
        images = []
        for r in rows:
            try:
                px = decode_file(from_catalog(r.path), mode=mode).pixels
            except DecodeError as e:
                log.warning("skipped: %s", e)
                continue
            h, w = px.shape[:2]
            if cfg.tile_scale != 1.0:
                px = resize(px, (max(1, round(w * cfg.tile_scale)),
                                 max(1, round(h * cfg.tile_scale))))
            if min(px.shape[:2]) < size:  # small images are resized up to one tile
                px = resize(px, (max(size, px.shape[1]), max(size, px.shape[0])))
            images.append(torch.from_numpy(np.array(to_channels(px, channels))))
        if not images:
            raise CatalogError("None of the selected catalog images could be read.")
        return cls(images, size, gen)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: torch.Tensor) -> CropImages:
        return CropImages([self.images[int(i)] for i in idx], self.size, self.gen)

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        s, out = self.size, []
        ids = range(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).reshape(-1)
        for i in list(ids):
            i = int(i)
            img = self.images[i]  # (C, H, W)
            y = int(torch.randint(0, img.shape[1] - s + 1, (1,), generator=self.gen))
            x = int(torch.randint(0, img.shape[2] - s + 1, (1,), generator=self.gen))
            out.append(img[:, y : y + s, x : x + s])
        if not out:
            return torch.zeros((0, self.images[0].shape[0], s, s), dtype=torch.uint8)
        return torch.stack(out)  # (B, C, S, S)


def train(home: Home, cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train, keep the best validation checkpoint, register it as the active model.

    Fields of `cfg` left None take the defaults of its kind of training (`resolve`);
    the checkpoint's JSON records the values used.
    """
    cfg = resolve(cfg)
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model_config, geometry = dict(cfg.model_config), None
    if cfg.pixel_pca:
        model_config["pixel_pca"] = cfg.pixel_pca
        if cfg.pixel_pca_standardize:
            model_config["pixel_pca_standardize"] = True
    if not cfg.crops and cfg.geometry == "auto":
        rows = home.catalog.images(labels=cfg.labels or None, ids=cfg.image_ids or None,
                                   synthetic=False)
        model_config, geometry = choose_input([(r.width, r.height) for r in rows],
                                              model_config, cfg.model)
        log.info("input %dx%d (%s) from the median aspect %.3g of %d images",
                 geometry["width"], geometry["height"], geometry["resize"],
                 geometry["median_aspect"], geometry["from_images"])
    model = create(cfg.model, **model_config)
    mcfg = model.config
    if cfg.crops:
        data = CropImages.load(home, cfg, size=mcfg.image_size, channels=mcfg.channels,
                               gen=torch.Generator().manual_seed(cfg.seed + 1))
    else:
        data, _ids = load_images(home, labels=cfg.labels, image_size=mcfg.image_size,
                                 channels=mcfg.channels, progress=progress, ids=cfg.image_ids,
                                 image_width=getattr(mcfg, "image_width", 0),
                                 resize=getattr(mcfg, "resize", "squash"))
    n = len(data)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(n * cfg.val_frac))) if n >= 10 else 0
    val, tr = data[perm[:n_val]], data[perm[n_val:]]
    if cfg.crops:  # fixed crops for validation, fresh random crops at every training step
        tr = data.subset(perm[n_val:])
    if cfg.aux != "none" and len(tr) < 2:
        msg = f"The '{cfg.aux}' auxiliary objective needs >= 2 training images. Got {len(tr)}."
        raise CatalogError(msg)
    learned_dim = model.embed_dim - int(getattr(mcfg, "pixel_pca", 0) or 0)
    head = projection_head(learned_dim) if cfg.aux != "none" else torch.nn.Identity()
    model.to(device)
    head.to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(tr) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_frac))
    best, best_state, best_epoch, bad_epochs, history = math.inf, None, 0, 0, []
    step, t0 = 0, time.perf_counter()
    bar = tqdm(total=total, desc=f"train {cfg.model}", unit="step", file=sys.stderr,
               disable=bar_disabled(progress))
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(tr), generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            x = tr[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]].float().div_(255.0)
            if len(x) < 2 and cfg.aux != "none":
                continue  # InfoNCE needs another image in the batch; BatchNorm too
            view = make_view(x, cfg, gen).to(device)  # (B, C, S, S)
            lr = get_lr(step, total, peak=cfg.lr, warmup=warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, _parts = model.loss(view, epoch=step / steps_per_epoch)
            if cfg.aux == "infonce":
                other = make_view(x, cfg, gen).to(device)  # a second view of the same images
                e1, e2 = learned_embedding(model, view), learned_embedding(model, other)
                loss = loss + cfg.aux_weight * info_nce(head(e1), head(e2), cfg.aux_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            running += float(loss.detach())
            step += 1
            bar.update(1)
        train_loss = running / steps_per_epoch
        val_loss = evaluate(model, val if n_val else tr, device, cfg=cfg, head=head)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr})
        bar.set_postfix(epoch=epoch, train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        log.info("epoch %3d | train %.5f | val %.5f | lr %.2e", epoch, train_loss, val_loss, lr)
        if val_loss < best - 1e-6:
            best, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                log.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                break
    bar.close()
    seconds = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    if getattr(model, "pixel_pca", None) is not None and fit_pixel_pca(
            model, pca_sample(data, cfg.seed)):
        log.info("pixel PCA: %d components fitted on %d images", cfg.pixel_pca,
                 min(len(data), PCA_SAMPLE))
    name = cfg.name or f"{cfg.model}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    check_model_name(name)  # before anything is written under models/NAME
    if any(m.name == name for m in home.catalog.models()):
        raise CatalogError(f"A model named {name!r} exists already; pick another --name.")
    metrics = {
        "val_loss": best, "best_epoch": best_epoch, "epochs_run": len(history),
        "train_seconds": round(seconds, 2), "n_train": len(tr), "n_val": n_val,
        "device": str(device), "history": history,
    }
    if geometry is not None:
        metrics["input_geometry"] = geometry
    directory = home.models_dir / name
    train_state = {k: v for k, v in asdict(cfg).items() if k != "model_config"}
    meta = {"name": name, "train": train_state, "metrics": metrics}
    sha = save_checkpoint(model, directory, meta)
    home.catalog.add_model(name=name, kind=cfg.model, config=asdict(mcfg),
                           checkpoint_path=home.rel(directory), checkpoint_sha256=sha,
                           metrics=metrics)
    return TrainResult(name=name, kind=cfg.model, checkpoint=str(directory), metrics=metrics)


def learned_embedding(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The learned part of a model's embedding (without its pixel PCA): what InfoNCE trains."""
    return (model.embed_learned if hasattr(model, "embed_learned") else model.embed)(x)


def pca_sample(data: Any, seed: int) -> torch.Tensor:
    """Up to PCA_SAMPLE training images, float (n, C, H, W) in [0, 1], a seeded sample."""
    n = len(data)
    idx = torch.arange(n)
    if n > PCA_SAMPLE:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))[:PCA_SAMPLE]
    return data[idx].float().div_(255.0)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: torch.Tensor, device: torch.device,
             batch_size: int = 256, *, cfg: TrainConfig | None = None,
             head: torch.nn.Module | None = None) -> float:
    """Mean validation objective over `data` in eval mode.

    The model's own loss on the plain images; with an auxiliary objective, plus
    its term on two views drawn with a fixed seed, so epochs compare and the
    kept checkpoint is the best under the objective actually trained.
    """
    model.eval()
    aux = cfg is not None and cfg.aux != "none" and head is not None
    if aux:
        head.eval()
        gen = torch.Generator().manual_seed(cfg.seed + 1)
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        x = data[i : i + batch_size].float().div_(255.0)
        loss, _ = model.loss(x.to(device))
        if aux and len(x) > 1:
            e1 = learned_embedding(model, make_view(x, cfg, gen).to(device))  # (B, D)
            e2 = learned_embedding(model, make_view(x, cfg, gen).to(device))  # (B, D)
            loss = loss + cfg.aux_weight * info_nce(head(e1), head(e2), cfg.aux_temperature)
        total += float(loss) * len(x)
        count += len(x)
    if aux:
        head.train()
    return total / max(1, count)


def check_config(cfg: TrainConfig) -> None:
    """Reject option values that would silently train something else."""
    if cfg.aux not in AUX_OBJECTIVES:
        allowed = ", ".join(AUX_OBJECTIVES)
        msg = f"The 'aux' option must be one of {allowed}. Got {cfg.aux!r} instead."
        raise ValueError(msg)
    if not 0.0 <= cfg.crop_scale <= 1.0:
        msg = f"The 'crop_scale' option must be in [0, 1]. Got {cfg.crop_scale} instead."
        raise ValueError(msg)
    for opt, v in (("jitter", cfg.jitter), ("noise", cfg.noise)):
        if not 0.0 <= v <= 1.0:
            msg = f"The '{opt}' option must be in [0, 1]. Got {v} instead."
            raise ValueError(msg)
    if not 0.0 <= cfg.rotate_deg <= 45.0:
        msg = f"The 'rotate_deg' option must be in [0, 45]. Got {cfg.rotate_deg} instead."
        raise ValueError(msg)
    if cfg.geometry not in GEOMETRIES:
        msg = (f"The 'geometry' option must be one of {', '.join(GEOMETRIES)}. "
               f"Got {cfg.geometry!r} instead.")
        raise ValueError(msg)
    if cfg.pixel_pca < 0 or (cfg.pixel_pca and cfg.crops):
        msg = (f"The 'pixel_pca' option must be >= 0, and 0 with tile crops (scans). Got "
               f"{cfg.pixel_pca} instead.")
        raise ValueError(msg)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        msg = f"The 'epochs' and 'batch_size' must be >= 1. Got {cfg.epochs}, {cfg.batch_size}."
        raise ValueError(msg)

