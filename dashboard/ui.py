"""Widgets shared by the pages: readiness notices, image cards, the query in session state."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from dashboard import core
from index.home import Home

COLUMNS = 6  # cards per row in every grid


def ready(state: core.HomeState, *, need: str = "index") -> bool:
    """Show what to run first and return False when the home lacks what the page needs.

    need: "images" (a non-empty catalog) or "index" (a model with an index).
    """
    step = state.first_step()
    if step is None:
        return True
    if need == "images" and state.images > 0:
        return True
    st.info(step)
    return False


def query() -> dict | None:
    """The current search query: {"kind": "id", "id": int} or {"kind": "upload", ...}."""
    return st.session_state.setdefault("query", None)


def set_query_id(image_id: int) -> None:
    st.session_state["query"] = {"kind": "id", "id": int(image_id)}


def open_in_search(image_id: int) -> None:
    set_query_id(image_id)
    st.switch_page("views/search.py")


def card(home: Home, image_id: int, caption: str, *, detail: str | None = None) -> None:
    """A catalog image by id: its cached thumbnail and a caption."""
    thumb = core.thumbnail(home, image_id)
    if thumb is None:
        st.warning(f"#{image_id}: file unreadable")
    else:
        st.image(str(thumb), width="stretch")
    st.markdown(caption)
    if detail:
        st.caption(detail)


def grid(items: Sequence, columns: int = COLUMNS):
    """Yield (column, item) over rows of `columns` columns."""
    for start in range(0, len(items), columns):
        cols = st.columns(columns)
        yield from zip(cols, items[start : start + columns], strict=False)


def synthetic_choice(key: str) -> bool | None:
    choice = st.radio("Synthetic images", ["all", "real only", "synthetic only"],
                      horizontal=True, key=key)
    return {"all": None, "real only": False, "synthetic only": True}[choice]


def scan_starter(home: Home, state: core.HomeState) -> None:
    """Start an anomaly scan on a folder (when this build has the scan API)."""
    if not ready(state):
        return
    st.info("Scanning is not available in this build: the scan API (embedder/scoring.py) is "
            "missing. Review scans made elsewhere below.")


def synthesizer(home: Home, state: core.HomeState, labels: list[str], sparse: list[str]) -> None:
    """Generate images for a class (when this build has the GAN)."""
    st.info("Synthesis is not available in this build: the conditional GAN (training/gan/) is "
            "missing.")
