"""Datasets that decode files in DataLoader worker processes.

A file that fails to decode yields no tensor; the collate function drops it
and reports its id, so a batch goes on past a bad file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from latentsight.embedder.encoder import fit_pixels
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.images import decode_file, default_workers, prepare
from torch.utils.data import DataLoader, Dataset


class FileImages(Dataset):
    """(id, path) pairs -> (id, uint8 tensor (C, H, W)) or (id, DecodeError).

    H x W = image_size x (image_width or image_size); `resize` "squash" (resized to it
    whatever the aspect, the behaviour of older models) or "pad" (aspect kept, padded:
    `encoder.fit_pixels`).
    """

    def __init__(
        self, ids: Sequence[int], paths: Sequence[str | Path], *, image_size: int, channels: int,
        image_width: int = 0, resize: str = "squash",
    ) -> None:
        if len(ids) != len(paths):
            raise ValueError(f"Got {len(ids)} ids for {len(paths)} paths.")
        self.ids, self.paths = list(ids), [str(p) for p in paths]
        self.image_size, self.channels = image_size, channels
        self.image_width, self.resize = image_width or image_size, resize
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | DecodeError]:
        try:
            px = decode_file(self.paths[i], mode=self.mode).pixels
        except DecodeError as e:
            return self.ids[i], e
        if self.resize == "squash" and self.image_width == self.image_size:
            arr = prepare(px, self.image_size, self.channels)
        else:
            arr = fit_pixels(px, self.image_size, self.image_width, self.channels, self.resize)
        return self.ids[i], torch.from_numpy(arr)


def _collate(items: list[tuple[int, torch.Tensor | DecodeError]]):
    good = [(i, t) for i, t in items if isinstance(t, torch.Tensor)]
    bad = [(i, t) for i, t in items if not isinstance(t, torch.Tensor)]
    ids = torch.tensor([i for i, _ in good], dtype=torch.int64)
    x = torch.stack([t for _, t in good]) if good else torch.zeros(0)
    return ids, x, bad


def iter_batches(
    dataset: FileImages, *, batch_size: int = 128, workers: int | None = None
) -> Iterator[tuple[np.ndarray, torch.Tensor, list[tuple[int, DecodeError]]]]:
    """Yield (ids, uint8 batch (B, C, S, S), failures) with decoding in worker processes."""
    if workers is None:
        workers = default_workers()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, persistent_workers=False,
        multiprocessing_context="spawn" if workers else None,
    )
    for ids, x, bad in loader:
        yield ids.numpy(), x, bad

