"""Gated synthesis: generate images of one class, drop near-copies and implausible ones, ingest.

Two gates stand between the generator and the catalog:

- memorization: a sample whose embedding (the active encoder's) lies closer to a
  real image of its label than `min_distance` (in units of the real embeddings'
  spread, see MemorizationGate) is a near-copy and is rejected. The default threshold
  is half the median nearest-neighbour distance among the real images themselves,
  so a sample must be at least half as far from
  every training image as real images typically are from each other;
- plausibility: a pluggable callable (images -> True where implausible), used when
  an anomaly scorer is available, skipped with a notice otherwise.

Accepted samples are written as PNGs under HOME/synthetic/GAN/LABEL/ and cataloged
with source "synthetic", synthetic=True, the GAN's model id and the label; the
active model's index (when it has one) is brought in line.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from latentsight.embedder.data import FileImages, iter_batches
from latentsight.embedder.encoder import Encoder, prepare
from latentsight.embedder.errors import LatentsightError
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.manager import IndexMissingError, load_encoder, open_index, sync_index
from latentsight.training.gan.metrics import match_input
from latentsight.training.gan.model import ConditionalGAN
from PIL import Image

# images (B, C, S, S) float in [0, 1] -> bool (B,), True where the sample is implausible
PlausibilityGate = Callable[[torch.Tensor], np.ndarray]


class MemorizationGate:
    """Rejects samples whose embedding is within `min_distance` of a reference embedding.

    Distances are Euclidean after centring on the reference mean and dividing by the
    reference's RMS spread, so one threshold means the same for any encoder (raw
    cosine distances of an autoencoder's embeddings can all sit near 0).
    """

    EXACT = 1e-4  # at or below this a sample is a copy whatever the threshold

    def __init__(
        self, reference: np.ndarray, *, min_distance: float | None = None, factor: float = 0.5
    ) -> None:
        ref = np.asarray(reference, dtype=np.float64)  # (n, d)
        self.mean = ref.mean(0) if len(ref) else np.zeros(ref.shape[1])
        centred = ref - self.mean
        self.scale = float(np.sqrt((centred**2).sum(1).mean())) if len(ref) > 1 else 1.0
        self.scale = self.scale if self.scale > 0 else 1.0
        self.reference = centred / self.scale  # (n, d) in units of the reference spread
        if min_distance is None:
            min_distance = factor * self.typical_nn_distance()
        self.min_distance = float(min_distance)

    def typical_nn_distance(self) -> float:
        """Median distance from each reference image to its nearest other one."""
        if len(self.reference) < 2:
            return 0.0
        d = _pdist(self.reference, self.reference)  # (n, n)
        np.fill_diagonal(d, np.inf)
        return float(np.median(d.min(1)))

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """Distance (n,) from each vector to its nearest reference embedding."""
        if len(self.reference) == 0:
            return np.full(len(vectors), np.inf)
        v = (np.asarray(vectors, dtype=np.float64) - self.mean) / self.scale
        return _pdist(v, self.reference).min(1)

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """True where a sample is a near-copy (distance <= threshold; an exact copy always)."""
        d = self.distances(vectors)
        return (d <= self.min_distance) | (d <= self.EXACT)


def _pdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.clip(sq, 0, None))


def find_plausibility_gate(home: Home) -> tuple[PlausibilityGate | None, str]:
    """The newest calibrated anomaly scorer of the home as a gate, or None and a notice why not.

    A scanning model (`latentsight train --normal-label L`) stores its fitted
    scorer; a generated sample it flags (`predict == 1`, PyOD's sign) is rejected.
    """
    from latentsight.index.manager import load_scorer

    scanners = [m for m in home.catalog.models()
                if m.role == "encoder" and (m.metrics or {}).get("scoring")]
    if not scanners:
        return None, ("no anomaly scorer trained (latentsight train --normal-label L); "
                      "plausibility gate skipped")
    model = scanners[-1]
    try:
        _encoder, scorer = load_scorer(home, model, "cpu")
    except LatentsightError as e:
        return None, f"anomaly scorer of {model.name!r} unusable ({e}); plausibility gate skipped"

    def gate(images: torch.Tensor) -> np.ndarray:
        px = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (N, C, S, S)
        arrays = [p[0] if p.shape[0] == 1 else p.transpose(1, 2, 0) for p in px]
        return np.asarray(scorer.predict(arrays)).astype(bool).reshape(-1)

    return gate, f"plausibility gate: {type(scorer).__name__} of model {model.name!r}"


@dataclass
class SynthReport:
    gan: str
    label: str
    requested: int
    generated: int = 0
    accepted: int = 0
    rejected_memorized: int = 0
    rejected_implausible: int = 0
    duplicates: int = 0
    min_distance: float = 0.0
    plausibility: str = ""
    ids: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    indexed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def generate_gated(
    model: ConditionalGAN,
    label: str,
    n: int,
    *,
    embed: Callable[[torch.Tensor], np.ndarray],
    memorization: MemorizationGate,
    plausibility: PlausibilityGate | None = None,
    seed: int = 0,
    max_rounds: int = 5,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Up to n gated samples (k, C, S, S) in [0, 1] of `label`, and the rejection counts."""
    (cls,) = model.class_ids([label])
    gen = torch.Generator().manual_seed(seed)
    kept: list[torch.Tensor] = []
    counts = {"generated": 0, "rejected_memorized": 0, "rejected_implausible": 0}
    for _ in range(max_rounds):
        need = n - sum(len(k) for k in kept)
        if need <= 0:
            break
        x = model.sample(torch.full((need * 2,), cls), generator=gen)  # (2*need, C, S, S)
        counts["generated"] += len(x)
        bad_mem = memorization(embed(x))
        counts["rejected_memorized"] += int(bad_mem.sum())
        x = x[torch.from_numpy(~bad_mem)]
        if plausibility is not None and len(x):
            bad = np.asarray(plausibility(x), dtype=bool)
            counts["rejected_implausible"] += int(bad.sum())
            x = x[torch.from_numpy(~bad)]
        kept.append(x[:need])
    out = torch.cat(kept) if kept else model.sample(torch.zeros(0, dtype=torch.int64))
    return out, counts


def reference_embeddings(home: Home, encoder: Encoder, label: str) -> np.ndarray:
    """Embeddings of the real catalog images of `label` (the memorization reference)."""
    rows = home.catalog.images(labels=[label], synthetic=False)
    ds = FileImages([r.id for r in rows], [r.path for r in rows], image_size=encoder.image_size,
                    channels=encoder.channels)
    workers = 0 if len(ds) < 512 else None  # spawning workers costs more than small reads
    out = [encoder.embed_tensor(x.float().div_(255.0))
           for ids, x, _bad in iter_batches(ds, batch_size=256, workers=workers) if len(ids)]
    return np.concatenate(out) if out else np.zeros((0, encoder.embed_dim), np.float32)


def synthesize(
    home: Home,
    model: ConditionalGAN,
    gan_row: Any,
    label: str,
    n: int,
    *,
    min_distance: float | None = None,
    plausibility: PlausibilityGate | None | str = "auto",
    seed: int = 0,
    device: str = "auto",
    notify: Callable[[str], None] = print,
) -> SynthReport:
    """Generate n gated images of `label` into the home's catalog (see the module docstring).

    `plausibility="auto"` looks for the home's anomaly scorer; None skips the gate.
    """
    if n < 1:
        msg = f"The 'n' option must be >= 1. Got {n} instead."
        raise ValueError(msg)
    enc_row = home.catalog.model()
    encoder = load_encoder(home, enc_row, device)
    ref = reference_embeddings(home, encoder, label)
    if len(ref) == 0:
        msg = f"No real catalog images of label {label!r} to check the samples against."
        raise CatalogError(msg)
    gate = MemorizationGate(ref, min_distance=min_distance)
    if plausibility == "auto":
        plausibility, notice = find_plausibility_gate(home)
        notify(notice)
    elif plausibility is None:
        notify("plausibility gate off")
    report = SynthReport(gan=gan_row.name, label=label, requested=n,
                         min_distance=round(gate.min_distance, 6),
                         plausibility="on" if plausibility is not None else "skipped")

    def embed(x: torch.Tensor) -> np.ndarray:
        return encoder.embed_tensor(match_input(x, encoder.image_size, encoder.channels))

    images, counts = generate_gated(model, label, n, embed=embed, memorization=gate,
                                    plausibility=plausibility, seed=seed)  # type: ignore[arg-type]
    for k, v in counts.items():
        setattr(report, k, v)
    _ingest_synthetic(home, images, label=label, gan_row=gan_row, report=report, encoder=encoder,
                      enc_row=enc_row)
    return report


def _ingest_synthetic(home: Home, images: torch.Tensor, *, label: str, gan_row: Any,
                      report: SynthReport, encoder: Encoder, enc_row: Any) -> None:
    folder = home.root / "synthetic" / gan_row.name / _safe(label)
    folder.mkdir(parents=True, exist_ok=True)
    rows, arrays = [], []
    for img in images:
        px = (img.mul(255.0).round().clamp(0, 255).to(torch.uint8)).numpy()  # (C, S, S)
        pil = Image.fromarray(px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0))
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        path = folder / f"{sha[:16]}.png"
        path.write_bytes(data)
        rows.append({"sha256": sha, "path": str(path), "byte_size": len(data),
                     "width": pil.width, "height": pil.height, "mode": pil.mode,
                     "format": "PNG", "label": label, "source": "synthetic", "synthetic": True,
                     "generator_id": gan_row.id})
        arrays.append(px)
    known = home.catalog.known_sha256(r["sha256"] for r in rows)
    fresh = [(r, a) for r, a in zip(rows, arrays, strict=True) if r["sha256"] not in known]
    report.duplicates = len(rows) - len(fresh)
    ids = home.catalog.add_images([r for r, _ in fresh])
    report.ids, report.paths, report.accepted = ids, [r["path"] for r, _ in fresh], len(ids)
    try:
        store, _ = open_index(home, enc_row, repair=True)
    except IndexMissingError:
        return
    ready = {}
    for i, (_r, a) in zip(ids, fresh, strict=True):
        hwc = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
        # what a decoding worker would hand over for this model (embedder.Encoder.probe_want)
        ready[i] = (prepare(hwc, encoder.image_size, encoder.channels)
                    if encoder.legacy_input else hwc)
    report.indexed = sync_index(home, enc_row, encoder=encoder, store=store, ready=ready,
                                progress=False)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "_"
