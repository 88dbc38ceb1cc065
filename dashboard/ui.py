"""Widgets shared by the pages: readiness notices, image cards, the query in session state."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
from latentsight.dashboard import core
from latentsight.embedder.errors import LatentsightError
from latentsight.index.home import Home

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
    """Start an anomaly scan on a folder with the active model, with a progress bar."""
    if not ready(state):
        return
    if core.scan_api() is None:
        st.info("Scanning is not available in this build (the scan API, index/scan.py, is "
                "missing). Scans recorded in the catalog can still be reviewed below.")
        return
    with st.form("scan_form"):
        folder = st.text_input("Folder on the server to scan", key="scan_folder")
        fpr = st.number_input("False-positive rate for the threshold (0 = the model's own)",
                              0.0, 0.5, 0.0, step=0.01, key="scan_fpr")
        go = st.form_submit_button("Scan")
    if go and folder.strip():
        bar = st.progress(0.0, text="listing files...")
        try:
            summary = core.start_scan(
                home, folder.strip(), fpr=fpr or None,
                on_progress=lambda done, total: bar.progress(
                    done / total if total else 1.0, text=f"{done}/{total} images scored"))
        except (LatentsightError, ValueError) as e:
            st.error(str(e))
            return
        st.session_state.pop("scan", None)  # show the newest scan
        st.success(f"scan #{summary.scan_id}: {len(summary.results)} images, "
                   f"{summary.n_flagged} flagged, {len(summary.failed)} failed")


def synthesizer(home: Home, state: core.HomeState, labels: list[str], sparse: list[str]) -> None:
    """Generate images for a class with the latest generator (when this build has the GAN)."""
    api = core.synth_api()
    if api is None:
        st.info("Synthesis is not available in this build (the conditional GAN, "
                "training/gan/, is missing).")
        return
    if not core.generators(home):
        st.info(f"No generator trained yet. Run: `latentsight gan train --home {state.root}`.")
        return
    with st.form("synth_form"):
        a, b = st.columns(2)
        label = a.selectbox("Class", labels, key="synth_label",
                            index=labels.index(sparse[0]) if sparse else 0)
        n = b.number_input("Images", 1, 1000, 20, key="synth_n")
        go = st.form_submit_button("Synthesize")
    if go:
        with st.spinner(f"Generating {n} {label!r} images..."):
            try:
                rep = core.synthesize(home, label, int(n))
            except (LatentsightError, ValueError) as e:
                st.error(str(e))
                return
        st.success(f"{rep.accepted} synthetic {label!r} images added ({rep.generated} "
                   f"generated, {rep.rejected_memorized} near-copies and "
                   f"{rep.rejected_implausible} implausible rejected).")
