"""Synthetic labeled images for tests: textures whose class a good encoder can tell apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("stripes_h", "stripes_v", "checker", "blobs")


def texture(label: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One uint8 (size, size) texture of the given class, randomized phase, scale and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(5, 9)
    phase = rng.uniform(0, 2 * np.pi)
    if label == "stripes_h":
        img = np.sin(2 * np.pi * yy / period + phase)
    elif label == "stripes_v":
        img = np.sin(2 * np.pi * xx / period + phase)
    elif label == "checker":
        img = np.sign(np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period))
    elif label == "blobs":
        img = np.zeros((size, size))
        for _ in range(rng.integers(3, 6)):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(2.5, 5)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) * 2
        img = img - 1
    else:
        msg = f"unknown label {label!r}"
        raise ValueError(msg)
    img = img + rng.normal(0, 0.15, img.shape)
    return np.clip((img + 1) * 127.5, 0, 255).astype(np.uint8)


def write_folder(root: Path, per_label: int = 12, size: int = 32, seed: int = 0) -> Path:
    """root/LABEL/NNN.png for every label; returns root."""
    rng = np.random.default_rng(seed)
    for label in LABELS:
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            Image.fromarray(texture(label, rng, size), mode="L").save(d / f"{i:03d}.png")
    return root


NORMAL_LABEL = "stripes_h"


def write_normal_folder(root: Path, n: int = 40, size: int = 32, seed: int = 0) -> Path:
    """root/NNN.png: `n` textures of one class (the 'normal' images of anomaly tests)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(texture(NORMAL_LABEL, rng, size), mode="L").save(root / f"{i:03d}.png")
    return root


def normal_textures(n: int, seed: int, size: int | tuple[int, int] = 32) -> list[np.ndarray]:
    """`n` normal textures as arrays; size may be (h, w) for non-square images."""
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    side = max(h, w)
    return [texture(NORMAL_LABEL, rng, side)[:h, :w].copy() for _ in range(n)]
