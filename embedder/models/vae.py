"""Convolutional variational autoencoder: image -> q(z|x) = N(mu, sigma^2) -> reconstruction.

The search embedding is the posterior mean `mu` (deterministic, no sampling).
Training minimizes reconstruction + beta * KL(q(z|x) || N(0, I)), with

- a KL warm-up: beta ramps linearly from 0 over the first `kl_warmup_epochs`
  epochs, so the decoder learns to use z before the prior pulls it in;
- optional free bits: each latent dimension's KL below `free_bits` nats costs
  nothing, which keeps dimensions from collapsing onto the prior.

The training loop tells the model how far it is with `loss(x, epoch=...)`;
`epoch=None` (evaluation) means fully warmed up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from latentsight.embedder.models.ae import check_conv_shape, conv_decoder, conv_encoder
from latentsight.embedder.models.inputs import (
    attach_pixel_pca,
    check_input,
    combined_embedding,
    input_hw,
)
from torch import nn


@dataclass
class VAEConfig:
    image_size: int = 64  # input side in pixels; a power of two >= 16
    channels: int = 1  # 1 = grayscale, 3 = RGB
    latent_dim: int = 64  # size of z; mu is the search embedding
    width: int = 16  # channels of the first conv stage, doubling; 16 = benchmarked CPU default
    depth: int = 4  # stride-2 stages; the bottleneck map is image_size / 2**depth
    beta: float = 1.0  # weight of the KL term (beta-VAE); 0 = a plain autoencoder loss
    kl_warmup_epochs: float = 5.0  # beta ramps 0 -> beta linearly over these epochs; 0 = none
    free_bits: float = 0.0  # nats per latent dim the KL may use for free (0 = off)
    image_width: int = 0  # input columns; 0 = image_size (square). Chosen from the data in train
    resize: str = "squash"  # how other sizes fit the input: squash | pad (see models/inputs.py)
    pixel_pca: int = 0  # > 0: embed() = [unit(this many pixel PCs), unit(mu)]
    pixel_pca_standardize: bool = False  # PCA of standardized pixels (own mean, std)

    def validate(self) -> None:
        h, w = input_hw(self)
        check_conv_shape(h, self.depth, self.channels)
        check_conv_shape(w, self.depth, self.channels)
        check_input(self)
        for name in ("beta", "kl_warmup_epochs", "free_bits"):
            if getattr(self, name) < 0:
                msg = f"The '{name}' must be >= 0. Got {getattr(self, name)} instead."
                raise ValueError(msg)


class VAE(nn.Module):
    """Conv encoder -> (mu, logvar) -> sampled z -> conv decoder; inputs/outputs in [0, 1]."""

    kind = "vae"

    def __init__(self, *, config: VAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        widths = [c.width * 2**i for i in range(c.depth)]  # e.g. 32, 64, 128, 256
        h, w = input_hw(c)
        self.side, self.side_w = h >> c.depth, w >> c.depth  # bottleneck rows, columns
        self.encoder = conv_encoder(c.channels, widths)
        flat = widths[-1] * self.side * self.side_w
        # mu and logvar read the flattened map plus its pooled mean/std, so the
        # posterior sees translation-invariant texture statistics directly.
        self.to_stats = nn.Linear(flat + 2 * widths[-1], 2 * c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, flat)
        self.decoder, self.head = conv_decoder(c.channels, widths)
        attach_pixel_pca(self)

    @property
    def embed_dim(self) -> int:
        return self.config.latent_dim + self.config.pixel_pca

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, logvar) of q(z|x), each (B, latent_dim)."""
        h = self.encoder(x)  # (B, C_last, side, side)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.flatten(2).std(dim=2)], dim=1)  # (B, 2*C_last)
        stats = self.to_stats(torch.cat([h.flatten(1), pooled], dim=1))  # (B, 2 * latent_dim)
        mu, logvar = stats.chunk(2, dim=1)  # (B, latent_dim) each
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(z.shape[0], -1, self.side, self.side_w)  # (B, C_last, s, sw)
        return torch.sigmoid(self.head(self.decoder(h)))  # (B, C, H, W)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(0.5 * logvar) * eps with eps ~ N(0, I)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # (B, latent_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Return the posterior mean mu (B, latent_dim), beside the pixel PCA if any."""
        return combined_embedding(self, x, self.embed_learned(x))

    def embed_learned(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean mu alone, shape (B, latent_dim)."""
        return self.posterior(x)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean (deterministic), shape like x."""
        return self.decode(self.posterior(x)[0])

    def beta_at(self, epoch: float | None) -> float:
        """The KL weight after `epoch` epochs of training (None = fully warmed up)."""
        c = self.config
        if epoch is None or c.kl_warmup_epochs <= 0:
            return c.beta
        return c.beta * min(1.0, epoch / c.kl_warmup_epochs)

    def loss(
        self, x: torch.Tensor, *, epoch: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """rec + beta(epoch) * KL; rec is the per-image squared error summed over pixels / pixels.

        Both terms are per image and scaled by the pixel count, so beta = 1 is the
        ELBO of a Gaussian decoder up to a constant and learning rates match the AE.
        Returns (total, parts) with parts rec, kl (nats per image), beta.
        """
        mu, logvar = self.posterior(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        rec = F.mse_loss(self.decode(z), x)
        kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(0)  # (latent_dim,)
        kl = kl_dims.sum()
        kl_term = kl_dims.clamp(min=self.config.free_bits).sum() if self.config.free_bits else kl
        beta = self.beta_at(epoch)
        total = rec + beta * kl_term / x[0].numel()
        parts = {"rec": float(rec.detach()), "kl": float(kl.detach()), "beta": beta}
        return total, parts
