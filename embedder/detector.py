"""`detector`: a global + local anomaly detector learned from normal images only.

    sc = make_scorer("detector", encoder).fit(calib_images, reference=train_images)
    sc.decision_function(images)   # (n,) higher = more anomalous, threshold_ = 1.0
    sc.geometry_                   # {"grid": [gh, gw], "scale": s} chosen from the data

Six default parts, each learned from the `reference` (training) normals:

- `pca`: the image resized to a grid (gh x gw, aspect from the training
  images, long side `global_grid` cells) is reconstructed from the first
  `components` principal components of the training images; the squared
  error map is average-pooled over `grid_window` grid cells and its maximum
  is the part's score. Catches what breaks the layout of aligned images
  (solar cells, parts, digits): a crack, a missing or extra piece.
- `gauss`: per grid position mean and deviation of the training images
  (a per-position Gaussian, PaDiM-style on pixels); the |z| map, pooled over
  2 cells, maximum. Catches a region darker or brighter than any normal one
  at that place, even in a busy random texture (polycrystalline cells).
- `texture`: the texture scorer's kNN distance of local texture statistics
  at (mildly rescaled) native resolution, position-free: catches local
  defects in unaligned textures (steel, fabric), where the global parts are
  blind.

- `nncos`: the distance of the grid image to its nearest training grid image
  (1-NN, at most MAX_NN_REF kept), the grid images each made zero-mean and
  unit-norm first: position-aligned shape, blind to brightness and contrast.
- `padim`: per grid position, the Mahalanobis distance of random
  convolutional features of the image at 4 pixels per grid cell to their
  Gaussian over the normals (one covariance per position on 32 dimensions,
  PaDiM-style: embedder/padim.py); sees a dark region or a crack inside a
  random grain (polycrystalline cells) best of all parts.
- `padimstd`: the same on each image standardized first (minus its mean,
  over its standard deviation; one Gaussian per position of its own): blind
  to a whole image's brightness and contrast, which vary between normal
  images (mono solar cells, steel under other light), so it sees the
  structure alone.

Optional parts, measured by benchmarks/anomaly.py (`--parts`) and not in the
default because they do not raise its worst protocol: `nn` (the 1-NN on raw
grid pixels; the default's before `padim` replaced it), `pcamean` (the mean of
the `pca` part's squared error over the whole grid instead of its pooled
maximum: the PCA-64 baseline's global reconstruction energy), `pca2` /
`gauss2` (`pca` / `gauss` on a finer grid, `fine_grid` = 128 cells on the
long side) and `seg` (a small segmentation net trained from scratch on
synthetic anomalies made from the training images, DRAEM-style:
embedder/synthetic.py; `seg_steps` training steps on the grid images).
Models saved with other parts (`nn` in place of `padim` before session 7, no
`padimstd` before session 8) keep them.

Each part's score is standardized on the calibration normals on a log scale
(`spread="logq90"`: z = (log s - median) / (90% quantile - median) of the
normals' log scores; the parts' scores are positive and heavy-tailed) and
the image score is the Euclidean norm of the positive standardized scores
(`combine="l2"`): a defect one part sees strongly counts, and evidence from
several parts adds up. Models saved with `spread="q90"` (the same on the
raw scores; the default before) keep it; models saved before (state without
"version") keep their rule: softplus of the max of (s - median) / std.
The rule and the parts were chosen by the worst protocol of
benchmarks/anomaly.py (the rule over two seeds, the parts over three; ties within 0.01
broken by the next-worst protocol). The
combined score is then calibrated like every scorer (threshold 1.0 at the
target FPR). The heatmap comes from the parts that localize (MAP_PARTS: all
but the image-level `nn`, `pcamean`, `nncos`): at each pixel the largest of
their standardized, pooled maps at the (scaled) input size
(version-1 models: softplus of that maximum, as before).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from latentsight.embedder import padim
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.scoring import SCORERS, TextureScorer, TileScorer, to_channels
from latentsight.embedder.synthetic import Segmenter, segment, train_segmenter

log = logging.getLogger(__name__)

PARTS = ("pca", "gauss", "texture", "nn", "pca2", "gauss2", "seg", "pcamean", "nncos",
         "padim", "padimstd")
GLOBAL_PARTS = ("pca", "gauss", "nn", "pca2", "gauss2", "seg", "pcamean", "nncos", "padim",
                "padimstd")
# the random-feature Gaussians (embedder/padim.py): on the image as it is, and on the image
# standardized first (blind to its brightness and contrast); they share one feature net
PADIM_PARTS = {"padim": False, "padimstd": True}
# the parts that keep the reference grid images (`grid_ref`)
NN_PARTS = ("nn", "nncos")
# image-level parts: one number per image (their map is not used for the heatmap)
IMAGE_PARTS = ("nn", "pcamean", "nncos")
# the parts on the fine grid (`fine_grid` cells on the long side, twice the global grid)
FINE_PARTS = ("pca2", "gauss2")
# The heatmap combines only the parts whose maps say where: `nn` is an image-level distance
# (to one whole nearest image), its map is nearly flat and would hide the defect; the
# other IMAGE_PARTS (a whole-image mean, a normalized 1-NN) likewise.
# `padimstd` scores images but stays out of the heatmap: with its map the maximum fell inside
# NEU synthetic's defects 0.936 of the time, against 0.944 without (benchmarks/anomaly.py).
MAP_PARTS = ("pca", "gauss", "texture", "pca2", "gauss2", "seg", "padim")
DEFAULT_PARTS = ("pca", "gauss", "texture", "nncos", "padim", "padimstd")
COMBINES = ("l2", "mean", "max")
SPREADS = ("logq90", "q90", "std")
# `spread="logq90"` standardizes log(max(score, LOG_FLOOR)): the parts' scores are
# positive and heavy-tailed, and their logs spread alike across data sets
LOG_FLOOR = 1e-12
# Saved-state format: 1 = before `combine`/`spread`/`nn` (max of (s - median) / std);
# a state without "version" is 1 and loads with those rules.
VERSION = 2
# the global 1-NN part keeps at most this many reference grid images
MAX_NN_REF = 2000
# Geometry defaults: the local (texture) part works at native size up to this long side,
# which keeps a 300x300 scan above 20 images/s on 2 cores; smaller defects than
# 1 / MIN_SCALE of their size are never downscaled further.
WORK_LONG_SIDE = 256
MIN_SCALE = 0.5


def choose_geometry(sizes: Sequence[tuple[int, int]], *, grid: int = 64,
                    work_long_side: int = WORK_LONG_SIDE) -> dict[str, Any]:
    """Working geometry from the training images' (height, width) sizes.

    Returns {"grid": [gh, gw], "scale": s, "median_size": [h, w]}: the global
    parts' grid keeps the median aspect ratio with `grid` cells on the long
    side (never more cells than pixels); the local part's `scale` brings the
    median long side to `work_long_side` but never below MIN_SCALE (a small
    defect must not vanish) nor above 1.
    """
    if not sizes:
        msg = "choose_geometry needs at least one image size. Got none."
        raise ValueError(msg)
    hs = np.asarray([s[0] for s in sizes], dtype=np.float64)
    ws = np.asarray([s[1] for s in sizes], dtype=np.float64)
    mh, mw = float(np.median(hs)), float(np.median(ws))
    long_side = max(mh, mw)
    g = int(min(grid, long_side))
    gh = max(4, int(round(g * mh / long_side)))
    gw = max(4, int(round(g * mw / long_side)))
    scale = float(np.clip(work_long_side / long_side, MIN_SCALE, 1.0))
    return {"grid": [gh, gw], "scale": round(scale, 4), "median_size": [int(mh), int(mw)]}


def _pool_same(m: torch.Tensor, w: int) -> torch.Tensor:
    """Average-pool (B, 1, H, W) over w x w windows, same size out (edges: smaller windows)."""
    if w <= 1:
        return m
    pad_l, pad_r = (w - 1) // 2, w // 2
    ones = torch.ones_like(m)
    s = F.avg_pool2d(F.pad(m, (pad_l, pad_r, pad_l, pad_r)), w, stride=1)
    n = F.avg_pool2d(F.pad(ones, (pad_l, pad_r, pad_l, pad_r)), w, stride=1)
    return s / n


def _combine_z(z: np.ndarray, how: str, axis: int) -> np.ndarray:
    """Standardized part scores -> one score along `axis`: "l2" = the Euclidean norm of
    the positive parts (a defect one part sees strongly counts, and evidence from several
    parts adds up, without the near-zero parts diluting it as a mean does); "mean" /
    "max" = softplus of the mean / maximum (version 1 used "max")."""
    if how == "l2":
        return np.sqrt(np.square(np.maximum(z, 0.0)).sum(axis=axis))
    return np.logaddexp(0.0, z.mean(axis=axis) if how == "mean" else z.max(axis=axis))


def fit_standardization(raw: np.ndarray, spread: str) -> tuple[np.ndarray, np.ndarray]:
    """Each column's location and spread on the calibration normals' raw part scores (N, P).

    "q90": median and 90% quantile minus median (robust: the normals' upper
    tail, not their outliers); "logq90": the same on log(score); "std":
    median and standard deviation (version 1).
    """
    x = _spread_scale(raw, spread)
    loc = np.median(x, axis=0)
    sp = x.std(axis=0) if spread == "std" else np.quantile(x, 0.9, axis=0) - loc
    return loc, np.maximum(sp, 1e-6 * np.maximum(np.abs(loc), 1e-6))


def standardize(raw: np.ndarray, loc: np.ndarray, sp: np.ndarray, spread: str) -> np.ndarray:
    """Raw part scores (or maps, last axis or broadcast) -> standardized z."""
    return (_spread_scale(raw, spread) - loc) / sp


def _spread_scale(raw: np.ndarray, spread: str) -> np.ndarray:
    return np.log(np.maximum(raw, LOG_FLOOR)) if spread == "logq90" else np.asarray(raw)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of (N, D) minus their mean, divided by their norm (a flat row stays zero)."""
    d = x - x.mean(1, keepdim=True)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-8)


class DetectorScorer(TextureScorer):
    """L2 norm of the positive standardized global (PCA reconstruction, per-position
    Gaussian, 1-NN) and local (texture kNN) scores; see the module docstring. The default."""

    name = "detector"

    def __init__(self, encoder: Encoder, *, parts: Sequence[str] = DEFAULT_PARTS,
                 global_grid: int = 64, grid_shape: Sequence[int] | None = None,
                 components: int = 64, grid_window: int = 8, gauss_window: int = 2,
                 combine: str = "l2", spread: str = "logq90", stride: int | None = None,
                 fine_grid: int = 128, seg_steps: int = 600, seg_width: int = 16,
                 padim_cov: str = "position", padim_dims: int = padim.POSITION_DIMS,
                 **kwargs: Any) -> None:
        # tiles 3/4 of a tile apart (texture's default: 1/2): ~half the tiles, same cells
        stride = stride or max(1, encoder.image_size * 3 // 4)
        super().__init__(encoder, stride=stride, **kwargs)
        self.parts = tuple(parts)
        self.global_grid = global_grid  # `grid` is the texture part's cell grid
        self.grid_shape = list(grid_shape) if grid_shape is not None else None
        self.components = components
        self.grid_window = grid_window
        self.gauss_window = gauss_window
        self.combine = combine
        self.spread = spread
        self.fine_grid = fine_grid
        self.seg_steps = seg_steps
        self.seg_width = seg_width
        self.padim_cov = padim_cov
        self.padim_dims = padim_dims

    def params(self) -> dict[str, Any]:
        return {**super().params(), "parts": list(self.parts), "global_grid": self.global_grid,
                "grid_shape": self.grid_shape, "components": self.components,
                "grid_window": self.grid_window, "gauss_window": self.gauss_window,
                "combine": self.combine, "spread": self.spread, "fine_grid": self.fine_grid,
                "seg_steps": self.seg_steps, "seg_width": self.seg_width,
                "padim_cov": self.padim_cov, "padim_dims": self.padim_dims}

    # ---- fit ----------------------------------------------------------------------------

    def fit(self, images: Sequence[np.ndarray], *,
            reference: Sequence[np.ndarray] | None = None, **kwargs: Any) -> DetectorScorer:
        """Learn the parts from `reference` (else `images`, two-fold), calibrate on `images`.

        Returns self; sets `geometry_`, the parts' models and standardization
        (`part_loc_`, `part_spread_`), then `scale_`, `threshold_`, ... as every scorer.
        """
        self._validate(images)
        for attr in ("part_loc_", "part_spread_", "scale_"):  # a refit starts from scratch
            self.__dict__.pop(attr, None)
        bad = [p for p in self.parts if p not in PARTS]
        if bad or not self.parts:
            msg = f"The 'parts' must be a non-empty subset of {list(PARTS)}. " \
                  f"Got {list(self.parts)} instead."
            raise ValueError(msg)
        if self.components < 1 or self.global_grid < 4 or self.grid_window < 1:
            msg = ("The 'components', 'global_grid' and 'grid_window' options must be >= 1, "
                   f"4, 1. Got {self.components}, {self.global_grid}, {self.grid_window} "
                   "instead.")
            raise ValueError(msg)
        if self.combine not in COMBINES or self.spread not in SPREADS:
            msg = (f"The 'combine' and 'spread' options must be one of {list(COMBINES)} and "
                   f"{list(SPREADS)}. Got {self.combine!r} and {self.spread!r} instead.")
            raise ValueError(msg)
        ref = list(reference) if reference is not None and len(reference) else None
        learn = ref or list(images)
        geo = choose_geometry([p.shape[:2] for p in learn], grid=self.global_grid)
        if self.grid_shape is not None:
            geo["grid"] = [int(v) for v in self.grid_shape]
        geo["scale"] = float(self.scale)
        if any(p in self.parts for p in FINE_PARTS):
            geo["grid2"] = choose_geometry([p.shape[:2] for p in learn],
                                           grid=self.fine_grid)["grid"]
        self.geometry_ = geo
        if "texture" in self.parts:
            # the texture part: bank from the reference (or halves of images), as TextureScorer
            self._texture_fit(images, ref)
        if ref is not None:
            self._fit_global(ref)
            raw = self._part_scores(images)
        else:
            half = len(images) // 2
            a, b = list(images[:half]), list(images[half:])
            raw = np.zeros((len(images), len(self.parts)))
            self._fit_global(a)
            raw[half:] = self._part_scores(b)
            self._fit_global(b)
            raw[:half] = self._part_scores(a)
            self._fit_global(list(images))
            if "texture" in self.parts:  # the two-fold texture scores, as TextureScorer's fit
                raw[:, self.parts.index("texture")] = self._texture_cal
        if ref is not None and "texture" in self.parts:
            raw[:, self.parts.index("texture")] = self._texture_cal
        self.part_loc_, self.part_spread_ = fit_standardization(raw, self.spread)
        self._calibrate(self._combine(raw))
        self.part_scores_ = raw
        log.info("detector: grid %s, scale %.3f, parts %s", geo["grid"], self.scale,
                 ",".join(self.parts))
        return self

    def _texture_fit(self, images: Sequence[np.ndarray],
                     ref: list[np.ndarray] | None) -> None:
        """Fit the TextureScorer machinery; keeps its raw calibration scores."""
        self.mean_ = self.std_ = None
        raw = self._bank_vectors(ref if ref is not None else images)
        self.mean_ = raw.mean(0)
        self.std_ = raw.std(0) + 1e-6
        # KNNScorer.fit computes the bank and the (two-fold) raw scores, then calibrates;
        # keep its raw texture scores (scale_ * decision_scores_) for the standardization.
        super(TextureScorer, self).fit(images, reference=ref)
        self._texture_cal = self.decision_scores_ * self.scale_

    def _grid_pixels(self, images: Sequence[np.ndarray], key: str = "grid") -> torch.Tensor:
        """Images resized (area) to the grid (or "grid2"): float (N, C*gh*gw) in [0, 1]."""
        size = tuple(self.geometry_[key])
        return torch.stack([self._resized(p, size).flatten() for p in images])

    def _resized(self, pixels: np.ndarray, size: tuple[int, int], *,
                 smooth_up: bool = False) -> torch.Tensor:
        """One image in the model's channels, float (1, C, h, w) in [0, 1]: area-averaged
        to `size`, or bilinear where `smooth_up` and the image is smaller than `size`."""
        x = torch.from_numpy(np.array(to_channels(pixels, self.encoder.channels)))
        x = x.float().div_(255.0)[None]  # (1, C, H, W)
        if smooth_up and (x.shape[-2] < size[0] or x.shape[-1] < size[1]):
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="area")

    def _fit_global(self, images: Sequence[np.ndarray]) -> None:
        if not any(p in self.parts for p in GLOBAL_PARTS):
            return
        x = self._grid_pixels(images).double()  # (N, D)
        mean = x.mean(0)
        self.grid_mean_ = mean.float().numpy()
        self.grid_std_ = (x.std(0) + 0.02).float().numpy()  # floor: flat regions
        k = int(min(self.components, len(x) - 1, x.shape[1]))
        if k >= 1:
            _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
            self.grid_components_ = vt[:k].float().numpy()  # (k, D)
        else:
            self.grid_components_ = np.zeros((0, x.shape[1]), dtype=np.float32)
        if any(p in self.parts for p in NN_PARTS):
            keep = np.arange(len(x))
            if len(x) > MAX_NN_REF:
                keep = np.sort(np.random.default_rng(self.seed).choice(
                    len(x), MAX_NN_REF, replace=False))
            self.grid_ref_ = x[torch.from_numpy(keep)].float().numpy()  # (R, D)
        self._unit_ref = None  # nncos: the unit reference rows, made on first use
        if "seg" in self.parts:  # synthetic-anomaly segmentation net on the grid images
            gh, gw = self.geometry_["grid"]
            xs = x.float().view(len(x), self.encoder.channels, gh, gw)
            self.seg_net_ = train_segmenter(xs, steps=self.seg_steps, seed=self.seed,
                                            width=self.seg_width)
        if any(p in self.parts for p in PADIM_PARTS):
            self._fit_padim(images)
        if any(p in self.parts for p in FINE_PARTS):
            x = self._grid_pixels(images, "grid2").double()
            mean = x.mean(0)
            self.grid2_mean_ = mean.float().numpy()
            self.grid2_std_ = (x.std(0) + 0.02).float().numpy()
            k = int(min(self.components, len(x) - 1, x.shape[1]))
            if k >= 1:
                _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
                self.grid2_components_ = vt[:k].float().numpy()
            else:
                self.grid2_components_ = np.zeros((0, x.shape[1]), dtype=np.float32)

    def _padim_pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Images resized to the padim input (FEATURE_STRIDE pixels per grid cell),
        float (N, C, 4 gh, 4 gw) in [0, 1]."""
        size = padim.input_size(tuple(self.geometry_["grid"]))
        return torch.cat([self._resized(p, size, smooth_up=True) for p in images])

    def _fit_padim(self, images: Sequence[np.ndarray]) -> None:
        """The padim parts: random features' per-position Gaussians (embedder/padim.py),
        `{part}_mean_` and `{part}_precision_` for each of PADIM_PARTS in `parts`."""
        grid = tuple(self.geometry_["grid"])
        self.padim_net_ = padim.feature_net(self.encoder.channels, self.seed)
        for part, standardize in PADIM_PARTS.items():
            if part not in self.parts:
                continue
            # resized in batches, so the resized pixels never all sit in memory
            batches = (self._padim_pixels(images[i : i + padim.BATCH])
                       for i in range(0, len(images), padim.BATCH))
            model = padim.fit_padim(self.padim_net_, batches, grid, cov=self.padim_cov,
                                    dims=self.padim_dims, standardize=standardize)
            setattr(self, f"{part}_mean_", model["mean"].numpy())
            # contiguous (fit_padim)
            setattr(self, f"{part}_precision_", model["precision"].numpy())

    # ---- scoring ------------------------------------------------------------------------

    def _global_maps(self, pixels: np.ndarray) -> dict[str, torch.Tensor]:
        """Pooled per-cell maps of the global parts, each (1, 1, gh, gw)."""
        gh, gw = self.geometry_["grid"]
        c = self.encoder.channels
        x = self._grid_pixels([pixels])[0]  # (D,)
        mean = torch.from_numpy(self.grid_mean_)
        out = {}
        if "pca" in self.parts or "pcamean" in self.parts:
            v = torch.from_numpy(self.grid_components_)  # (k, D)
            d = x - mean
            r = d - (d @ v.T) @ v
            e = (r * r).view(c, gh, gw).mean(0)[None, None]  # (1, 1, gh, gw)
            m = _pool_same(e, min(self.grid_window, gh, gw))
            out["pca"] = m
            # the whole image's mean squared error (the PCA-64 baseline's statistic)
            out["pcamean"] = (m, float(e.mean()))
        if "gauss" in self.parts:
            z = ((x - mean) / torch.from_numpy(self.grid_std_)).abs()
            z = z.view(c, gh, gw).mean(0)[None, None]
            out["gauss"] = _pool_same(z, min(self.gauss_window, gh, gw))
        if "nn" in self.parts:
            ref = torch.from_numpy(self.grid_ref_)  # (R, D)
            d2 = (ref * ref).sum(1) - 2 * (ref @ x) + (x * x).sum()
            j = int(d2.argmin())
            diff = (x - ref[j]) ** 2
            e = diff.view(c, gh, gw).mean(0)[None, None]
            # map: the squared difference to the nearest normal, pooled; score: the distance
            m = _pool_same(e, min(self.grid_window, gh, gw))
            out["nn"] = (m, float(diff.sum().sqrt()))
        if "nncos" in self.parts:
            ref = self._unit_reference()  # (R, D), rows zero-mean, unit norm
            u = _unit(x[None])[0]  # (D,)
            j = int((ref @ u).argmax())  # the largest cosine = the smallest unit distance
            diff = (u - ref[j]) ** 2
            m = _pool_same(diff.view(c, gh, gw).mean(0)[None, None],
                           min(self.grid_window, gh, gw))
            out["nncos"] = (m, float(diff.sum().sqrt()))
        if "seg" in self.parts:
            p = segment(self.seg_net_, x.view(1, c, gh, gw))
            out["seg"] = _pool_same(p, min(self.grid_window, gh, gw))
        padim_parts = [p for p in PADIM_PARTS if p in self.parts]
        if padim_parts:
            x = self._padim_pixels([pixels])
            for part in padim_parts:
                model = {"mean": torch.from_numpy(getattr(self, f"{part}_mean_")),
                         "precision": torch.from_numpy(getattr(self, f"{part}_precision_"))}
                m = padim.padim_distance(self.padim_net_, model, x, (gh, gw),
                                         standardize=PADIM_PARTS[part])
                out[part] = _pool_same(m[None], min(3, gh, gw))
        if any(p in self.parts for p in FINE_PARTS):
            gh, gw = self.geometry_["grid2"]
            x = self._grid_pixels([pixels], "grid2")[0]
            d = x - torch.from_numpy(self.grid2_mean_)
            if "pca2" in self.parts:
                v = torch.from_numpy(self.grid2_components_)
                r = d - (d @ v.T) @ v
                e = (r * r).view(c, gh, gw).mean(0)[None, None]
                out["pca2"] = _pool_same(e, min(self.grid_window, gh, gw))
            if "gauss2" in self.parts:
                z = (d / torch.from_numpy(self.grid2_std_)).abs().view(c, gh, gw).mean(0)
                out["gauss2"] = _pool_same(z[None, None], min(self.gauss_window, gh, gw))
        return out

    def _part_maps(self, pixels: np.ndarray) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Raw part scores (P,) and the parts' pooled raw maps (each (1, 1, h', w'))."""
        scores, maps = [], []
        glob = self._global_maps(pixels) if any(p in self.parts for p in GLOBAL_PARTS) else {}
        for part in self.parts:
            if part == "texture":
                m = torch.from_numpy(self._stitched(pixels, full_size=False))
                m = m[None, None]
                scores.append(self._texture_reduce(m))
                maps.append(m)
            elif part == "nn":
                m, score = glob[part]
                scores.append(score)
                # in score units: the pooled squared difference summed over the grid, rooted
                maps.append((m * float(m[0, 0].numel() * self.encoder.channels)).sqrt())
            elif part in IMAGE_PARTS:  # an image-level score; its map is not in MAP_PARTS
                m, score = glob[part]
                scores.append(score)
                maps.append(m)
            else:
                m = glob[part]
                scores.append(float(m.max()))
                maps.append(m)
        return np.asarray(scores, dtype=np.float64), maps

    def _unit_reference(self) -> torch.Tensor:
        """The reference grid images made zero-mean and unit-norm (nncos), cached."""
        if getattr(self, "_unit_ref", None) is None:
            self._unit_ref = _unit(torch.from_numpy(self.grid_ref_))
        return self._unit_ref

    def _texture_reduce(self, m: torch.Tensor) -> float:
        w = min(self.window, *m.shape[-2:])
        return float(F.avg_pool2d(m, w, stride=1).max())

    def _part_scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self._part_maps(p)[0] for p in images]) if len(images) else \
            np.zeros((0, len(self.parts)))

    def _combine(self, raw: np.ndarray) -> np.ndarray:
        """(N, P) raw part scores -> (N,) combined score (>= 0), see `_combine_z`."""
        return _combine_z(self._z(raw), self.combine, axis=1)

    def _z(self, raw: np.ndarray) -> np.ndarray:
        """(N, P) raw part scores -> standardized (N, P) by the calibration normals."""
        return standardize(raw, self.part_loc_, self.part_spread_, self.spread)

    def _raw_scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not hasattr(self, "part_loc_"):  # inside fit, before the parts are standardized
            return super()._raw_scores(images)
        return self._combine(self._part_scores(images))

    def score_and_map(self, pixels: np.ndarray) -> tuple[float, np.ndarray]:
        self._check_fitted()
        raw, maps = self._part_maps(pixels)
        score = float(self._combine(raw[None])[0]) / self.scale_
        h = max(int(round(pixels.shape[0] * self.scale)), 1)
        w = max(int(round(pixels.shape[1] * self.scale)), 1)
        zs = self._map_z(maps, (h, w))
        if not zs:  # only image-level parts: a flat map at the score
            return score, np.full(pixels.shape[:2], score, dtype=np.float32)
        z = np.stack(list(zs.values()))
        # the map takes each pixel's strongest localizing part (an L2 map would blur the sharp
        # local part with the coarse global ones: localization 0.936 vs 0.947 on NEU
        # synthetic); version 1 ("max" models) keeps its softplus of the max
        amap = np.maximum(z.max(0), 0.0) if self.combine == "l2" else \
            _combine_z(z, self.combine, axis=0)
        return score, self._upsample(amap.astype(np.float32) / self.scale_, pixels.shape[:2])

    def _map_z(self, maps: list[torch.Tensor], size: tuple[int, int]) -> dict[str, np.ndarray]:
        """The localizing parts' (MAP_PARTS) standardized maps at `size`, {part: (h, w)}."""
        out = {}
        for i, (part, m) in enumerate(zip(self.parts, maps, strict=True)):
            if part not in MAP_PARTS:
                continue
            m = F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
            out[part] = standardize(m[0, 0].numpy(), self.part_loc_[i], self.part_spread_[i],
                                    self.spread)
        return out

    def part_maps(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Each localizing part's standardized map at the input size, {part: float32 (H, W)}
        (for measuring other map rules; the heatmap combines them with `combine`)."""
        self._check_fitted()
        _, maps = self._part_maps(pixels)
        return {p: self._upsample(z.astype(np.float32), pixels.shape[:2])
                for p, z in self._map_z(maps, pixels.shape[:2]).items()}

    def decision_function(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Returns float64 (n,); higher = more anomalous; > threshold_ is flagged."""
        self._check_fitted()
        return self._combine(self._part_scores(images)) / self.scale_

    def anomaly_map(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._check_fitted()
        return [self.score_and_map(p)[1] for p in images]

    def part_decision(self, images: Sequence[np.ndarray]
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """decision_function(images) and each part's standardized score (N,), in one pass.

        Returns (scores (N,), {part: z (N,)}); higher = more anomalous.
        """
        self._check_fitted()
        raw = self._part_scores(images)
        z = self._z(raw)
        return self._combine(raw) / self.scale_, {p: z[:, i] for i, p in enumerate(self.parts)}

    def part_raw(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Each part's raw (unstandardized) score, float64 (N, P) in `parts` order; the
        calibration images' are `part_scores_`. For measuring other combination rules."""
        self._check_fitted()
        return self._part_scores(images)

    def calibration_parts(self) -> dict[str, np.ndarray]:
        """Each part's standardized scores of the calibration images (from fit)."""
        z = self._z(self.part_scores_)
        return {p: z[:, i] for i, p in enumerate(self.parts)}

    # ---- persistence --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {**super().state(), "version": VERSION, "geometry_": self.geometry_,
                "part_loc_": [float(v) for v in self.part_loc_],
                "part_spread_": [float(v) for v in self.part_spread_]}

    def arrays(self) -> dict[str, np.ndarray]:
        out = super().arrays() if "texture" in self.parts else {}
        if any(p in self.parts for p in GLOBAL_PARTS):
            out.update({"grid_mean": self.grid_mean_, "grid_std": self.grid_std_,
                        "grid_components": self.grid_components_})
        if any(p in self.parts for p in NN_PARTS):
            out["grid_ref"] = self.grid_ref_
        if any(p in self.parts for p in FINE_PARTS):
            out.update({"grid2_mean": self.grid2_mean_, "grid2_std": self.grid2_std_,
                        "grid2_components": self.grid2_components_})
        if "seg" in self.parts:
            out.update({f"seg.{k}": v.detach().cpu().numpy()
                        for k, v in self.seg_net_.state_dict().items()})
        padim_parts = [p for p in PADIM_PARTS if p in self.parts]
        for part in padim_parts:
            out.update({f"{part}_mean": getattr(self, f"{part}_mean_"),
                        f"{part}_precision": getattr(self, f"{part}_precision_")})
        if padim_parts:
            out.update({f"padim.{k}": v.detach().cpu().numpy()
                        for k, v in self.padim_net_.state_dict().items()})
        return out

    def load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> DetectorScorer:
        if int(state.get("version", 1)) < 2:  # saved before `combine` and `spread` existed
            self.combine, self.spread = "max", "std"
        self.geometry_ = state["geometry_"]
        self.part_loc_ = np.asarray(state["part_loc_"], dtype=np.float64)
        self.part_spread_ = np.asarray(state["part_spread_"], dtype=np.float64)
        if any(p in self.parts for p in GLOBAL_PARTS):
            self.grid_mean_ = np.asarray(arrays["grid_mean"], dtype=np.float32)
            self.grid_std_ = np.asarray(arrays["grid_std"], dtype=np.float32)
            self.grid_components_ = np.asarray(arrays["grid_components"], dtype=np.float32)
        if any(p in self.parts for p in NN_PARTS):
            self.grid_ref_ = np.asarray(arrays["grid_ref"], dtype=np.float32)
            self._unit_ref = None
        if any(p in self.parts for p in FINE_PARTS):
            self.grid2_mean_ = np.asarray(arrays["grid2_mean"], dtype=np.float32)
            self.grid2_std_ = np.asarray(arrays["grid2_std"], dtype=np.float32)
            self.grid2_components_ = np.asarray(arrays["grid2_components"], dtype=np.float32)
        if "seg" in self.parts:
            net = Segmenter(self.encoder.channels, self.seg_width)
            net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                                 if k.startswith("seg.")})
            self.seg_net_ = net.eval()
        padim_parts = [p for p in PADIM_PARTS if p in self.parts]
        for part in padim_parts:
            mean = np.asarray(arrays[f"{part}_mean"], dtype=np.float32)
            prec = np.ascontiguousarray(arrays[f"{part}_precision"], dtype=np.float32)
            setattr(self, f"{part}_mean_", mean)
            setattr(self, f"{part}_precision_", prec)
            # what was fitted, whatever the params say (a model saved before `padim_cov`)
            self.padim_cov = "position" if prec.ndim == 3 else "shared"
            self.padim_dims = int(mean.shape[1])
        if padim_parts:
            pnet = padim.FeatureNet(self.encoder.channels)
            pnet.load_state_dict({k[6:]: torch.from_numpy(np.array(v))
                                  for k, v in arrays.items() if k.startswith("padim.")})
            self.padim_net_ = pnet.eval()
        if "texture" in self.parts:
            return super().load_state(state, arrays)
        return TileScorer.load_state(self, state, arrays)


SCORERS[DetectorScorer.name] = DetectorScorer
