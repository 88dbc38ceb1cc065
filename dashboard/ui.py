"""Widgets shared by the pages: readiness notices, image cards, one set of filters, the query,
and the page state mirrored in the URL (`st.query_params`) so a view can be shared."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st
from latentsight.dashboard import core
from latentsight.embedder.errors import LatentsightError
from latentsight.index.home import Home
from latentsight.training.anomaly import is_background

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


def tag_filter(home: Home) -> list[str]:
    """The sidebar's tag filter alone (pages whose images are scan results: Anomalies),
    the same key and URL parameter as `filters`."""
    tags = home.catalog.all_tags()
    if "f_tags" not in st.session_state:
        st.session_state["f_tags"] = [v for v in url_list("tag") if v in tags]
    st.session_state["f_tags"] = [v for v in st.session_state["f_tags"] if v in tags]
    with st.sidebar:
        chosen = st.multiselect("Tag", tags, key="f_tags",
                                help="Only images with any of these tags (tag images in their "
                                     "sample view)")
    set_url(tag=chosen)
    return chosen


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



# ---- region (box) search ------------------------------------------------------------------


def box_picker(pixels, key: str = "box") -> tuple[int, int, int, int]:
    """Draw a box on the image (drag in the chart) or type it; returns (x, y, w, h) in pixels.

    The typed fields are `{key}_x`, `{key}_y`, `{key}_w`, `{key}_h`; a drawn box fills them
    (a box can also come from the URL: `box=x,y,w,h`).
    """
    import plotly.graph_objects as go

    h, w = pixels.shape[:2]
    names = [f"{key}_{c}" for c in "xywh"]
    drawn = st.session_state.pop(f"_{key}_drawn", None)
    if drawn is None and names[0] not in st.session_state:
        drawn = _url_box(w, h) or core.default_box(w, h)
    if drawn is not None:
        for n, v in zip(names, drawn, strict=True):
            st.session_state[n] = int(v)
    try:
        bx = core.clamp_box([st.session_state[names[0]], st.session_state[names[1]],
                             st.session_state[names[0]] + st.session_state[names[2]],
                             st.session_state[names[1]] + st.session_state[names[3]]], w, h)
    except (KeyError, TypeError):
        bx = core.default_box(w, h)
    for n, v in zip(names, bx, strict=True):  # inside this image (it may be another size)
        st.session_state[n] = int(v)
    step = max(1, max(h, w) // 64)  # invisible points the box selection can catch
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    fig = go.Figure(go.Image(source=core.png_data_uri(pixels), hoverinfo="skip"))
    fig.add_scatter(x=(xs.ravel() + 0.5).tolist(), y=(ys.ravel() + 0.5).tolist(), mode="markers",
                    marker=dict(color="rgba(0,0,0,0)", size=4), hoverinfo="skip",
                    showlegend=False)
    x, y, bw, bh = bx
    fig.add_shape(type="rect", x0=x, y0=y, x1=x + bw, y1=y + bh,
                  line=dict(color="#ff2828", width=2))
    side = 420
    fig.update_layout(dragmode="select", height=int(side * h / max(h, w)) + 40,
                      margin=dict(l=0, r=0, t=30, b=0), showlegend=False)
    fig.update_xaxes(range=[0, w], showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(range=[h, 0], showgrid=False, zeroline=False, scaleanchor="x")
    event = st.plotly_chart(fig, key=f"{key}_chart", on_select="rerun", selection_mode="box",
                            config={"modeBarButtonsToRemove": ["lasso2d"]})
    new = _event_box(event, w, h)
    if new is not None and new != st.session_state.get(f"_{key}_seen"):
        st.session_state[f"_{key}_seen"] = new
        if new != bx:
            st.session_state[f"_{key}_drawn"] = new
            st.rerun()
    cols = st.columns(4)
    for col, n, label, lo, hi in zip(cols, names, ("x", "y", "width", "height"),
                                     (0, 0, 1, 1), (w - 1, h - 1, w, h), strict=True):
        col.number_input(label, lo, hi, step=1, key=n)
    st.caption("Drag on the image to draw the box, or type it (pixels of the full-size image).")
    return core.clamp_box([st.session_state[names[0]], st.session_state[names[1]],
                           st.session_state[names[0]] + st.session_state[names[2]],
                           st.session_state[names[1]] + st.session_state[names[3]]], w, h)


def _event_box(event, width: int, height: int) -> tuple[int, int, int, int] | None:
    sel = event.selection if event else None
    if not sel:
        return None
    boxes = sel.get("box") or []
    if boxes:
        b = boxes[-1]
        xs, ys = b.get("x") or [], b.get("y") or []
        if len(xs) == 2 and len(ys) == 2:
            return core.clamp_box([xs[0], ys[0], xs[1], ys[1]], width, height)
    pts = sel.get("points") or []
    if pts:  # no range sent: the extent of the caught points
        xs = [p["x"] for p in pts if "x" in p]
        ys = [p["y"] for p in pts if "y" in p]
        if xs and ys:
            return core.clamp_box([min(xs) - 0.5, min(ys) - 0.5, max(xs) + 0.5, max(ys) + 0.5],
                                  width, height)
    return None


def _url_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    text = st.query_params.get("box") or ""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        return None
    return core.clamp_box([x, y, x + w, y + h], width, height)


def region_results(home: Home, hits: Sequence, key: str) -> None:
    """Region-search hits as a grid: each thumbnail with its matching region outlined."""
    if not hits:
        st.info("No catalog image matches the filters.")
    for col, (rank, hit) in grid(list(enumerate(hits, 1))):
        with col:
            img = core.boxed_file(hit.path, hit.box) if hit.box is not None else None
            if img is not None:
                st.image(img, width="stretch")
            else:
                thumb = core.thumbnail(home, hit.id)
                if thumb is not None:
                    st.image(str(thumb), width="stretch")
            st.markdown(f"**{rank}. #{hit.id}** · {hit.label or '-'} · {hit.score:.3f}"
                        + (f" · box {hit.box}" if hit.box is not None else "")
                        + (" · :orange-badge[synthetic]" if hit.synthetic else ""))
            st.caption(hit.path)
            st.button("Open", key=f"open-{key}-{rank}", on_click=_open_later, args=(hit.id,),
                      help="Full size, metadata, heatmap, nearest images")


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
    if is_background(m):
        return " (background model: every image)"
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
