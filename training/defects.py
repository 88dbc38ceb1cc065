"""Synthetic defects pasted into normal images, with their masks, for evaluating scans.

    img2, mask = paste_defect(img, "scratch", rng, area=0.03)

Kinds: "scratch" (a thin straight line, brighter or darker), "spot" (a soft
blob blended toward a flat tone), "patch" (a square of another texture, given as
`donor`). `area` is the fraction of the image the defect covers (its mask).
"""

from __future__ import annotations

import numpy as np

KINDS = ("scratch", "spot", "patch")


def _shift(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, soft: np.ndarray
           ) -> np.ndarray:
    """Blend the masked region toward a flat tone 60-110 levels off the image's mean."""
    base = img.astype(np.float64)
    mean = float(base.mean())
    sign = 1.0 if mean < 128 else -1.0
    if rng.random() < 0.3:
        sign = -sign
    tone = np.clip(mean + sign * rng.uniform(60, 110), 0, 255)
    alpha = np.clip(soft, 0, 1) * rng.uniform(0.7, 0.9)
    if base.ndim == 3:
        alpha = alpha[:, :, None]
    return np.clip(base * (1 - alpha) + tone * alpha, 0, 255).astype(np.uint8)


def paste_defect(
    img: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    *,
    area: float = 0.03,
    donor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective copy of `img`, bool mask (H, W) of the defect)."""
    if kind not in KINDS:
        msg = f"The 'kind' must be one of {KINDS}. Got {kind!r} instead."
        raise ValueError(msg)
    if not 0 < area < 0.5:
        msg = f"The 'area' must be in (0, 0.5). Got {area} instead."
        raise ValueError(msg)
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    target = area * h * w
    if kind == "scratch":
        width = max(1.5, min(h, w) / 60)
        length = min(target / width, 0.9 * np.hypot(h, w))
        width = target / length
        theta = rng.uniform(0, np.pi)
        dy, dx = np.sin(theta), np.cos(theta)
        half = length / 2
        cy = rng.uniform(min(h / 2, abs(dy) * half), max(h / 2, h - abs(dy) * half))
        cx = rng.uniform(min(w / 2, abs(dx) * half), max(w / 2, w - abs(dx) * half))
        along = (yy - cy) * dy + (xx - cx) * dx
        across = np.abs(-(yy - cy) * dx + (xx - cx) * dy)
        mask = (np.abs(along) <= half) & (across <= width / 2)
        soft = mask.astype(np.float64)
        return _shift(img, mask, rng, soft), mask
    side = np.sqrt(target)
    if kind == "spot":
        r = side / np.sqrt(np.pi)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask = d2 <= r * r
        soft = np.clip(1.2 - d2 / (r * r), 0, 1) * mask
        return _shift(img, mask, rng, soft), mask
    if donor is None:
        raise ValueError("A 'patch' defect needs a donor image of another texture.")
    s = int(round(side))
    y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    dy0 = int(rng.integers(0, donor.shape[0] - s + 1))
    dx0 = int(rng.integers(0, donor.shape[1] - s + 1))
    out = img.copy()
    out[y0 : y0 + s, x0 : x0 + s] = donor[dy0 : dy0 + s, dx0 : dx0 + s]
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + s, x0 : x0 + s] = True
    return out, mask


def peak_inside(amap: np.ndarray, mask: np.ndarray, margin: int = 0) -> bool:
    """True when the map's maximum falls inside the mask (grown by `margin` pixels)."""
    y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    if margin <= 0:
        return bool(mask[y, x])
    y0, y1 = max(0, y - margin), y + margin + 1
    x0, x1 = max(0, x - margin), x + margin + 1
    return bool(mask[y0:y1, x0:x1].any())
