"""A small ViT trained from scratch as a masked autoencoder (MAE, He et al. 2021).

Training: patchify, hide a random `mask_ratio` of the patches, run the
transformer encoder on the visible ones only, and let a light decoder predict
the hidden patches' pixels; the loss is the squared error on hidden patches
(optionally against per-patch normalized targets).

Search: the encoder sees the whole (unmasked) image; the embedding is the mean
of its patch tokens (or the CLS token). Anomaly scoring: `reconstruct` masks
the patches group by group so that every patch is predicted once from the
others, never copied from the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from latentsight.embedder.models.inputs import (
    attach_pixel_pca,
    check_input,
    combined_embedding,
    input_hw,
)
from torch import nn


@dataclass
class ViTConfig:
    image_size: int = 64  # input side in pixels; a multiple of patch_size
    channels: int = 1  # 1 = grayscale, 3 = RGB
    patch_size: int = 8  # side of a square patch; 64 / 8 = 64 tokens keeps CPU training quick
    dim: int = 128  # encoder width (token size); also the embedding size
    depth: int = 4  # encoder transformer blocks
    heads: int = 4  # attention heads; dim must be divisible by heads
    mlp_ratio: float = 2.0  # hidden width of each block's MLP, relative to dim
    decoder_dim: int = 64  # a light decoder: narrower than the encoder
    decoder_depth: int = 1  # one block is enough to fill in patches
    mask_ratio: float = 0.75  # fraction of patches hidden during training (MAE's default)
    norm_pix_loss: bool = False  # per-patch normalized targets (sharper textures, scale lost)
    pool: str = "mean"  # "mean" of patch tokens or "cls" token as the embedding
    image_width: int = 0  # input columns; 0 = image_size (square). Chosen from the data in train
    resize: str = "squash"  # how other sizes fit the input: squash | pad (see models/inputs.py)
    pixel_pca: int = 0  # > 0: embed() = [unit(this many pixel PCs), unit(learned)]
    pixel_pca_standardize: bool = False  # PCA of standardized pixels (own mean, std)

    def validate(self) -> None:
        for name, side in zip(("image_size", "image_width"), input_hw(self), strict=True):
            if side % self.patch_size or side < self.patch_size:
                msg = (
                    f"The '{name}' must be a multiple of patch_size = {self.patch_size}. "
                    f"Got {side} instead."
                )
                raise ValueError(msg)
        check_input(self)
        if self.channels not in (1, 3):
            msg = f"The 'channels' must be 1 or 3. Got {self.channels} instead."
            raise ValueError(msg)
        if self.dim % self.heads or self.decoder_dim % self.heads:
            msg = (
                f"The 'dim' ({self.dim}) and 'decoder_dim' ({self.decoder_dim}) must be "
                f"divisible by heads. Got heads = {self.heads} instead."
            )
            raise ValueError(msg)
        h, w = input_hw(self)
        n = (h // self.patch_size) * (w // self.patch_size)
        if not 0.0 <= self.mask_ratio < 1.0 or n - round(n * self.mask_ratio) < 1:
            msg = (
                f"The 'mask_ratio' must be in [0, 1) and leave one patch visible. "
                f"Got {self.mask_ratio} instead."
            )
            raise ValueError(msg)
        if self.pool not in ("mean", "cls"):
            msg = f"The 'pool' must be 'mean' or 'cls'. Got {self.pool!r} instead."
            raise ValueError(msg)


def sincos_2d(side: int, dim: int, cols: int | None = None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, shape (side*cols, dim) (cols = side default)."""
    assert dim % 4 == 0, "position embedding needs dim divisible by 4"
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(cols or side), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4 - 1 or 1))  # (dim/4,)
    y = ys.flatten()[:, None] * omega[None, :]  # (N, dim/4)
    x = xs.flatten()[:, None] * omega[None, :]  # (N, dim/4)
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, dim)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, *, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)  # (B, T, D)
        x = x + self.attn(h, h, h, need_weights=False)[0]  # (B, T, D)
        return x + self.mlp(self.ln2(x))  # (B, T, D)


class MaskedViT(nn.Module):
    """ViT encoder + light decoder trained by masked patch reconstruction."""

    kind = "vit"

    def __init__(self, *, config: ViTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        h, w = input_hw(c)
        self.grid, self.grid_w = h // c.patch_size, w // c.patch_size  # patch rows, columns
        self.num_patches = self.grid * self.grid_w
        self.patch_dim = c.channels * c.patch_size * c.patch_size
        self.n_masked = int(round(self.num_patches * c.mask_ratio))
        self.patch_embed = nn.Linear(self.patch_dim, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.register_buffer("pos", sincos_2d(self.grid, c.dim, self.grid_w)[None],
                             persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim=c.dim, heads=c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.dec_embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.register_buffer("dec_pos", sincos_2d(self.grid, c.decoder_dim, self.grid_w)[None],
                             persistent=False)
        self.dec_blocks = nn.ModuleList(
            Block(dim=c.decoder_dim, heads=c.heads, mlp_ratio=c.mlp_ratio)
            for _ in range(c.decoder_depth)
        )
        self.dec_norm = nn.LayerNorm(c.decoder_dim)
        self.dec_head = nn.Linear(c.decoder_dim, self.patch_dim)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        attach_pixel_pca(self)

    @property
    def embed_dim(self) -> int:
        return self.config.dim + self.config.pixel_pca

    # --- patches -------------------------------------------------------------------------

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C*p*p), patches in row-major order."""
        b, c, p = x.shape[0], self.config.channels, self.config.patch_size
        g, gw = self.grid, self.grid_w
        x = x.reshape(b, c, g, p, gw, p)  # (B, C, g, p, gw, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, g * gw, c * p * p)  # (B, N, C*p*p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, C*p*p) -> (B, C, H, W); the inverse of `patchify`."""
        b, c, p = patches.shape[0], self.config.channels, self.config.patch_size
        g, gw = self.grid, self.grid_w
        x = patches.reshape(b, g, gw, c, p, p)  # (B, g, gw, C, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, gw * p)  # (B, C, H, W)

    def random_mask(
        self, batch: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw which patches each image keeps: (keep_idx (B, N_keep), masked (B, N) bool).

        Exactly round(N * mask_ratio) patches per image are masked.
        """
        noise = torch.rand(batch, self.num_patches, generator=generator)  # (B, N)
        order = noise.argsort(dim=1)  # (B, N)
        return self._split(order)

    def _split(self, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_keep = self.num_patches - self.n_masked
        keep = order[:, :n_keep].sort(dim=1).values  # (B, N_keep)
        masked = torch.ones_like(order, dtype=torch.bool)  # (B, N)
        masked.scatter_(1, keep, False)
        return keep, masked

    # --- encoder / decoder -----------------------------------------------------------------

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode all patches (keep=None) or only `keep` (B, N_keep); returns (B, 1+T, dim)."""
        t = self.patch_embed(self.patchify(x)) + self.pos  # (B, N, D)
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[2]))  # (B, N_keep, D)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)  # (B, 1+T, D)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)  # (B, 1+T, D)

    def decode(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the visible tokens; returns (B, N, C*p*p)."""
        h = self.dec_embed(tokens[:, 1:])  # (B, N_keep, Dd)
        b, dd = h.shape[0], h.shape[2]
        full = self.mask_token.expand(b, self.num_patches, dd).clone()  # (B, N, Dd)
        full.scatter_(1, keep[..., None].expand(-1, -1, dd), h)  # (B, N, Dd)
        full = full + self.dec_pos  # (B, N, Dd)
        for blk in self.dec_blocks:
            full = blk(full)
        return self.dec_head(self.dec_norm(full))  # (B, N, C*p*p)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Patch targets (B, N, C*p*p): pixels, or per-patch normalized with norm_pix_loss."""
        t = self.patchify(x)  # (B, N, P)
        if self.config.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)  # (B, N, 1)
            t = (t - mean) / (var + 1e-6).sqrt()
        return t

    # --- the shared interface ------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The search embedding (B, embed_dim): `embed_learned`, beside the pixel PCA if any."""
        return combined_embedding(self, x, self.embed_learned(x))

    def embed_learned(self, x: torch.Tensor) -> torch.Tensor:
        """Encode the unmasked image; mean of patch tokens (or CLS), shape (B, dim)."""
        t = self.encode(x)  # (B, 1+N, D)
        return t[:, 0] if self.config.pool == "cls" else t[:, 1:].mean(dim=1)

    def loss(
        self, x: torch.Tensor, *, epoch: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error on the masked patches; returns (total, parts)."""
        del epoch  # no schedule inside the model
        # Evaluation draws the same masks every time, so validation losses compare.
        gen = None if self.training else torch.Generator().manual_seed(0)
        keep, masked = self.random_mask(x.shape[0], generator=gen)
        keep, masked = keep.to(x.device), masked.to(x.device)
        pred = self.decode(self.encode(x, keep), keep)  # (B, N, P)
        err = (pred - self.targets(x)).pow(2).mean(-1)  # (B, N)
        rec = (err * masked).sum() / masked.sum()
        return rec, {"rec": float(rec.detach())}

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Every patch predicted while it is masked; shape like x, values in [0, 1].

        The patches are split into ceil(N / n_masked) groups in a fixed order;
        pass g masks group g and keeps the rest, so no patch is copied through.
        With norm_pix_loss the predictions are mapped back with each input patch's
        own mean and std (as MAE does to show its outputs).
        """
        b, n, nm = x.shape[0], self.num_patches, max(1, self.n_masked)
        fixed = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(x.device)
        out = torch.zeros(b, n, self.patch_dim, device=x.device, dtype=x.dtype)  # (B, N, P)
        for g in range(math.ceil(n / nm)):
            hidden = fixed[torch.arange(g * nm, g * nm + nm, device=x.device) % n]  # (nm,)
            rest = fixed[~torch.isin(fixed, hidden)]  # (N - nm,)
            order = torch.cat([rest, hidden])[None].expand(b, -1)  # (B, N)
            keep, _ = self._split(order)
            pred = self.decode(self.encode(x, keep), keep)  # (B, N, P)
            out[:, hidden] = pred[:, hidden]
        if self.config.norm_pix_loss:
            t = self.patchify(x)  # (B, N, P)
            out = out * (t.var(-1, keepdim=True) + 1e-6).sqrt() + t.mean(-1, keepdim=True)
        return self.unpatchify(out).clamp(0.0, 1.0)  # (B, C, H, W)


__all__ = ["MaskedViT", "ViTConfig"]
