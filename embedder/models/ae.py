"""Convolutional autoencoder: image -> latent vector -> reconstruction.

The embedding used for search is the latent vector `z` concatenated with the
spatially pooled statistics of the encoder's last feature map. The pooled part
is translation invariant, which matters for textures and defects whose class
does not depend on where in the frame they sit; the latent keeps the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from latentsight.embedder.models.inputs import (
    attach_pixel_pca,
    check_input,
    combined_embedding,
    input_hw,
)
from torch import nn


@dataclass
class AEConfig:
    image_size: int = 64  # input side in pixels; a power of two >= 16
    channels: int = 1  # 1 = grayscale, 3 = RGB
    latent_dim: int = 128  # size of the bottleneck vector z
    width: int = 16  # channels of the first conv stage, doubling; 16 = benchmarked CPU default
    depth: int = 4  # stride-2 stages; the bottleneck map is image_size / 2**depth
    pooled_embedding: bool = True  # append pooled encoder features to z in embed()
    image_width: int = 0  # input columns; 0 = image_size (square). Chosen from the data in train
    resize: str = "squash"  # how other sizes fit the input: squash | pad (see models/inputs.py)
    pixel_pca: int = 0  # > 0: embed() = [unit(this many pixel PCs), unit(learned)]
    pixel_pca_standardize: bool = False  # PCA of standardized pixels (own mean, std)

    def validate(self) -> None:
        h, w = input_hw(self)
        check_conv_shape(h, self.depth, self.channels)
        check_conv_shape(w, self.depth, self.channels)
        check_input(self)


def check_conv_shape(image_size: int, depth: int, channels: int) -> None:
    """Validate the input shape of a conv encoder with `depth` stride-2 stages."""
    side = image_size >> depth
    if image_size < 16 or side < 1 or side << depth != image_size:
        msg = (
            f"The 'image_size' must be divisible by 2**depth = {2**depth} and >= 16. "
            f"Got {image_size} instead."
        )
        raise ValueError(msg)
    if channels not in (1, 3):
        msg = f"The 'channels' must be 1 or 3. Got {channels} instead."
        raise ValueError(msg)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


def conv_encoder(channels: int, widths: list[int]) -> nn.Sequential:
    """Stride-2 stages of `widths` channels (the map shrinks 2**len(widths) times)."""
    stages, cin = [], channels
    for w in widths:
        stages.append(_down(cin, w))
        cin = w
    return nn.Sequential(*stages)


def conv_decoder(channels: int, widths: list[int]) -> tuple[nn.Sequential, nn.Conv2d]:
    """The mirror of conv_encoder and a 3x3 head back to `channels`: (decoder, head)."""
    ups = [_up(w_in, w_out)
           for w_in, w_out in zip(widths[::-1], widths[::-1][1:] + [widths[0]], strict=True)]
    return nn.Sequential(*ups), nn.Conv2d(widths[0], channels, 3, padding=1)


class AutoEncoder(nn.Module):
    """Conv encoder -> linear bottleneck -> conv decoder; inputs and outputs in [0, 1]."""

    kind = "ae"

    def __init__(self, *, config: AEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        widths = [c.width * 2**i for i in range(c.depth)]  # e.g. 32, 64, 128, 256
        h, w = input_hw(c)
        self.side = h >> c.depth  # bottleneck rows
        self.side_w = w >> c.depth  # bottleneck columns (= side for square inputs)
        self.encoder = conv_encoder(c.channels, widths)
        flat = widths[-1] * self.side * self.side_w
        self.to_latent = nn.Linear(flat, c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, flat)
        self.decoder, self.head = conv_decoder(c.channels, widths)
        attach_pixel_pca(self)

    @property
    def embed_dim(self) -> int:
        extra = 2 * self.config.width * 2 ** (self.config.depth - 1)
        learned = self.config.latent_dim + (extra if self.config.pooled_embedding else 0)
        return learned + self.config.pixel_pca

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, C_last, side, side_w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.to_latent(h.flatten(1))  # (B, latent_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z)  # (B, C_last * side * side)
        h = h.view(z.shape[0], -1, self.side, self.side_w)  # (B, C_last, side, side_w)
        return torch.sigmoid(self.head(self.decoder(h)))  # (B, C, H, W)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Return the search embedding, shape (B, embed_dim) (with the pixel PCA, if any)."""
        return combined_embedding(self, x, self.embed_learned(x))

    def embed_learned(self, x: torch.Tensor) -> torch.Tensor:
        """The learned part of the embedding alone (what the auxiliary objective trains)."""
        h = self.features(x)  # (B, C_last, side, side_w)
        z = self.to_latent(h.flatten(1))  # (B, latent_dim)
        if not self.config.pooled_embedding:
            return z
        mean = h.mean(dim=(2, 3))  # (B, C_last)
        std = h.flatten(2).std(dim=2)  # (B, C_last)
        pooled = torch.cat([mean, std], dim=1)  # (B, 2 * C_last)
        return torch.cat([F.normalize(z, dim=1), F.normalize(pooled, dim=1)], dim=1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))  # (B, C, H, W)

    def loss(
        self, x: torch.Tensor, *, epoch: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared reconstruction error; returns (total, parts). `epoch` is unused here."""
        del epoch  # no schedule inside the model
        rec = F.mse_loss(self.reconstruct(x), x)
        return rec, {"rec": float(rec.detach())}
