"""GAN evaluation: FID and k-NN precision/recall on features of a named extractor.

Inception weights cannot be downloaded here, so the default feature extractor is
latentsight's own trained encoder (its search embedding). A user who has an
Inception-v3 checkpoint on disk (safetensors) can pass it; the extractor's name is
part of every result, because FIDs on different features are not comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.errors import ModelError


@dataclass
class FeatureExtractor:
    """Maps float images (B, C, S, S) in [0, 1] to features (B, D)."""

    name: str
    fn: Callable[[torch.Tensor], np.ndarray]

    def __call__(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        out = [self.fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def encoder_features(encoder: Encoder, name: str) -> FeatureExtractor:
    """The search embedding of a latentsight encoder, resized to its input size."""

    def fn(x: torch.Tensor) -> np.ndarray:
        x = match_input(x, encoder.image_size, encoder.channels)
        return encoder.embed_tensor(x)

    return FeatureExtractor(name=f"latentsight encoder {name!r} (embed_dim {encoder.embed_dim})",
                            fn=fn)


def inception_features(checkpoint: str | Path, device: str = "cpu") -> FeatureExtractor:
    """torchvision's inception_v3 with weights from a local safetensors file; 2048-d pool features.

    Raises:
        ModelError: the file is missing or its tensors do not fit inception_v3.
    """
    from safetensors.torch import load_file
    from torchvision.models import inception_v3

    path = Path(checkpoint)
    if not path.is_file():
        raise ModelError(f"{path}: no such Inception checkpoint (a .safetensors file)")
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        state = load_file(str(path))
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on bad files
        raise ModelError(f"{path}: cannot load Inception weights: {e}") from e
    missing = [k for k in missing if not k.startswith("AuxLogits.")]
    if missing or unexpected:
        msg = (f"{path}: not inception_v3 weights: {len(missing)} missing, {len(unexpected)} "
               f"unexpected tensors (e.g. {(missing or unexpected)[0]})")
        raise ModelError(msg)
    net.fc = torch.nn.Identity()
    net.aux_logits, net.AuxLogits = False, None
    net = net.to(device).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.no_grad()
    def fn(x: torch.Tensor) -> np.ndarray:
        x = match_input(x, 299, 3)  # (B, 3, 299, 299)
        return net(((x - mean) / std).to(device)).float().cpu().numpy()  # (B, 2048)

    return FeatureExtractor(name=f"inception_v3 ({path.name}, pool 2048)", fn=fn)


def match_input(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Float images (B, C, S, S) -> (B, channels, size, size): luma/repeat, then resize."""
    if x.shape[1] != channels:
        if channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            x = x.repeat(1, 3, 1, 1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    return x


# ---- the metrics ----------------------------------------------------------------------------


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d).

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), computed
    with symmetric eigendecompositions (stable for the rank-deficient covariances
    of small classes). 0 for identical sets.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        msg = f"FID needs at least 2 samples per set. Got {len(a)} and {len(b)} instead."
        raise ValueError(msg)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (d, d)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^1/2
    m = root_a @ s_b @ root_a
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross
    return float(max(value, 0.0))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """k-NN manifold precision and recall (Kynkaanniemi et al. 2019).

    The real manifold is the union of balls around each real feature with the
    radius of its k-th nearest real neighbour; precision is the fraction of fakes
    inside it. Recall swaps the roles. Both in [0, 1]; higher is better.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    k_r, k_f = min(k, len(real) - 1), min(k, len(fake) - 1)
    if k_r < 1 or k_f < 1:
        msg = f"Precision/recall need at least 2 samples per set. Got {len(real)}, {len(fake)}."
        raise ValueError(msg)
    return _coverage(real, fake, k_r), _coverage(fake, real, k_f)


def _coverage(manifold: np.ndarray, probes: np.ndarray, k: int) -> float:
    """Fraction of `probes` within the k-NN radius of some point of `manifold`."""
    d_mm = _pdist(manifold, manifold)  # (n, n)
    radii = np.sort(d_mm, axis=1)[:, k]  # column 0 is the point itself
    d_pm = _pdist(probes, manifold)  # (m, n)
    return float((d_pm <= radii[None, :]).any(axis=1).mean())


def _pdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.clip(sq, 0, None))


def compare_sets(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """FID, precision and recall of a generated feature set against a real one."""
    p, r = precision_recall(real, fake, k=k)
    return {"fid": round(fid(real, fake), 4), "precision": round(p, 4), "recall": round(r, 4),
            "n_real": len(real), "n_fake": len(fake)}
