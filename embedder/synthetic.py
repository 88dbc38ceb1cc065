"""Synthetic-anomaly self-supervision: a small segmentation net trained from scratch on normals.

    net = train_segmenter(grid_images, steps=600, seed=0)   # (N, C, h, w) float in [0, 1]
    p = segment(net, grid_images)                            # (N, 1, h, w) anomaly probability

DRAEM's discriminative half (Zavrtanik et al., ICCV 2021), without pretrained
weights and without an external texture set: each training batch of normal
images gets anomalies inside masks cut from smooth random (value) noise at a
random scale, filled, blended with a random factor, with one of

- the content of another training image of the batch, shifted and mirrored
  (a foreign patch, CutPaste / NSA style),
- procedural noise (smooth noise plus grain),
- the image itself made darker or brighter there;

30% of the images stay normal. A small fully convolutional encoder-decoder
learns to segment the mask (focal loss). Its per-pixel probability is the
`seg` part of the detector (embedder/detector.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def smooth_noise(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, h, w) smooth value noise in [0, 1], 2-16 random cells across, per sample."""
    out = []
    for _ in range(n):
        c = 2 ** int(torch.randint(1, 5, (1,), generator=gen))
        r = torch.rand(1, 1, c + 1, c + 1, generator=gen)
        out.append(F.interpolate(r, size=(h, w), mode="bicubic", align_corners=True))
    m = torch.cat(out)
    lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
    return (m - lo) / (hi - lo + 1e-6)


def synthesize(x: torch.Tensor, gen: torch.Generator, *, keep_normal: float = 0.3
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal images x (B, C, h, w) in [0, 1] -> (images with anomalies, masks (B, 1, h, w));
    a `keep_normal` fraction of them (at random) keeps an empty mask."""
    b, c, h, w = x.shape

    def per_image(shape: tuple[int, ...] = ()) -> torch.Tensor:
        return torch.rand(b, *(shape or (1, 1, 1)), generator=gen)

    mask = (smooth_noise(b, h, w, gen) > 0.55 + 0.35 * per_image()).float()
    kind = torch.randint(0, 3, (b,), generator=gen)[:, None, None, None]
    src = x[torch.randperm(b, generator=gen)]
    src = torch.roll(src, shifts=(int(torch.randint(0, h, (1,), generator=gen)),
                                  int(torch.randint(0, w, (1,), generator=gen))), dims=(2, 3))
    src = torch.where(per_image() < 0.5, src.flip(3), src)
    tex = smooth_noise(b, h, w, gen) * 0.6 + 0.2 + 0.1 * torch.randn(b, 1, h, w, generator=gen)
    shift = x + (per_image() - 0.5) * 0.6
    fill = torch.where(kind == 0, src, torch.where(kind == 1, tex.expand(b, c, h, w), shift))
    beta = per_image() * 0.6
    mask = mask * (per_image() >= keep_normal).float()
    out = x * (1 - mask) + mask * (beta * x + (1 - beta) * fill.clamp(0, 1))
    return out, mask


def _block(i: int, o: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, padding=dilation, dilation=dilation),
                         nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class Segmenter(nn.Module):
    """A small U-Net-like net: (B, C, h, w) -> (B, 1, h, w) anomaly logits."""

    def __init__(self, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.e1 = nn.Sequential(_block(channels, w), _block(w, w))
        self.e2 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))
        self.e3 = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, dilation=2),
                                _block(4 * w, 4 * w, dilation=4))
        self.d2 = _block(6 * w, 2 * w)
        self.d1 = nn.Sequential(_block(3 * w, w), nn.Conv2d(w, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        u = F.interpolate(c, size=b.shape[-2:], mode="bilinear", align_corners=False)
        u = self.d2(torch.cat([u, b], 1))
        u = F.interpolate(u, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return self.d1(torch.cat([u, a], 1))


def train_segmenter(x: torch.Tensor, *, steps: int = 600, batch: int = 16, seed: int = 0,
                    width: int = 16, lr: float = 2e-3) -> Segmenter:
    """Train a Segmenter on synthetic anomalies of the normal images x (N, C, h, w)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Segmenter(x.shape[1], width)
    opt = torch.optim.Adam(net.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(steps, 1))
    net.train()
    for _ in range(steps):
        xb = x[torch.randint(0, len(x), (batch,), generator=gen)]
        xb = torch.where(torch.rand(batch, 1, 1, 1, generator=gen) < 0.5, xb.flip(3), xb)
        xa, m = synthesize(xb, gen)
        logit = net(xa)
        p = torch.sigmoid(logit)
        bce = F.binary_cross_entropy_with_logits(logit, m, reduction="none")
        pt = torch.where(m > 0.5, p, 1 - p)
        loss = ((1 - pt) ** 2 * bce).mean() * 10  # focal loss, gamma 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def segment(net: Segmenter, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """(N, C, h, w) -> (N, 1, h, w) anomaly probabilities."""
    net.eval()
    return torch.cat([torch.sigmoid(net(x[i : i + batch])) for i in range(0, len(x), batch)])
