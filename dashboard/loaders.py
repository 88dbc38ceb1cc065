"""Cached loaders: one Home, Searcher and projection per process, shared by every session.

The home comes from LATENTSIGHT_HOME / LATENTSIGHT_DB_URL (set by `latentsight
dashboard`). Searchers are keyed by the index generation, so an ingest or a
rebuild gives the next rerun a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from latentsight.dashboard import core
from latentsight.embedder.errors import LatentsightError
from latentsight.index.home import Home
from latentsight.index.search import Searcher

ENV_HOME, ENV_DB_URL, ENV_DEVICE = "LATENTSIGHT_HOME", "LATENTSIGHT_DB_URL", "LATENTSIGHT_DEVICE"


def home_location() -> tuple[str, str | None]:
    root = os.environ.get(ENV_HOME) or "~/.latentsight"
    return str(Path(root).expanduser().resolve()), os.environ.get(ENV_DB_URL) or None


@st.cache_resource(show_spinner=False)
def load_home(root: str, db_url: str | None) -> Home:
    return Home(root, db_url)


def home() -> Home:
    return load_home(*home_location())


@st.cache_resource(show_spinner="Loading the model and its index...", max_entries=4)
def load_searcher(root: str, db_url: str | None, model: str, generation: int, built_at: str,
                  ntotal: int) -> Searcher:
    device = os.environ.get(ENV_DEVICE) or "auto"
    return Searcher(load_home(root, db_url), model, device=device)


def searcher(h: Home) -> Searcher | None:
    """The active model's Searcher, or None after showing why it cannot be loaded."""
    try:
        model = h.catalog.model()
        row = h.catalog.index_for(model.id)
        key = (row.generation, str(row.built_at), row.ntotal) if row else (0, "", 0)
        return load_searcher(*home_location(), model.name, *key)
    except LatentsightError as e:
        st.error(str(e))
        return None


@st.cache_data(show_spinner="Projecting the embeddings...", max_entries=8)
def projection(root: str, db_url: str | None, model: str, generation: int, built_at: str,
               ntotal: int, method: str, limit: int) -> dict[str, Any]:
    """ids, 2-D coordinates and the catalog size for the model's index (sampled above `limit`).

    Computed once per (model, index generation, method) and shared by every session.
    """
    s = load_searcher(root, db_url, model, generation, built_at, ntotal)
    ids, vecs = core.catalog_vectors(s)
    keep = core.sample_ids(ids, limit)
    xy = core.project(vecs[keep], method=method)
    return {"ids": ids[keep].astype(np.int64), "xy": xy, "total": int(len(ids))}


def index_key(h: Home, model_name: str | None = None) -> tuple[str, int, str, int]:
    """(model, generation, built_at, ntotal): what the searcher and projections are keyed by."""
    model = h.catalog.model(model_name)
    row = h.catalog.index_for(model.id)
    return (model.name, *((row.generation, str(row.built_at), row.ntotal) if row else (0, "", 0)))


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def load_encoder(root: str, db_url: str | None, model: str, checkpoint_sha256: str):
    from latentsight.index.manager import load_encoder as _load

    h = load_home(root, db_url)
    return _load(h, h.catalog.model(model), os.environ.get(ENV_DEVICE) or "auto")


def encoder(h: Home, model_id: int):
    """The encoder of a catalog model by id, or None when it cannot be loaded."""
    rows = [m for m in h.catalog.models() if m.id == model_id]
    if not rows:
        return None
    try:
        return load_encoder(*home_location(), rows[0].name, rows[0].checkpoint_sha256)
    except LatentsightError:
        return None


@st.cache_data(show_spinner=False, max_entries=512)
def neighbors(root: str, db_url: str | None, result_id: int, generation: int, k: int) -> list[int]:
    """Nearest real catalog ids of a scanned file (by its scan-result id), active model."""
    from latentsight.embedder.images import read_bytes

    h = load_home(root, db_url)
    row = h.catalog.scan_result(result_id)
    s = searcher(h)
    if row is None or s is None:
        return []
    try:
        return [hit.id for hit in s.search(read_bytes(row.path), k=k)]
    except (LatentsightError, OSError):
        return []


@st.cache_resource(show_spinner="Loading the anomaly scorer...", max_entries=4)
def load_scorer(root: str, db_url: str | None, model: str, metrics_key: str):
    from latentsight.index.scan import load_scorer as _load

    h = load_home(root, db_url)
    return _load(h, h.catalog.model(model), os.environ.get(ENV_DEVICE) or "auto")


def scorer(h: Home, model_id: int):
    """(encoder, fitted scorer) of a model, or None when it is not calibrated."""
    rows = [m for m in h.catalog.models() if m.id == model_id]
    if not rows:
        return None
    state = (rows[0].metrics or {}).get("scoring")
    if not state:
        return None
    try:
        key = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
        return load_scorer(*home_location(), rows[0].name, key)
    except LatentsightError:
        return None


@st.cache_data(show_spinner=False, max_entries=2048)
def heatmap(root: str, db_url: str | None, model_id: int, model_key: str, path: str, size: int,
            opacity: float):
    """The anomaly (or reconstruction-error) overlay of one file under one model, cached per
    (model, file, size, opacity); None when the model can draw none."""
    h = load_home(root, db_url)
    fitted = scorer(h, model_id)
    if fitted is not None:
        return core.anomaly_overlay(*fitted, path, size=size, opacity=opacity)
    enc = encoder(h, model_id)
    return core.heatmap_overlay(enc, path, size=size, opacity=opacity) if enc is not None \
        else None


def model_key(h: Home, model_id: int) -> str:
    """What a model's cached heatmaps depend on: its checkpoint and its scorer's state."""
    m = next((m for m in h.catalog.models() if m.id == model_id), None)
    if m is None:
        return ""
    state = json.dumps((m.metrics or {}).get("scoring") or {}, sort_keys=True)
    return m.checkpoint_sha256 + hashlib.sha256(state.encode()).hexdigest()


@st.cache_data(show_spinner=False, max_entries=8)
def map_rows(root: str, db_url: str | None, model: str, generation: int, built_at: str,
             ntotal: int, method: str, limit: int) -> dict[str, list]:
    """label, source, synthetic and sha256 of the points of `projection` with the same
    arguments (one catalog read per index generation; the key is small, not the 10k ids)."""
    ids = projection(root, db_url, model, generation, built_at, ntotal, method,
                     limit)["ids"].tolist()
    rows = {r.id: r for r in load_home(root, db_url).catalog.images(ids=list(ids))}
    out: dict[str, list] = {"label": [], "source": [], "synthetic": [], "sha256": [],
                            "path": [], "hover": []}
    for i in ids:
        r = rows.get(i)
        out["label"].append((r.label or "-") if r else "-")
        out["source"].append(r.source if r else "-")
        out["synthetic"].append(bool(r.synthetic) if r else False)
        out["sha256"].append(r.sha256 if r else None)
        out["path"].append(r.path if r else "")
        out["hover"].append(f"id {i}<br>{(r.label or '-') if r else '-'}")
    return out
