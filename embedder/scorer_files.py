"""A fitted anomaly scorer on disk, beside the encoder checkpoint it scores with.

Its JSON state goes under "scoring" in the checkpoint's config.json (and, by
the caller, into the catalog's model metrics); its arrays (a kNN memory bank,
a texture bank) go to `scoring.safetensors`, whose sha256 is kept in the state
and checked on load. Never pickle. The catalog-aware wrappers are
`latentsight.index.manager.save_scorer` / `load_scorer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from latentsight.embedder.encoder import Encoder
from latentsight.embedder.errors import ModelError
from latentsight.embedder.fsutil import atomic_write, atomic_write_bytes
from latentsight.embedder.models import CONFIG_FILE, sha256_file
from latentsight.embedder.scoring import TileScorer, scorer_from_state
from safetensors.numpy import load_file, save_file

SCORER_FILE = "scoring.safetensors"


def save_scorer_files(directory: str | Path, scorer: TileScorer,
                      extra: dict[str, Any]) -> dict[str, Any]:
    """Write `scorer` into the checkpoint `directory`; returns its state (JSON-able)."""
    directory = Path(directory)
    arrays = {k: np.ascontiguousarray(v) for k, v in scorer.arrays().items()}
    state = {**scorer.state(), **extra}
    if arrays:
        atomic_write(directory / SCORER_FILE, lambda tmp: save_file(arrays, tmp))
        state["arrays_sha256"] = sha256_file(directory / SCORER_FILE)
    cfg_path = directory / CONFIG_FILE
    doc = json.loads(cfg_path.read_text())
    doc["scoring"] = state
    atomic_write_bytes(cfg_path, json.dumps(doc, indent=2).encode())
    return state


def load_scorer_files(directory: str | Path, encoder: Encoder, state: dict[str, Any], *,
                      name: str) -> TileScorer:
    """Rebuild the fitted scorer of model `name` from its `state` and the arrays file.

    Raises ModelError when the arrays file is missing or its sha256 differs from
    the one in `state` (the catalog's).
    """
    arrays: dict[str, np.ndarray] = {}
    if state.get("arrays_sha256"):
        path = Path(directory) / SCORER_FILE
        if not path.is_file():
            raise ModelError(f"{path}: missing (the scorer's memory bank of model {name!r})")
        if sha256_file(path) != state["arrays_sha256"]:
            raise ModelError(f"{path}: sha256 differs from the catalog's; refusing to load it")
        arrays = load_file(str(path))
    return scorer_from_state(encoder, state, arrays)
