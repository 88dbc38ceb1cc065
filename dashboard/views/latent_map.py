"""Latent map: a 2-D projection of the active model's embeddings; box or lasso points to filter
the grid below; click a point to open it."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from latentsight.dashboard import core, loaders, ui
from latentsight.embedder.errors import LatentsightError

ui.follow_open()
st.title("Latent map")
home = loaders.home()
state = core.home_state(home)
if not ui.ready(state):
    st.stop()
f = ui.filters(home, synthetic_default="all")
name, gen, built, ntotal = loaders.index_key(home)

c1, c2 = st.columns([1, 2])
method = c1.radio("Projection", ["PCA", "t-SNE"], horizontal=True, key="method")
color = c2.radio("Colour by", ["label", "source", "synthetic", "anomaly score", "scan flag"],
                 horizontal=True, key="color")
limit = core.SAMPLE_ABOVE if method == "PCA" else core.TSNE_MAX
try:
    data = loaders.projection(*loaders.home_location(), name, gen, built, ntotal,
                              "pca" if method == "PCA" else "tsne", limit)
except LatentsightError as e:
    st.error(str(e))
    st.stop()
ids = data["ids"]
if len(ids) < data["total"]:
    st.info(f"Showing a random sample of {len(ids):,} of {data['total']:,} images "
            f"({method} runs on at most {limit:,} points).")
if len(ids) == 0:
    st.info("The index is empty. Run: `latentsight index build`.")
    st.stop()

meta = loaders.map_rows(*loaders.home_location(), name, gen, built, ntotal,
                        "pca" if method == "PCA" else "tsne", limit)
meta = {k: np.asarray(v, dtype=object) for k, v in meta.items()}
if f["labels"] or f["sources"] or f["tags"] or f["synthetic"] != "all":
    # the sidebar's filters on the points' cached metadata; tags through the catalog
    keep = np.ones(len(ids), bool)
    if f["labels"]:
        keep &= np.isin(meta["label"], f["labels"])
    if f["sources"]:
        keep &= np.isin(meta["source"], f["sources"])
    synth = core.synthetic_flag(f["synthetic"])
    if synth is not None:
        keep &= meta["synthetic"].astype(bool) == synth
    if f["tags"]:
        keep &= np.isin(ids, sorted(home.catalog.tagged_ids(f["tags"])))
    xy, ids = data["xy"][keep], ids[keep]
    meta = {k: v[keep] for k, v in meta.items()}
else:
    xy = data["xy"]
if len(ids) == 0:
    st.info("No point matches the sidebar's filters.")
    st.stop()
pos = {int(i): j for j, i in enumerate(ids.tolist())}
picked_id = st.session_state.get("map_clicked")
selection_ids = set(st.session_state.get("map_selected") or [])


def values(kind: str) -> list:
    if kind == "label":
        return meta["label"].tolist()
    if kind == "source":
        return meta["source"].tolist()
    if kind == "synthetic":
        return ["synthetic" if v else "real" for v in meta["synthetic"].tolist()]
    latest = home.catalog.latest_scores()
    thresholds = {s.id: s.threshold for s in home.catalog.scans()}
    out = []
    for sha in meta["sha256"].tolist():
        hit = latest.get(sha)
        if hit is None:
            out.append(None)
        elif kind == "anomaly score":
            out.append(hit[0])
        else:
            out.append("flagged" if hit[0] > thresholds.get(hit[2], np.inf) else "not flagged")
    return out


def cd(a: np.ndarray) -> np.ndarray:
    """Catalog ids as an (n, 1) object array: plotly validates it as one array (a list of
    lists is checked item by item, ~0.5 s for 10k points) and still writes it as plain lists
    (a numeric array would reach the selection events as base64)."""
    return np.asarray(a, dtype=np.int64).astype(object).reshape(-1, 1)


vals = values(color)
hover = meta["hover"]  # "id N<br>label", built once per index generation (map_rows)
fig = go.Figure()
if color == "anomaly score":
    scored = np.array([v is not None for v in vals])
    if not scored.any():
        st.info("No scan has scored these images yet; run an anomaly scan to colour by score. "
                "Unscored images are grey.")
    fig.add_scattergl(x=xy[~scored, 0], y=xy[~scored, 1], mode="markers", name="unscored",
                      marker=dict(color="#c8c8c8", size=6), customdata=cd(ids[~scored]),
                      hovertext=hover[~scored], hoverinfo="text")
    fig.add_scattergl(x=xy[scored, 0], y=xy[scored, 1], mode="markers", name="scored",
                      customdata=cd(ids[scored]), hovertext=hover[scored],
                      hoverinfo="text",
                      marker=dict(color=[v for v in vals if v is not None], size=7,
                                  colorscale="Turbo", showscale=True,
                                  colorbar=dict(title="score")))
else:
    cats = sorted({v if v is not None else "unscored" for v in vals},
                  key=lambda v: (v in ("unscored", "-"), v))
    colours = dict(zip(cats, core.palette(len(cats)), strict=True))
    colours.update({k: "#c8c8c8" for k in ("unscored", "-") if k in colours})
    arr = np.array([v if v is not None else "unscored" for v in vals], dtype=object)
    for cat in cats:
        m = arr == cat
        fig.add_scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers", name=str(cat),
                          marker=dict(color=colours[cat], size=7),
                          customdata=cd(ids[m]), hovertext=hover[m],
                          hoverinfo="text")
if selection_ids or picked_id is not None:
    hi = np.array([i in selection_ids or i == picked_id for i in ids.tolist()])
    fig.add_scattergl(x=xy[hi, 0], y=xy[hi, 1], mode="markers", name="selected",
                      marker=dict(color="rgba(0,0,0,0)", size=12,
                                  line=dict(width=2, color="#111")),
                      customdata=cd(ids[hi]), hoverinfo="skip")
fig.update_layout(height=620, margin=dict(l=10, r=10, t=10, b=10), dragmode="lasso",
                  xaxis_title=f"{method} 1", yaxis_title=f"{method} 2",
                  legend=dict(orientation="h", yanchor="top", y=-0.08, x=0))
event = st.plotly_chart(fig, key="map", on_select="rerun",
                        selection_mode=("points", "box", "lasso"))
chosen = core.selected_ids(event.selection if event else None)
if chosen != st.session_state.get("map_last_event", []):
    st.session_state["map_last_event"] = chosen
    if chosen:  # a redraw may drop the chart's own selection: ours stays until cleared
        if len(chosen) == 1:
            st.session_state["map_clicked"] = chosen[0]
        st.session_state["map_selected"] = chosen
        st.rerun()

st.caption("Lasso or box-select points to filter the grid below (drag mode in the chart's "
           "toolbar); click one point to open it.")
if picked_id is not None and picked_id in pos:
    c1, c2 = st.columns([1, 5])
    with c1:
        ui.card(home, picked_id, f"#{picked_id} · {meta['label'][pos[picked_id]]}",
                key="map-picked")
    with c2:
        st.caption(meta["path"][pos[picked_id]])
        if st.button("Search from this", key="open"):
            ui.open_in_search(picked_id)
if selection_ids:
    st.subheader(f"{len(selection_ids)} selected")
    if st.button("Clear the selection", key="clear_sel"):
        st.session_state["map_selected"] = []
        st.session_state.pop("map_clicked", None)
        st.rerun()
    ui.browse_grid(home, f, ids=sorted(selection_ids), key="sel")
