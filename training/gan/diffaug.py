"""Differentiable augmentation (DiffAugment, Zhao et al. 2020): translation, cutout, brightness.

The same random transforms are applied to real and generated images before the
discriminator sees them, in both the D and the G step, and gradients flow through
them, so D cannot simply memorize 20 real images and the generator is not taught
to produce augmented-looking images. Inputs are (B, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("translation", "cutout", "brightness")


def diff_augment(x: torch.Tensor, policy: tuple[str, ...] | list[str] = POLICIES) -> torch.Tensor:
    """Apply each named transform with fresh per-sample randomness (torch's global RNG)."""
    for name in policy:
        if name == "brightness":
            x = brightness(x)
        elif name == "translation":
            x = translation(x)
        elif name == "cutout":
            x = cutout(x)
        else:
            msg = f"Unknown DiffAugment policy {name!r}. Allowed: {POLICIES}."
            raise ValueError(msg)
    return x


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Add a per-sample offset in [-0.5, 0.5) (on the [-1, 1] scale: a quarter of the range)."""
    shift = torch.rand(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5  # (B, 1, 1, 1)
    return x + shift


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each sample by up to `ratio` of its side, zero-padding (DiffAugment's default)."""
    b, _c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)  # (B, 1, 1)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                            indexing="ij")
    gy = torch.clamp(gy[None] + ty + 1, 0, h + 1)  # (B, H, W) rows in the padded image
    gx = torch.clamp(gx[None] + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # (B, C, H+2, W+2)
    bi = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[bi, gy, gx].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of `ratio` x side at a random place per sample."""
    b, _c, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gy, gx = torch.meshgrid(torch.arange(ch, device=x.device), torch.arange(cw, device=x.device),
                            indexing="ij")
    gy = torch.clamp(gy[None] + oy - ch // 2, 0, h - 1)  # (B, ch, cw)
    gx = torch.clamp(gx[None] + ox - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, device=x.device, dtype=x.dtype)
    bi = torch.arange(b, device=x.device)[:, None, None]
    mask[bi, gy, gx] = 0
    return x * mask[:, None]  # (B, C, H, W)
