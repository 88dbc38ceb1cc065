"""What the models share about their input: its geometry and the optional pixel-PCA part.

Geometry. A model's input is `image_size` rows by `image_width` columns
(`image_width` 0 = square, `image_size` x `image_size`: every checkpoint
saved before rectangular inputs existed). `resize` says how an image of
another size is brought to it: "squash" (resized to the input size whatever
its aspect: what every older checkpoint did, kept for them) or "pad"
(aspect-preserving resize to fit, centred, the rest filled with the image's
mean: a 600x240 image becomes a 160x64 input with no padding when the model's
input was chosen from such images, see `training.train.choose_input`).

Pixel PCA. With `pixel_pca` = k > 0 a model holds the mean and the first k
principal components of its training images' input pixels (buffers, saved in
model.safetensors beside the weights, so the checkpoint digest covers them),
and its search embedding is [unit(PCA_k(x)), unit(learned(x))]: the
combination that the retrieval benchmark ranks above either part alone on
most protocols. The training loop fits the components after training
(`fit_pixel_pca`); the learned part is trained alone (`embed_learned`).
`pixel_pca_standardize` (default off; every older checkpoint): the PCA is of each
image's pixels minus their mean, over their std (brightness- and contrast-free).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESIZE_MODES = ("squash", "pad")


def input_hw(config) -> tuple[int, int]:
    """(height, width) of a model's input from its config."""
    width = int(getattr(config, "image_width", 0) or 0)
    return int(config.image_size), width or int(config.image_size)


def check_input(config) -> None:
    """The geometry and pixel-PCA fields shared by every model config."""
    resize = getattr(config, "resize", "squash")
    if resize not in RESIZE_MODES:
        msg = f"The 'resize' must be one of {', '.join(RESIZE_MODES)}. Got {resize!r} instead."
        raise ValueError(msg)
    for name in ("image_width", "pixel_pca"):
        if getattr(config, name, 0) < 0:
            msg = f"The '{name}' must be >= 0. Got {getattr(config, name)} instead."
            raise ValueError(msg)


class PixelPCA(nn.Module):
    """x (B, C, H, W) -> its first k principal components (B, k); buffers set by `fit`.

    The learned part beside it is not centred: centring it on its training mean was
    measured worse on every protocol of benchmarks/retrieval.py (the learned part's
    common direction then acts as a constant that leaves the PCA's ranking in charge,
    with the learned part only breaking near-ties).
    """

    def __init__(self, k: int, dim: int, standardize: bool = False) -> None:
        super().__init__()
        self.standardize = standardize  # from the config, not a buffer: old files load as is
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(k, dim))

    def rows(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C*H*W), each row standardized (minus its mean, over its
        std) when `standardize`: the components then ignore brightness and contrast."""
        flat = x.flatten(1).to(dtype)
        if self.standardize:
            flat = flat - flat.mean(1, keepdim=True)
            flat = flat / flat.std(1, keepdim=True).clamp_min(1e-6)
        return flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.rows(x, self.mean.dtype)  # (B, C*H*W)
        return (flat - self.mean) @ self.components.T  # (B, k)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Mean and top principal directions of the rows of x (n, C, H, W) in [0, 1]."""
        flat = self.rows(x, torch.float64)  # (n, D)
        mean = flat.mean(0)
        k = self.components.shape[0]
        n, d = flat.shape
        q = min(k, n, d)
        if min(n, d) <= 1024:  # exact
            v = torch.linalg.svd(flat - mean, full_matrices=False)[2][:q].T  # (D, q)
        else:  # randomized, oversampled as scikit-learn's PCA does
            v = torch.svd_lowrank(flat - mean, q=min(q + 10, n, d), niter=7)[2][:, :q]
        comps = torch.zeros_like(self.components, dtype=torch.float64)
        comps[:q] = v.T
        self.mean.copy_(mean.to(self.mean.dtype))
        self.components.copy_(comps.to(self.components.dtype))


def attach_pixel_pca(model: nn.Module) -> None:
    """Give `model` its pixel-PCA buffers when its config asks for them."""
    k = int(getattr(model.config, "pixel_pca", 0) or 0)
    if k:
        h, w = input_hw(model.config)
        model.pixel_pca = PixelPCA(k, model.config.channels * h * w,
                                   bool(getattr(model.config, "pixel_pca_standardize", False)))


def combined_embedding(model: nn.Module, x: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """The learned embedding, or [unit(pixel PCA), unit(learned)] when the model has one."""
    pca = getattr(model, "pixel_pca", None)
    if pca is None:
        return learned
    return torch.cat([F.normalize(pca(x).to(learned.dtype), dim=1),
                      F.normalize(learned, dim=1)], dim=1)


def fit_pixel_pca(model: nn.Module, x: torch.Tensor) -> bool:
    """Fit a model's pixel PCA on float images x (n, C, H, W) in [0, 1]; False if it has none."""
    pca = getattr(model, "pixel_pca", None)
    if pca is None:
        return False
    pca.fit(x.to(pca.mean.device))
    return True
