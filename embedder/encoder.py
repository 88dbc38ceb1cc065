"""`Encoder`: a loaded model plus its preprocessing, used by index build, search and scoring.

It calls the model's public interface only (`embed`, `reconstruct`).

Preprocessing follows the model's recorded input geometry (embedder/models/inputs.py):
`image_size` rows x `image_width` columns and a `resize` mode. A model saved before
these fields existed is square with "squash" and is preprocessed exactly as before
(`images.prepare`, in the decoding worker: `probe_want`). A "pad" model gets native
pixels from the decoding worker and fits them here (`fit_pixels`): aspect-preserving
resize, centred, padded with the image's mean, so a 600x240 image is never squashed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from latentsight.embedder.images import decode_file, prepare, resize
from latentsight.embedder.models import load_checkpoint, resolve_device
from latentsight.embedder.models.inputs import input_hw
from torch import nn


def to_batch(pixels: Sequence[np.ndarray], image_size: int, channels: int) -> torch.Tensor:
    """Stack uint8 arrays (H, W) or (H, W, 3) into a float tensor (B, C, S, S) in [0, 1]."""
    arrs = [prepare(p, image_size, channels) for p in pixels]
    return torch.from_numpy(np.stack(arrs)).float().div_(255.0)


def fit_pixels(pixels: np.ndarray, height: int, width: int, channels: int,
               mode: str = "pad") -> np.ndarray:
    """One uint8 image (H, W[, 3]) -> (C, height, width) uint8.

    "squash": resized to height x width whatever its aspect (the pre-geometry behaviour).
    "pad": resized, aspect kept, to fit inside height x width, centred, the rest filled
    with the image's mean value (per channel).
    """
    if mode == "squash" or pixels.shape[0] * width == pixels.shape[1] * height:
        if height == width:
            return prepare(pixels, height, channels)
        return _to_chw(resize(pixels, (width, height)), channels)
    h, w = pixels.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    inner = _to_chw(resize(pixels, (nw, nh)), channels)  # (C, nh, nw)
    fill = inner.reshape(inner.shape[0], -1).mean(1).round().astype(np.uint8)  # (C,)
    out = np.empty((inner.shape[0], height, width), np.uint8)
    out[:] = fill[:, None, None]
    y, x = (height - nh) // 2, (width - nw) // 2
    out[:, y : y + nh, x : x + nw] = inner
    return out


def _to_chw(arr: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W[, 3]) -> (C, H, W) with `channels` channels (as images.prepare converts)."""
    if channels == 1 and arr.ndim == 3:
        arr = np.rint(arr @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    if channels == 3 and arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


class Encoder:
    """A model in eval mode on a device, with the preprocessing its config implies."""

    def __init__(
        self, model: nn.Module, *, device: str = "auto", meta: dict[str, Any] | None = None
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta or {}
        self.image_size: int = model.config.image_size  # input rows (the side when square)
        self.image_height, self.image_width = input_hw(model.config)
        self.resize: str = getattr(model.config, "resize", "squash")
        self.channels: int = model.config.channels
        self.mode = "L" if self.channels == 1 else "RGB"

    @property
    def legacy_input(self) -> bool:
        """Square and squashed: preprocessed in the decoding worker, as every older model."""
        return self.resize == "squash" and self.image_height == self.image_width

    @property
    def probe_want(self) -> tuple[int, ...]:
        """What to ask a decoding worker (embedder/probe.py) for: (side, channels) for a
        legacy model (preprocessed there); otherwise (0, channels, side): the decoded
        pixels at their own aspect, a JPEG reduced at decoding (DCT scaling) only as far
        as both sides stay >= the model's longer input side, which `prepare` then fits."""
        if self.legacy_input:
            return self.image_size, self.channels
        return 0, self.channels, max(self.image_height, self.image_width)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """One decoded uint8 image (H, W[, 3]) -> this model's input, uint8 (C, H', W')."""
        return fit_pixels(pixels, self.image_height, self.image_width, self.channels,
                          self.resize)

    def embed_probed(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Embed what decoding workers returned for `probe_want`; float32 (B, D)."""
        if not len(arrays):
            return np.zeros((0, self.embed_dim), np.float32)
        if self.legacy_input:
            return self.embed_uint8(np.stack(arrays))
        return self.embed_uint8(np.stack([self.prepare(a) for a in arrays]))

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, *, device: str = "auto", expected_sha256: str | None = None
    ) -> Encoder:
        model, meta = load_checkpoint(directory, expected_sha256=expected_sha256)
        return cls(model, device=device, meta=meta)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    def _fit_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of another spatial size (a caller that squashed it already) is resized."""
        if tuple(x.shape[2:]) != (self.image_height, self.image_width):
            x = F.interpolate(x, size=(self.image_height, self.image_width), mode="bilinear",
                              align_corners=False)
        return x

    @torch.no_grad()
    def embed_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Embed a float batch (B, C, H, W) in [0, 1]; returns float32 (B, D)."""
        x = self._fit_tensor(x.to(self.device, non_blocking=True))
        return self.model.embed(x).float().cpu().numpy()

    def embed_uint8(self, x: np.ndarray) -> np.ndarray:
        """Embed preprocessed uint8 arrays (B, C, S, S); returns float32 (B, D)."""
        return self.embed_tensor(torch.from_numpy(x).float().div_(255.0))

    def embed_pixels(self, pixels: Sequence[np.ndarray], batch_size: int = 128) -> np.ndarray:
        """Embed decoded uint8 images of any size; returns float32 (N, D)."""
        out = [
            self.embed_uint8(np.stack([self.prepare(p) for p in pixels[i : i + batch_size]]))
            for i in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def embed_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Decode and embed files; raises DecodeError on the first bad one."""
        return self.embed_pixels([decode_file(p, mode=self.mode).pixels for p in paths])

    @torch.no_grad()
    def reconstruct_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a float batch (B, C, H, W); returned at the batch's own size."""
        x = x.to(self.device)
        out = self.model.reconstruct(self._fit_tensor(x))
        if out.shape[2:] != x.shape[2:]:
            out = F.interpolate(out, size=tuple(x.shape[2:]), mode="bilinear",
                                align_corners=False)
        return out.float().cpu()
