"""The closed sets a few options take, as Enums typer checks when the command line is parsed.

Spelled out here so `--help` and a bad value cost no torch or faiss import;
tests/latentsight/test_cli_options.py checks each against the library's
registry, so a new scorer, loss or backend cannot be missed. Commands pass
`.value` (a plain string) on to the library.
"""

from __future__ import annotations

from enum import Enum


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Backend = _choices("Backend", ("faiss", "milvus"))  # index.backends.BACKENDS
Metric = _choices("Metric", ("cosine", "ip", "l2"))  # index.store.METRICS
GanLoss = _choices("GanLoss", ("ns", "hinge", "wgan-gp"))  # training.gan.train.LOSSES
ModelKind = _choices("ModelKind", ("ae", "vae", "vit"))  # embedder.models.REGISTRY
Aux = _choices("Aux", ("none", "infonce"))  # training.train.AUX_OBJECTIVES
Scorer = _choices("Scorer", ("combined", "detector", "knn", "local-mse", "local-ssim", "mse",
                             "ssim", "texture"))  # embedder.scoring.SCORERS


def value(choice: Enum | str | None) -> str | None:
    """The plain string of a parsed choice (None stays None)."""
    return choice.value if isinstance(choice, Enum) else choice
