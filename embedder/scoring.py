"""Anomaly scorers: a trained model + calibration on normal images -> scores, flags, heatmaps.

Every scorer keeps PyOD's contract and sign (higher = more anomalous):

    scorer = make_scorer("knn", encoder).fit(normal_images)   # held-out normals
    scorer.decision_function(images)   # (n,) float, higher = more anomalous
    scorer.predict(images)             # (n,) 0/1 == decision_function > threshold_
    scorer.anomaly_map(images)         # list of (H, W) float maps at each input's size

Images are uint8 arrays (H, W) or (H, W, 3) of any size and aspect ratio. They
are never squashed to the model's input: each image is (optionally, mildly)
rescaled by `scale`, cut into overlapping tiles of the model's input size
(`stride` apart, the last tile flush with the edge), every tile is scored per
pixel, and the tile maps are stitched back (mean where tiles overlap). The
image score reduces the stitched map: a global mean (`mse`, `ssim`) or the
maximum of the map pooled over `window`-pixel squares (`local-mse`,
`local-ssim`, `knn`, `texture`), so that a defect a few pixels wide is not
averaged away. `knn` compares the model's local features with those of
normal images; `texture` compares local texture statistics; `detector` (the default,
embedder/detector.py) takes the maximum of global and local standardized scores.

Score normalization: raw scores are divided by `scale_`, the raw score that
the calibration images exceed at the target false-positive rate `fpr` (or the
`contamination` fraction). So the calibrated threshold is 1.0; an explicit
`threshold` is given in the same units. `calibration_scores_` keeps the
normalized calibration scores so that a threshold for another FPR can be
derived later without the images (`threshold_for_fpr`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.images import resize

# Exact kNN memory banks of at most this many dimensions are searched with a k-d tree.
KDTREE_MAX_DIM = 16


def tile_positions(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering [0, length): `stride` apart, the last one flush."""
    if length <= tile:
        return [0]
    pos = list(range(0, length - tile + 1, stride))
    if pos[-1] != length - tile:
        pos.append(length - tile)
    return pos


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> uint8 (C, H, W) with the model's channel count."""
    arr = pixels
    if channels == 1 and arr.ndim == 3:
        arr = np.rint(arr @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    if channels == 3 and arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _gaussian(window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, w, w)


def ssim_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel (1 - SSIM) / 2 in [0, 1], averaged over channels. x, y: (B, C, H, W) in [0, 1]."""
    c = x.shape[1]
    w = _gaussian().to(x).expand(c, 1, 7, 7)
    pad = (3, 3, 3, 3)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, pad, mode="reflect"), w, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ((1 - ssim) / 2).clamp(0, 1).mean(1)  # (B, H, W)


class TileScorer:
    """Base class: tiling, stitching, calibration and the PyOD-style contract.

    Subclasses implement `_tile_maps(x) -> (T, t, t)` per-pixel raw errors of
    a batch of tiles x (T, C, t, t) in [0, 1]. `reduce` is "mean" or "max"
    (max of the map average-pooled over `window` pixels).
    """

    name = "base"
    reduce = "max"
    uses_reference = False  # fit(images, reference=train_images) builds a memory bank

    def __init__(
        self,
        encoder: Encoder,
        *,
        scale: float = 1.0,
        stride: int | None = None,
        window: int = 8,
        fpr: float = 0.01,
        contamination: float | None = None,
        threshold: float | None = None,
        batch_size: int = 64,
    ) -> None:
        self.encoder = encoder
        self.scale = scale
        self.stride = stride
        self.window = window
        self.fpr = fpr
        self.contamination = contamination
        self.threshold = threshold
        self.batch_size = batch_size

    # ---- contract -----------------------------------------------------------------------

    def fit(self, images: Sequence[np.ndarray], **kwargs: Any) -> TileScorer:
        """Calibrate on normal images (held out from the model's training); returns self.

        Sets `scale_` (raw score at the threshold), `decision_scores_` (the
        normalized scores of `images`), `threshold_`, `labels_` and
        `calibration_scores_`.
        """
        self._validate(images)
        raw = self._raw_scores(images)
        self._calibrate(raw)
        return self

    def decision_function(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Anomaly scores of `images`.

        Returns:
            float64 array (n,); higher = more anomalous; > threshold_ is flagged.
        """
        self._check_fitted()
        return self._raw_scores(images) / self.scale_

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Returns int array (n,): 1 where decision_function > threshold_ (anomalous), else 0."""
        return (self.decision_function(images) > self.threshold_).astype(np.int64)

    def anomaly_map(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-pixel maps, each float32 (H, W) at its input's resolution; higher = more anomalous.

        In score units: `reduce(map)` is the image's decision_function score.
        """
        self._check_fitted()
        return [self._stitched(p, full_size=True) / self.scale_ for p in images]

    def score_and_map(self, pixels: np.ndarray) -> tuple[float, np.ndarray]:
        """One image's score and its map at input resolution, from one pass over its tiles."""
        self._check_fitted()
        m = self._stitched(pixels, full_size=False)
        score = self._reduce(m) / self.scale_
        return score, self._upsample(m, pixels.shape[:2]) / self.scale_

    def threshold_for_fpr(self, fpr: float) -> float:
        """Threshold (score units) that the calibration scores exceed at rate `fpr`."""
        _check_rate("fpr", fpr)
        self._check_fitted()
        return float(np.quantile(self.calibration_scores_, 1 - fpr, method="higher"))

    # ---- persistence --------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "stride": self.stride, "window": self.window,
                "fpr": self.fpr, "contamination": self.contamination,
                "threshold": self.threshold, "batch_size": self.batch_size}

    def state(self) -> dict[str, Any]:
        """JSON-able fitted state (arrays() holds any large arrays)."""
        self._check_fitted()
        return {"name": self.name, "params": self.params(), "scale_": float(self.scale_),
                "threshold_": float(self.threshold_),
                "calibration_scores_": [round(float(s), 6) for s in self.calibration_scores_]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> TileScorer:
        self.scale_ = float(state["scale_"])
        self.threshold_ = float(state["threshold_"])
        self.calibration_scores_ = np.asarray(state["calibration_scores_"], dtype=np.float64)
        self.decision_scores_ = self.calibration_scores_.copy()
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self

    # ---- internals ----------------------------------------------------------------------

    def _validate(self, images: Sequence[np.ndarray]) -> None:
        if len(images) < 2:
            msg = f"fit needs at least 2 normal images. Got {len(images)} instead."
            raise ValueError(msg)
        if self.contamination is not None:
            _check_rate("contamination", self.contamination)
        else:
            _check_rate("fpr", self.fpr)
        if not 0.25 <= self.scale <= 1.0:
            msg = f"The 'scale' option must be in [0.25, 1]. Got {self.scale} instead."
            raise ValueError(msg)
        tile = self.encoder.image_size
        if self.stride is not None and not 1 <= self.stride <= tile:
            msg = f"The 'stride' option must be in [1, {tile}]. Got {self.stride} instead."
            raise ValueError(msg)
        if not 1 <= self.window <= tile:
            msg = f"The 'window' option must be in [1, {tile}]. Got {self.window} instead."
            raise ValueError(msg)
        if self.threshold is not None and not self.threshold > 0:
            msg = f"The 'threshold' option must be > 0. Got {self.threshold} instead."
            raise ValueError(msg)

    def _calibrate(self, raw: np.ndarray) -> None:
        rate = self.contamination if self.contamination is not None else self.fpr
        scale = float(np.quantile(raw, 1 - rate, method="higher"))
        self.scale_ = scale if scale > 0 else 1e-12
        self.calibration_scores_ = np.sort(raw / self.scale_)
        self.decision_scores_ = raw / self.scale_
        self.threshold_ = float(self.threshold) if self.threshold is not None else 1.0
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)

    def _check_fitted(self) -> None:
        if not hasattr(self, "scale_"):
            msg = f"This {type(self).__name__} is not fitted yet; call fit(normal_images) first."
            raise RuntimeError(msg)

    def _raw_scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray([self._reduce(self._stitched(p, full_size=False)) for p in images],
                          dtype=np.float64)

    def _reduce(self, m: np.ndarray) -> float:
        if self.reduce == "mean":
            return float(m.mean())
        w = min(self.window, *m.shape)
        t = torch.from_numpy(m)[None, None]
        return float(F.avg_pool2d(t, w, stride=1).max())

    def _prepare(self, pixels: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Rescale, convert channels, pad up to one tile; returns (C, H', W') float and (h, w)."""
        h, w = pixels.shape[:2]
        if self.scale != 1.0:
            pixels = resize(pixels, (max(1, round(w * self.scale)), max(1, round(h * self.scale))))
        arr = to_channels(pixels, self.encoder.channels)
        x = torch.from_numpy(np.array(arr, dtype=np.float32)).div_(255.0)  # (C, h, w)
        h, w = x.shape[1:]
        t = self.encoder.image_size
        if h < t or w < t:
            mode = "reflect" if h > t // 2 and w > t // 2 else "replicate"
            x = F.pad(x[None], (0, max(0, t - w), 0, max(0, t - h)), mode=mode)[0]
        return x, (h, w)

    @torch.no_grad()
    def _stitched(self, pixels: np.ndarray, *, full_size: bool) -> np.ndarray:
        """Score every tile and stitch: float32 (h, w) at the scaled size (or input size)."""
        x, (h, w) = self._prepare(pixels)
        t = self.encoder.image_size
        stride = self.stride or max(1, t // 2)
        ys = tile_positions(x.shape[1], t, stride)
        xs = tile_positions(x.shape[2], t, stride)
        boxes = [(y, x0) for y in ys for x0 in xs]
        total = torch.zeros(x.shape[1:])
        count = torch.zeros(x.shape[1:])
        for s in range(0, len(boxes), self.batch_size):
            chunk = boxes[s : s + self.batch_size]
            tiles = torch.stack([x[:, y : y + t, x0 : x0 + t] for y, x0 in chunk])  # (T, C, t, t)
            maps = self._tile_maps(tiles.to(self.encoder.device)).float().cpu()  # (T, t, t)
            for (y, x0), m in zip(chunk, maps, strict=True):
                total[y : y + t, x0 : x0 + t] += m
                count[y : y + t, x0 : x0 + t] += 1
        m = (total / count.clamp_min(1))[:h, :w].numpy()
        return self._upsample(m, pixels.shape[:2]) if full_size else m

    @staticmethod
    def _upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if m.shape == tuple(size):
            return m.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
        up = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
        return up[0, 0].numpy()

    def _tile_maps(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MSEScorer(TileScorer):
    """Mean squared reconstruction error over the image (a global mean: misses small defects)."""

    name = "mse"
    reduce = "mean"

    def _tile_maps(self, x: torch.Tensor) -> torch.Tensor:
        rec = self.encoder.model.reconstruct(x)  # (T, C, t, t)
        return ((rec - x) ** 2).mean(1)  # (T, t, t)


class SSIMScorer(TileScorer):
    """Mean structural dissimilarity (1 - SSIM) / 2 between a tile and its reconstruction."""

    name = "ssim"
    reduce = "mean"

    def _tile_maps(self, x: torch.Tensor) -> torch.Tensor:
        return ssim_error(x, self.encoder.model.reconstruct(x))  # (T, t, t)


class LocalMSEScorer(MSEScorer):
    """Maximum of the squared reconstruction error average-pooled over `window` pixels."""

    name = "local-mse"
    reduce = "max"


class LocalSSIMScorer(SSIMScorer):
    """Maximum of the SSIM error average-pooled over `window` pixels."""

    name = "local-ssim"
    reduce = "max"


class KNNScorer(TileScorer):
    """Latent score: distance of local features to the k nearest normal features.

    Local features are the model's `features(x)` map (B, C, h, w), one
    L2-normalized vector per location; a model without `features` gives one
    `embed(x)` vector per tile. The memory bank of normal vectors is searched
    exactly (`index_factory` "Flat", the default: a matmul and a top-k in
    torch) or through any other faiss `index_factory` spec; squared L2. The
    per-location distance (mean over k) is upsampled to the tile.
    `fit(images, reference=train_images)` builds the bank from the model's
    training images and calibrates on `images`; without `reference` the bank
    comes from `images` themselves, each half scored against the other half
    for calibration.
    """

    name = "knn"
    reduce = "max"
    uses_reference = True

    def __init__(self, encoder: Encoder, *, k: int = 3, max_bank: int = 10000,
                 index_factory: str = "Flat", pixel_weight: float = 3.0, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(encoder, **kwargs)
        self.k = k
        self.pixel_weight = pixel_weight
        self.max_bank = max_bank
        self.index_factory = index_factory
        self.seed = seed

    def params(self) -> dict[str, Any]:
        return {**super().params(), "k": self.k, "max_bank": self.max_bank,
                "index_factory": self.index_factory, "pixel_weight": self.pixel_weight,
                "seed": self.seed}

    def fit(self, images: Sequence[np.ndarray], *,
            reference: Sequence[np.ndarray] | None = None, **kwargs: Any) -> KNNScorer:
        self._validate(images)
        if self.k < 1:
            msg = f"The 'k' option must be >= 1. Got {self.k} instead."
            raise ValueError(msg)
        if reference is not None and len(reference):
            self._set_bank(self._bank_vectors(reference))
            raw = self._raw_scores(images)
        else:
            half = len(images) // 2
            a, b = list(images[:half]), list(images[half:])
            raw = np.zeros(len(images))
            self._set_bank(self._bank_vectors(a))
            raw[half:] = self._raw_scores(b)
            self._set_bank(self._bank_vectors(b))
            raw[:half] = self._raw_scores(a)
            self._set_bank(self._bank_vectors(list(images)))
        self._calibrate(raw)
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank_}

    def load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> KNNScorer:
        self._set_bank(np.ascontiguousarray(arrays["bank"], dtype=np.float32))
        return super().load_state(state, arrays)

    def _set_bank(self, bank: np.ndarray) -> None:
        """Index the memory bank: exact search for "Flat" (a k-d tree for descriptors of at
        most `KDTREE_MAX_DIM` numbers, else torch), or a faiss index."""
        self.bank_ = bank
        self._tree = None
        if self.index_factory == "Flat" and bank.shape[1] <= KDTREE_MAX_DIM:
            # Low-dimensional descriptors (`texture`: 12) form tight clusters that a k-d tree
            # prunes well: exact and 4-6x faster than a matmul over the whole bank.
            from scipy.spatial import cKDTree

            self._tree = cKDTree(bank)
            self._index = None
            return
        if self.index_factory == "Flat":
            # One matmul and a top-k per chunk: several times faster on CPU than faiss's
            # flat search for a few hundred queries against a 10k bank.
            b = torch.from_numpy(bank)
            self._bank_t = b.T.contiguous()  # (D, B)
            self._bank_sq = (b * b).sum(1)[None]  # (1, B)
            self._index = None
            return
        import faiss

        index = faiss.index_factory(bank.shape[1], self.index_factory, faiss.METRIC_L2)
        if not index.is_trained:
            index.train(bank)
        index.add(bank)
        self._index = index

    def _knn_distance(self, q: torch.Tensor) -> torch.Tensor:
        """Mean squared L2 distance of each query row (N, D) to its k nearest bank vectors."""
        k = min(self.k, self.bank_.shape[0])
        if self._tree is not None:
            dist, _ = self._tree.query(q.numpy(), k=[*range(1, k + 1)],
                                       workers=torch.get_num_threads())
            return torch.from_numpy(np.square(dist, dtype=np.float32)).mean(1)
        if self._index is not None:
            dist, _ = self._index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), k)
            return torch.from_numpy(dist).mean(1)
        out = []
        for s in range(0, len(q), 1024):
            c = q[s : s + 1024]
            part = torch.addmm(self._bank_sq, c, self._bank_t, alpha=-2)  # |b|^2 - 2 q.b
            near = part.topk(k, dim=1, largest=False).values + (c * c).sum(1, keepdim=True)
            out.append(near.clamp_min(0).mean(1))
        return torch.cat(out)

    @torch.no_grad()
    def _local_features(self, x: torch.Tensor) -> torch.Tensor:
        model = self.encoder.model
        if hasattr(model, "features"):
            f = model.features(x)  # (T, C, h, w)
        else:
            f = model.embed(x)[:, :, None, None]  # (T, D, 1, 1)
        f = F.normalize(f.float(), dim=1)
        if not self.pixel_weight:
            return f
        # the raw pixels around each location: a (2s x 2s) patch per cell of side s
        s = max(1, x.shape[-1] // f.shape[-1])
        p = F.unfold(x.float(), kernel_size=2 * s, stride=s, padding=s // 2)  # (T, C*4s*s, L)
        h, w = f.shape[-2:]
        p = p[:, :, : h * w] if p.shape[-1] >= h * w else F.pad(p, (0, h * w - p.shape[-1]))
        p = p.view(x.shape[0], -1, h, w) * (self.pixel_weight / math.sqrt(p.shape[1]))
        return torch.cat([f, p], dim=1)  # (T, C + C_in*4s*s, h, w)

    @torch.no_grad()
    def _bank_vectors(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Local feature vectors of every tile of `images`, sampled down to `max_bank`."""
        t = self.encoder.image_size
        stride = self.stride or max(1, t // 2)
        out = []
        for p in images:
            x, _ = self._prepare(p)
            boxes = [(y, x0) for y in tile_positions(x.shape[1], t, stride)
                     for x0 in tile_positions(x.shape[2], t, stride)]
            for s in range(0, len(boxes), self.batch_size):
                tiles = torch.stack([x[:, y : y + t, x0 : x0 + t]
                                     for y, x0 in boxes[s : s + self.batch_size]])
                f = self._local_features(tiles.to(self.encoder.device))  # (T, C, h, w)
                out.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu().numpy())
        bank = np.concatenate(out).astype(np.float32)
        if len(bank) > self.max_bank:
            rng = np.random.default_rng(self.seed)
            bank = bank[np.sort(rng.choice(len(bank), self.max_bank, replace=False))]
        return np.ascontiguousarray(bank)

    def _tile_maps(self, x: torch.Tensor) -> torch.Tensor:
        f = self._local_features(x)  # (T, C, h, w)
        n, c, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, c).float().cpu()  # (T*h*w, C)
        d = self._knn_distance(q).view(n, 1, h, w)  # (T, 1, h, w)
        t = x.shape[-1]
        return F.interpolate(d, size=(t, t), mode="bilinear", align_corners=False)[:, 0]


# Derivative filters for the texture statistics: Sobel x and y, Laplacian, the two diagonals.
_TEXTURE_FILTERS = torch.tensor([
    [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],
    [[2, 1, 0], [1, 0, -1], [0, -1, -2]],
], dtype=torch.float32)[:, None] / 4  # (5, 1, 3, 3)


def texture_statistics(x: torch.Tensor, grid: int = 8, levels: int = 2) -> torch.Tensor:
    """Local texture statistics of tiles on a `grid` x `grid` cell map.

    x: (T, C, t, t) in [0, 1] (channels averaged to gray). For every cell of
    side s = t / grid, pooled over the 2s x 2s window around it: the mean
    intensity, the standard deviation (contrast), and the mean absolute
    response of five derivative filters at `levels` scales (full, half, ...).
    Windows at the tile's edge are zero-padded, so edge cells are compared
    with edge cells of the memory bank.

    Returns (T, 2 + 5 * levels, grid, grid).
    """
    g = x.float().mean(1, keepdim=True)
    t = x.shape[-1]
    s = max(1, t // grid)
    n = t // s

    def pool(m: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(m, 2 * s, stride=s, padding=s // 2)[..., :n, :n]

    mean = pool(g)
    outs = [mean, (pool(g * g) - mean * mean).clamp_min(0).sqrt()]
    k = _TEXTURE_FILTERS.to(g)
    cur = g
    for level in range(levels):
        r = F.conv2d(F.pad(cur, (1, 1, 1, 1), mode="reflect"), k).abs()
        if level:
            r = F.interpolate(r, size=(t, t), mode="nearest")
        outs.append(pool(r))
        if min(cur.shape[-2:]) < 4:
            outs += [pool(r)] * (levels - level - 1)  # tiny tiles: repeat the coarsest scale
            break
        cur = F.avg_pool2d(cur, 2)
    return torch.cat(outs, 1)


class TextureScorer(KNNScorer):
    """Distance of local texture statistics to the k nearest normal ones.

    The descriptor of each cell (`texture_statistics`: mean, contrast and
    derivative-filter energies at two scales, pooled around the cell) is
    z-scored with the mean and deviation of the memory bank and compared by
    kNN like `knn`. Contrast and energies enter as log(value + `log_eps`):
    they are heavy-tailed and grow with brightness, so on a linear scale the
    busy bright cells set the spread and a smooth cell is hard to tell from a
    dark one; on a log scale equal ratios are equal distances (`log_eps=0`
    keeps the raw values). Pooled energies do not depend on where a texture's
    grains fall, so a smooth spot, a scratch or a foreign patch in a busy
    texture stands out, where raw pixel patches of two normal grains differ
    as much as a grain and a smooth spot. The model is used only for the
    tile size; `knn` is the learned (latent) counterpart. The default before
    `detector` (embedder/detector.py), which uses it as its local part.
    """

    name = "texture"

    def __init__(self, encoder: Encoder, *, levels: int = 2, grid: int = 8,
                 log_eps: float = 0.01, max_bank: int = 30000, **kwargs: Any) -> None:
        super().__init__(encoder, max_bank=max_bank, **kwargs)
        self.levels = levels
        self.grid = grid
        self.log_eps = log_eps

    def params(self) -> dict[str, Any]:
        return {**super().params(), "levels": self.levels, "grid": self.grid,
                "log_eps": self.log_eps}

    def fit(self, images: Sequence[np.ndarray], *,
            reference: Sequence[np.ndarray] | None = None, **kwargs: Any) -> TextureScorer:
        if self.levels < 1 or self.grid < 1:
            msg = f"The 'levels' and 'grid' options must be >= 1. Got {self.levels} and " \
                  f"{self.grid} instead."
            raise ValueError(msg)
        if self.log_eps < 0:
            msg = f"The 'log_eps' option must be >= 0. Got {self.log_eps} instead."
            raise ValueError(msg)
        self._validate(images)
        self.mean_ = self.std_ = None  # raw statistics first, to standardize with
        raw = self._bank_vectors(reference if reference is not None and len(reference)
                                 else images)
        self.mean_ = raw.mean(0)
        self.std_ = raw.std(0) + 1e-6
        return super().fit(images, reference=reference, **kwargs)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "mean": self.mean_, "std": self.std_}

    def load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> TextureScorer:
        self.log_eps = state["params"].get("log_eps", 0.0)  # models saved before it: raw energies
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float32)
        self.std_ = np.asarray(arrays["std"], dtype=np.float32)
        return super().load_state(state, arrays)

    @torch.no_grad()
    def _local_features(self, x: torch.Tensor) -> torch.Tensor:
        f = texture_statistics(x, self.grid, self.levels)  # (T, D, g, g)
        if self.log_eps:
            f = torch.cat([f[:, :1], torch.log(f[:, 1:] + self.log_eps)], 1)
        if getattr(self, "mean_", None) is None:
            return f
        mean = torch.from_numpy(self.mean_).to(f)[None, :, None, None]
        std = torch.from_numpy(self.std_).to(f)[None, :, None, None]
        return (f - mean) / std


class CombinedScorer(TileScorer):
    """Mean of several scorers' normalized scores (each divided by its own `scale_`).

    The map is the mean of the parts' maps; the combined score is calibrated
    again so that its own threshold is 1.0.
    """

    name = "combined"

    def __init__(self, encoder: Encoder, *, parts: Sequence[str] = ("texture", "knn"),
                 part_params: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(encoder, **kwargs)
        self.parts = tuple(parts)
        self.part_params = part_params

    def params(self) -> dict[str, Any]:
        return {**super().params(), "parts": list(self.parts), "part_params": self.part_params}

    def _make_parts(self) -> list[TileScorer]:
        common = {k: v for k, v in super().params().items() if k != "threshold"}
        extra = self.part_params or {}
        return [make_scorer(p, self.encoder, **{**common, **extra.get(p, {})})
                for p in self.parts]

    def fit(self, images: Sequence[np.ndarray], **kwargs: Any) -> CombinedScorer:
        self._validate(images)
        unknown = [p for p in self.parts if p not in SCORERS or p == self.name]
        if unknown or not self.parts:
            msg = f"The 'parts' must be scorers from {sorted(set(SCORERS) - {self.name})}. " \
                  f"Got {list(self.parts)} instead."
            raise ValueError(msg)
        self.parts_ = [s.fit(images, **kwargs) for s in self._make_parts()]
        raw = np.mean([s.decision_scores_ for s in self.parts_], axis=0)
        self._calibrate(raw)
        return self

    def decision_function(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        return np.asarray([self.score_and_map(p)[0] for p in images])

    def anomaly_map(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._check_fitted()
        return [self.score_and_map(p)[1] for p in images]

    def score_and_map(self, pixels: np.ndarray) -> tuple[float, np.ndarray]:
        self._check_fitted()
        outs = [s.score_and_map(pixels) for s in self.parts_]
        score = float(np.mean([o[0] for o in outs])) / self.scale_
        return score, np.mean([o[1] for o in outs], axis=0) / self.scale_

    def state(self) -> dict[str, Any]:
        return {**super().state(), "parts_": [s.state() for s in self.parts_]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, s in enumerate(self.parts_) for k, v in s.arrays().items()}

    def load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> CombinedScorer:
        self.parts_ = []
        for i, (s, st) in enumerate(zip(self._make_parts(), state["parts_"], strict=True)):
            sub = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{i}.")}
            self.parts_.append(s.load_state(st, sub))
        return super().load_state(state, arrays)


SCORERS: dict[str, type[TileScorer]] = {
    cls.name: cls
    for cls in (MSEScorer, SSIMScorer, LocalMSEScorer, LocalSSIMScorer, KNNScorer, TextureScorer,
                CombinedScorer)
}
# `detector` (embedder/detector.py) builds on TextureScorer and adds itself to SCORERS.
import latentsight.embedder.detector  # noqa: E402, F401, I001
# chosen by its worst protocol in benchmarks/anomaly.py (docs/anomaly.md)
DEFAULT_SCORER = "detector"


def make_scorer(name: str, encoder: Encoder, **params: Any) -> TileScorer:
    """Build an unfitted scorer from the registry by name."""
    try:
        cls = SCORERS[name]
    except KeyError:
        msg = f"Unknown scorer {name!r}. Known: {', '.join(sorted(SCORERS))}."
        raise ValueError(msg) from None
    return cls(encoder, **params)


def scorer_from_state(encoder: Encoder, state: dict[str, Any],
                      arrays: dict[str, np.ndarray]) -> TileScorer:
    """Rebuild a fitted scorer from `state()` and `arrays()` as stored with a model."""
    scorer = make_scorer(state["name"], encoder, **state["params"])
    return scorer.load_state(state, arrays)


def _check_rate(name: str, value: float) -> None:
    if not 0 < value <= 0.5:
        msg = f"The '{name}' option must be in (0, 0.5]. Got {value} instead."
        raise ValueError(msg)
