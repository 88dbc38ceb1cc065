"""`Encoder`: a loaded model plus its preprocessing, used by index build, search and scoring.

It calls the model's public interface only (`embed`, `reconstruct`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from latentsight.embedder.images import decode_file, prepare
from latentsight.embedder.models import load_checkpoint, resolve_device
from torch import nn


def to_batch(pixels: Sequence[np.ndarray], image_size: int, channels: int) -> torch.Tensor:
    """Stack uint8 arrays (H, W) or (H, W, 3) into a float tensor (B, C, S, S) in [0, 1]."""
    arrs = [prepare(p, image_size, channels) for p in pixels]
    return torch.from_numpy(np.stack(arrs)).float().div_(255.0)


class Encoder:
    """A model in eval mode on a device, with the preprocessing its config implies."""

    def __init__(
        self, model: nn.Module, *, device: str = "auto", meta: dict[str, Any] | None = None
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta or {}
        self.image_size: int = model.config.image_size
        self.channels: int = model.config.channels
        self.mode = "L" if self.channels == 1 else "RGB"

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, *, device: str = "auto", expected_sha256: str | None = None
    ) -> Encoder:
        model, meta = load_checkpoint(directory, expected_sha256=expected_sha256)
        return cls(model, device=device, meta=meta)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @torch.no_grad()
    def embed_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Embed a float batch (B, C, S, S) in [0, 1]; returns float32 (B, D)."""
        return self.model.embed(x.to(self.device, non_blocking=True)).float().cpu().numpy()

    def embed_uint8(self, x: np.ndarray) -> np.ndarray:
        """Embed preprocessed uint8 arrays (B, C, S, S); returns float32 (B, D)."""
        return self.embed_tensor(torch.from_numpy(x).float().div_(255.0))

    def embed_pixels(self, pixels: Sequence[np.ndarray], batch_size: int = 128) -> np.ndarray:
        """Embed decoded uint8 images of any size; returns float32 (N, D)."""
        out = [
            self.embed_tensor(to_batch(pixels[i : i + batch_size], self.image_size, self.channels))
            for i in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def embed_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Decode and embed files; raises DecodeError on the first bad one."""
        return self.embed_pixels([decode_file(p, mode=self.mode).pixels for p in paths])

    @torch.no_grad()
    def reconstruct_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.reconstruct(x.to(self.device)).float().cpu()
