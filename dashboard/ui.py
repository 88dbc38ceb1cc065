"""Widgets shared by the pages: readiness notices, image cards, one set of filters, the query,
and the page state mirrored in the URL (`st.query_params`) so a view can be shared."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
from latentsight.dashboard import core
from latentsight.embedder.errors import LatentsightError
from latentsight.index.home import Home

COLUMNS = 6  # cards per row in every grid
SAMPLE_PAGE = "views/sample.py"
SEARCH_PAGE = "views/search.py"


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


# ---- the URL ------------------------------------------------------------------------------


def url_int(name: str) -> int | None:
    """An integer query parameter (None when absent or not a number)."""
    value = st.query_params.get(name)
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def url_list(name: str) -> list[str]:
    return [v for v in st.query_params.get_all(name) if v != ""]


def set_url(**params: object) -> None:
    """Write the page's state into the URL; None or empty values are removed."""
    for name, value in params.items():
        if value is None or value == [] or value == "":
            if name in st.query_params:
                del st.query_params[name]
        elif isinstance(value, list | tuple):
            st.query_params[name] = [str(v) for v in value]
        else:
            st.query_params[name] = str(value)


# ---- one set of filters (sidebar), shared by search, browse grid and map -------------------


def filters(home: Home, *, synthetic_default: str = core.SYNTHETIC_CHOICES[0]) -> dict:
    """The sidebar's label / source / tag / synthetic filters, read from and written to the URL.

    Returns {"labels", "sources", "tags", "synthetic"} (synthetic: one of
    core.SYNTHETIC_CHOICES; real images only by default, as the CLI's search).
    """
    labels, sources = home.catalog.distinct_values()
    tags = home.catalog.all_tags()
    if not st.session_state.get("_filters_from_url"):
        st.session_state["_filters_from_url"] = True
        st.session_state["f_labels"] = [v for v in url_list("label") if v in labels]
        st.session_state["f_sources"] = [v for v in url_list("source") if v in sources]
        st.session_state["f_tags"] = [v for v in url_list("tag") if v in tags]
        synth = st.query_params.get("synthetic")
        st.session_state["f_synth"] = synth if synth in core.SYNTHETIC_CHOICES else \
            synthetic_default
    for key, options in (("f_labels", labels), ("f_sources", sources), ("f_tags", tags)):
        st.session_state[key] = [v for v in st.session_state.get(key, []) if v in options]
    with st.sidebar:
        st.markdown("**Filters**")
        f_labels = st.multiselect("Label", labels, key="f_labels")
        f_sources = st.multiselect("Source", sources, key="f_sources")
        f_tags = st.multiselect("Tag", tags, key="f_tags",
                                help="Images with any of these tags (tag images in their "
                                     "sample view)")
        f_synth = st.radio("Synthetic images", list(core.SYNTHETIC_CHOICES), key="f_synth",
                           horizontal=True)
    set_url(label=f_labels, source=f_sources, tag=f_tags,
            synthetic=None if f_synth == core.SYNTHETIC_CHOICES[0] else f_synth)
    return {"labels": f_labels, "sources": f_sources, "tags": f_tags, "synthetic": f_synth}


def reviewer() -> str:
    """Who is reviewing (sidebar), recorded with every review mark."""
    with st.sidebar:
        return st.text_input("Reviewer", key="reviewer", value="analyst",
                             help="Recorded with every review mark").strip()


# ---- the query ----------------------------------------------------------------------------


def query() -> dict | None:
    """The current search query: {"kind": "id", "id": int} or {"kind": "upload", ...}.

    A catalog id in the URL (`?q=ID`) becomes the query when the session has none.
    """
    q = st.session_state.setdefault("query", None)
    if q is None and url_int("q") is not None:
        q = st.session_state["query"] = {"kind": "id", "id": url_int("q")}
    return q


def set_query_id(image_id: int) -> None:
    st.session_state["query"] = {"kind": "id", "id": int(image_id)}
    st.session_state.pop("upload_error", None)


def open_in_search(image_id: int) -> None:
    set_query_id(image_id)
    st.switch_page(SEARCH_PAGE, query_params={"q": int(image_id)})


def open_sample(image_id: int, result_id: int | None = None) -> None:
    params = {"id": int(image_id)}
    if result_id is not None:
        params["result"] = int(result_id)
    st.switch_page(SAMPLE_PAGE, query_params=params)


# ---- cards --------------------------------------------------------------------------------


def card(home: Home, image_id: int, caption: str, *, detail: str | None = None,
         synthetic: bool = False, key: str | None = None) -> None:
    """A catalog image by id: its cached thumbnail, a caption and an "Open" button."""
    thumb = core.thumbnail(home, image_id)
    if thumb is None:
        st.warning(f"#{image_id}: file unreadable")
    else:
        st.image(str(thumb), width="stretch")
    st.markdown(caption + (" · :orange-badge[synthetic]" if synthetic else ""))
    if detail:
        st.caption(detail)
    if key is not None:
        st.button("Open", key=f"open-{key}", on_click=_open_later, args=(image_id,),
                  help="Full size, metadata, heatmap, nearest images")


def _open_later(image_id: int, result_id: int | None = None) -> None:
    st.session_state["_open"] = (int(image_id), result_id)


def follow_open() -> None:
    """Switch to the sample view when a card's "Open" was clicked (callbacks cannot switch)."""
    target = st.session_state.pop("_open", None)
    if target is not None:
        open_sample(*target)


def grid(items: Sequence, columns: int = COLUMNS):
    """Yield (column, item) over rows of `columns` columns."""
    for start in range(0, len(items), columns):
        cols = st.columns(columns)
        yield from zip(cols, items[start : start + columns], strict=False)


def browse_grid(home: Home, f: dict, *, ids: Sequence[int] | None = None, key: str = "b",
                per_page: int = 2 * COLUMNS, pick: bool = True) -> None:
    """A paged grid of the catalog images matching the filters (and `ids`, when given)."""
    synth = core.synthetic_flag(f["synthetic"])
    _, total = home.catalog.page(labels=f["labels"], sources=f["sources"], synthetic=synth,
                                 tags=f["tags"], ids=ids, limit=0)
    pages = max(1, -(-total // per_page))
    page = st.number_input(f"Page (of {pages}, {total:,} images)", 1, pages, 1,
                           key=f"{key}_page")
    rows, _ = home.catalog.page(labels=f["labels"], sources=f["sources"], synthetic=synth,
                                tags=f["tags"], ids=ids, offset=(page - 1) * per_page,
                                limit=per_page)
    if not rows:
        st.caption("No catalog image matches the filters.")
    for col, row in grid(rows):
        with col:
            card(home, row.id, f"#{row.id} · {row.label or '-'}", synthetic=row.synthetic,
                 key=f"{key}-{row.id}")
            if pick:
                st.button("Search", key=f"pick-{row.id}", on_click=set_query_id,
                          args=(row.id,))



# ---- scans and synthesis ------------------------------------------------------------------


def scan_starter(home: Home, state: core.HomeState) -> None:
    """Start an anomaly scan on a folder with a chosen calibrated model, with a progress bar."""
    if not ready(state, need="images"):
        return
    models = core.calibrated_models(home)
    if not models:
        st.info("No model is calibrated for anomaly scans. Run: `latentsight train "
                f"--normal-label LABEL --home {state.root}`.")
        return
    with st.form("scan_form"):
        names = [m.name for m in models]
        model = st.selectbox("Model", names, index=len(names) - 1, key="scan_model",
                             format_func=lambda n: n + _normal_of(models, n))
        folder = st.text_input("Folder on the server to scan (absolute path)", key="scan_folder")
        fpr = st.number_input("False-positive rate for the threshold (0 = the model's own)",
                              0.0, 0.5, 0.0, step=0.01, key="scan_fpr")
        go = st.form_submit_button("Scan")
    if not go:
        return
    bar = st.progress(0.0, text="listing files...")
    try:
        summary = core.start_scan(
            home, folder, model=model, fpr=fpr or None,
            on_progress=lambda done, total: bar.progress(
                done / total if total else 1.0, text=f"{done}/{total} images scored"))
    except (LatentsightError, ValueError) as e:
        st.error(str(e))
        return
    st.session_state["scan"] = summary.scan_id  # the picker shows the new scan
    st.session_state["scan_started"] = (
        f"scan #{summary.scan_id}: {len(summary.results)} images, {summary.n_flagged} flagged, "
        f"{len(summary.failed)} failed")


def _normal_of(models, name: str) -> str:
    m = next(m for m in models if m.name == name)
    label = (m.metrics.get("scoring") or {}).get("normal_label")
    return f" (normal: {label})" if label else ""


def synthesizer(home: Home, state: core.HomeState, sparse: list[str]) -> None:
    """Generate images for a class with a chosen generator and an explicitly chosen gate."""
    gens = core.generators(home)
    if not gens:
        st.info(f"No generator trained yet. Run: `latentsight gan train --home {state.root}`.")
        return
    gate_models = core.calibrated_models(home)
    a, b = st.columns(2)
    gan = a.selectbox("Generator", [g.name for g in gens], index=len(gens) - 1, key="synth_gan")
    try:
        classes = core.gan_classes(home, gan)
    except LatentsightError as e:
        st.error(str(e))
        return
    first = next((c for c in sparse if c in classes), classes[0])
    label = b.selectbox("Class (the generator's classes)", classes, key="synth_label",
                        index=classes.index(first))
    # the gate is chosen per class: the choice is remembered under the class's key
    options = ["off", *[m.name for m in gate_models]]
    c, d = st.columns(2)
    gate = c.selectbox("Plausibility gate", options, key=f"synth_gate-{label}",
                       format_func=lambda n: "off (no plausibility check)" if n == "off"
                       else f"anomaly scorer of {n}{_normal_of(gate_models, n)}",
                       help="A generated image this model's scorer flags is rejected. Pick one "
                            "trained on this class's normal images, or off.")
    n = d.number_input("Images", 1, 1000, 20, key="synth_n")
    if st.button("Synthesize", key="synth_go"):
        with st.spinner(f"Generating {n} {label!r} images..."):
            try:
                rep = core.synthesize(home, label, int(n), gan=gan,
                                      gate=None if gate == "off" else gate)
            except (LatentsightError, ValueError) as e:
                st.error(str(e))
                return
        gate_text = "no plausibility gate" if gate == "off" else f"gate {gate}"
        st.success(f"{rep.accepted} synthetic {label!r} images added ({rep.generated} "
                   f"generated, {rep.rejected_memorized} near-copies and "
                   f"{rep.rejected_implausible} implausible rejected; {gate_text}).")
