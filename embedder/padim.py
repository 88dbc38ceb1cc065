"""Per-position Gaussians of random convolutional features (the detector's `padim` part).

    net = feature_net(channels=1, seed=0)                   # fixed random filters, no training
    model = fit_padim(net, batches, (64, 64))   # batches of (B, C, 4*gh, 4*gw) in [0, 1]
    dist = padim_distance(net, model, images, (64, 64))   # (N, gh, gw) Mahalanobis distances

PaDiM (Defard et al., 2020) models each position of a feature map of the
normal images by a Gaussian and scores a position by its Mahalanobis
distance. Its features usually come from a network pretrained on ImageNet,
which latentsight cannot download; here they come from two convolutions
with fixed random weights (torch's Kaiming-uniform init, from a seed):
random filters give a rich, stable description of local structure. Each
position has its own mean; the covariance is shared by default (the
within-position covariance pooled over positions: (positions x 64) means and
one 64 x 64 matrix) or one per position (`cov="position"`, PaDiM's own, on
`dims` dimensions). In benchmarks/anomaly.py the part alone scored AUROC
0.734 / 0.807 on ELPV mono / poly shared and 0.828 / 0.821 per position on 32
dimensions (a 16 MB matrix on the 64-cell grid; 67 MB on 64 dimensions, whose
reading made the part four times slower). In the detector's default since it
raised the worst protocol (ELPV poly) at three seeds, per position on 32
dimensions: docs/anomaly.md ("Change of issue 13 (session 7)").

The input is the image at FEATURE_STRIDE times the grid (256 pixels on the
long side for the 64-cell grid), so a crack a few pixels wide in a 300x300
cell is still seen; the first layer's map is average-pooled to the grid, the
second's (stride 2) likewise, and DIMS of the concatenated channels (a fixed
random subset) are kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# the input is this many pixels per grid cell
FEATURE_STRIDE = 4
DIMS = 64  # channels kept of the two layers' 32 + 64
# of them, the dimensions of the detector's default (one covariance per position)
POSITION_DIMS = 32
COVS = ("shared", "position")
# the covariance is regularized by this times the identity (features are O(1))
RIDGE = 0.01
# `standardize`: the floor of an image's standard deviation (a flat image stays finite)
STD_FLOOR = 1e-3
BATCH = 32


class FeatureNet(nn.Module):
    """Two random convolutions: 5x5 (32 channels) and 3x3 stride 2 (64 channels), ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, 32, 5, padding=2)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        # the fixed random subset of the 96 channels kept (a buffer: saved with the weights)
        self.register_buffer("keep", torch.zeros(DIMS, dtype=torch.long))

    def forward(self, x: torch.Tensor, grid: tuple[int, int], dims: int = DIMS,
                standardize: bool = False) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, dims, gh, gw): the first `dims` kept channels pooled
        to the grid. Only the second layer's kept channels are computed (most of its cost).
        `standardize`: each image minus its mean, over its standard deviation first (blind
        to a whole image's brightness and contrast, as the `padimstd` part is)."""
        k = self.keep[:dims]
        n1 = self.c1.out_channels
        k2 = k[k >= n1] - n1
        if standardize:
            mean = x.mean((1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
            x = (x - mean) / (x.std((1, 2, 3), keepdim=True) + STD_FLOOR)
        else:
            x = (x - 0.5) / 0.25
        # channels-last: the same values, and pooling a (B, 32, H, W) map is ~5x faster
        x = x.contiguous(memory_format=torch.channels_last)
        a = self.c1(x).relu_()
        pooled = [F.adaptive_avg_pool2d(a, grid)]
        if len(k2):
            b = F.conv2d(a, self.c2.weight[k2], self.c2.bias[k2], stride=self.c2.stride,
                         padding=self.c2.padding).relu_()
            pooled.append(F.adaptive_avg_pool2d(b, grid))
        idx = k.clone()
        idx[k >= n1] = n1 + torch.arange(len(k2))  # the computed second-layer channels
        return torch.cat(pooled, 1)[:, idx]


def feature_net(channels: int, seed: int) -> FeatureNet:
    """The random feature network for `channels` input channels, the same for one seed."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    net = FeatureNet(channels)
    with torch.no_grad():
        for conv in (net.c1, net.c2):
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            bound = fan_in ** -0.5  # torch's default Conv2d init (Kaiming-uniform, a = sqrt(5))
            conv.weight.uniform_(-bound, bound, generator=g)
            conv.bias.uniform_(-bound, bound, generator=g)
        net.keep.copy_(torch.randperm(96, generator=g)[:DIMS].sort().values)
    return net.eval()


def input_size(grid: tuple[int, int]) -> tuple[int, int]:
    """The pixel size the images are resized to for a (gh, gw) grid."""
    return grid[0] * FEATURE_STRIDE, grid[1] * FEATURE_STRIDE


@torch.no_grad()
def fit_padim(net: FeatureNet, batches: Iterable[torch.Tensor], grid: tuple[int, int], *,
              cov: str = "shared", dims: int = DIMS, standardize: bool = False
              ) -> dict[str, torch.Tensor]:
    """Per-position mean (P, d) and precision of the normal images' features (the first
    `dims` of the net's DIMS channels).

    `cov="shared"`: one (d, d) precision, the within-position covariance pooled
    over positions; "position": one per position, (P, d, d). `batches`: (B, C,
    H, W) float tensors in [0, 1] at `input_size(grid)`; accumulated (float64
    sums), so memory stays that of the model whatever the count. `standardize`:
    features of each image standardized first (FeatureNet.forward).
    """
    if cov not in COVS or not 1 <= dims <= DIMS:
        msg = (f"The padim 'cov' and 'dims' options must be one of {list(COVS)} and 1..{DIMS}. "
               f"Got {cov!r} and {dims} instead.")
        raise ValueError(msg)
    p = grid[0] * grid[1]
    n = 0
    s1 = torch.zeros(p, dims, dtype=torch.float64)
    s2 = torch.zeros(*((p,) if cov == "position" else ()), dims, dims, dtype=torch.float64)
    for x in batches:
        f = _features(net, x, grid, dims, standardize).double()  # (B, P, d)
        n += len(x)
        s1 += f.sum(0)
        if cov == "position":
            fp = f.transpose(0, 1)  # (P, B, d)
            s2 += fp.transpose(1, 2) @ fp
        else:
            flat = f.reshape(-1, dims)
            s2 += flat.T @ flat
    if n < 2:
        msg = f"padim needs at least 2 training images. Got {n}."
        raise ValueError(msg)
    mean = s1 / n
    if cov == "position":
        c = (s2 - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)
    else:
        c = (s2 - n * mean.T @ mean) / (p * (n - 1))
    c += RIDGE * torch.eye(dims, dtype=torch.float64)
    return {"mean": mean.float(), "precision": torch.linalg.inv(c).float().contiguous()}


@torch.no_grad()
def padim_distance(net: FeatureNet, model: dict[str, torch.Tensor], images: torch.Tensor,
                   grid: tuple[int, int], standardize: bool = False) -> torch.Tensor:
    """Mahalanobis distance of each position's features, (N, gh, gw); the model's
    precision is shared (d, d) or per position (P, d, d); `standardize` as the model was
    fitted."""
    out = []
    dims = int(model["mean"].shape[1])
    prec = model["precision"].contiguous()  # (a strided one makes the matmul ~10x slower)
    for i in range(0, len(images), BATCH):
        x = images[i : i + BATCH]
        d = _features(net, x, grid, dims, standardize) - model["mean"]  # (B, P, d)
        if prec.ndim == 3:  # per position: (P, B, d) @ (P, d, d)
            dp = d.transpose(0, 1).contiguous()
            m = ((dp @ prec) * dp).sum(-1).T
        else:
            m = ((d @ prec) * d).sum(-1)  # (B, P)
        out.append(m.clamp_min_(0).sqrt_().reshape(-1, grid[0], grid[1]))
    return torch.cat(out)


def _features(net: FeatureNet, x: torch.Tensor, grid: tuple[int, int], dims: int,
              standardize: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, P, dims) features per grid position."""
    f = net(x, grid, dims, standardize)
    return f.permute(0, 2, 3, 1).reshape(len(x), grid[0] * grid[1], dims)
