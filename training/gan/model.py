"""Class-conditional DCGAN for small data: a generator, a projection discriminator, their EMA.

Generator (DCGAN): [z, embed(label)] -> linear -> (8w, 4, 4) -> transposed-conv stages
(batch norm, ReLU) doubling the side up to the image size -> 3x3 conv -> tanh.
Discriminator: strided convs with spectral normalization and LeakyReLU(0.2) down to 4x4,
sum-pooled features h, output linear(h) + <embed(label), h> (the projection
discriminator of Miyato & Koyama 2018), so a sparse class borrows every filter of
the rich ones and only owns one embedding row.

Images are float tensors (B, C, S, S) in [-1, 1] inside the GAN; `to_unit` maps to [0, 1].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import spectral_norm

SIZES = (16, 32, 64)


@dataclass
class GANConfig:
    classes: list[str] = field(default_factory=list)  # label names; index = class id
    image_size: int = 32  # output side: 32 or 64 (16 for the digits demo)
    channels: int = 1  # 1 = grayscale, 3 = RGB
    z_dim: int = 64  # noise size; small data does not need more
    class_dim: int = 32  # size of the label embedding fed to the generator
    g_width: int = 32  # generator channels at full resolution; x2 per stage going down
    d_width: int = 32  # discriminator channels at full resolution; x2 per stage going down

    def validate(self) -> None:
        if self.image_size not in SIZES:
            msg = f"The 'image_size' must be one of {SIZES}. Got {self.image_size} instead."
            raise ValueError(msg)
        if self.channels not in (1, 3):
            msg = f"The 'channels' must be 1 or 3. Got {self.channels} instead."
            raise ValueError(msg)
        if len(self.classes) < 1 or len(set(self.classes)) != len(self.classes):
            msg = f"The 'classes' must be distinct label names (>= 1). Got {self.classes} instead."
            raise ValueError(msg)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def stages(self) -> int:
        return {16: 2, 32: 3, 64: 4}[self.image_size]  # stride-2 stages between 4x4 and S


class Generator(nn.Module):
    """(z, label) -> image in [-1, 1]."""

    def __init__(self, *, config: GANConfig) -> None:
        super().__init__()
        config.validate()
        c = config
        self.config = c
        widths = [c.g_width * 2**i for i in range(c.stages, -1, -1)]  # e.g. 256,128,64,32
        self.embed = nn.Embedding(c.n_classes, c.class_dim)
        self.fc = nn.Sequential(
            nn.Linear(c.z_dim + c.class_dim, widths[0] * 16, bias=False),
            nn.BatchNorm1d(widths[0] * 16),
            nn.ReLU(inplace=True),
        )
        ups = []
        for w_in, w_out in zip(widths, widths[1:], strict=False):
            ups += [
                nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(w_out),
                nn.ReLU(inplace=True),
            ]
        self.ups = nn.Sequential(*ups)
        self.head = nn.Conv2d(widths[-1], c.channels, 3, padding=1)
        self.width0 = widths[0]

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(y)], dim=1)  # (B, z_dim + class_dim)
        h = self.fc(h).view(len(z), self.width0, 4, 4)  # (B, 8w, 4, 4)
        h = self.ups(h)  # (B, w, S, S)
        return torch.tanh(self.head(h))  # (B, C, S, S)


class Discriminator(nn.Module):
    """(image in [-1, 1], label) -> realness logit (B,), projection-conditioned."""

    def __init__(self, *, config: GANConfig) -> None:
        super().__init__()
        config.validate()
        c = config
        self.config = c
        widths = [c.d_width * 2**i for i in range(c.stages + 1)]  # e.g. 32,64,128,256
        layers = [spectral_norm(nn.Conv2d(c.channels, widths[0], 3, padding=1)),
                  nn.LeakyReLU(0.2, inplace=True)]
        for w_in, w_out in zip(widths, widths[1:], strict=False):
            layers += [spectral_norm(nn.Conv2d(w_in, w_out, 4, stride=2, padding=1)),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(c.n_classes, widths[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x).sum(dim=(2, 3))  # (B, 8w) sum-pooled over the 4x4 map
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1)  # (B,)


class ConditionalGAN(nn.Module):
    """Generator, its exponential moving average and the discriminator, saved as one file.

    `ema` is the generator used for sampling: averaging weights over steps removes
    much of the step-to-step jitter a small-data GAN shows.
    """

    kind = "cgan"

    def __init__(self, *, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config=config)
        self.discriminator = Discriminator(config=config)
        self.ema = copy.deepcopy(self.generator)
        self.ema.requires_grad_(False)

    @torch.no_grad()
    def update_ema(self, beta: float) -> None:
        """ema <- beta * ema + (1 - beta) * generator; buffers (BN statistics) are copied."""
        for pe, pg in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            pe.lerp_(pg.detach(), 1.0 - beta)
        for be, bg in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            be.copy_(bg)

    def class_ids(self, labels: list[str]) -> list[int]:
        known = self.config.classes
        missing = [lab for lab in labels if lab not in known]
        if missing:
            msg = f"Label(s) {missing} unknown to this GAN. It was trained on: {known}."
            raise ValueError(msg)
        return [known.index(lab) for lab in labels]

    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] for class ids `y` (B,), from seeded noise."""
        g = self.ema if use_ema else self.generator
        was_training = g.training
        g.eval()
        dev = next(g.parameters()).device
        out = []
        for i in range(0, len(y), batch_size):
            yb = y[i : i + batch_size].to(dev)
            z = torch.randn(len(yb), self.config.z_dim, generator=generator).to(dev)
            out.append(to_unit(g(z, yb)).cpu())
        g.train(was_training)
        if not out:
            s, c = self.config.image_size, self.config.channels
            return torch.zeros(0, c, s, s)
        return torch.cat(out)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1.0).mul_(0.5).clamp_(0.0, 1.0)


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0
