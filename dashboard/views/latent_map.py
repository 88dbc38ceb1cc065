"""Latent map: a 2-D projection of the active model's embeddings; a point opens in Search."""

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from latentsight.dashboard import core, loaders, ui

st.title("Latent map")
home = loaders.home()
state = core.home_state(home)
if not ui.ready(state):
    st.stop()
model = home.catalog.model()
gen, built = core.index_generation(home, model)

c1, c2 = st.columns(2)
method = c1.radio("Projection", ["PCA", "t-SNE"], horizontal=True, key="method")
color = c2.radio("Color by", ["label", "source", "anomaly score"], horizontal=True, key="color")
limit = core.SAMPLE_ABOVE if method == "PCA" else core.TSNE_MAX
data = loaders.projection(*loaders.home_location(), model.name, gen, built,
                          "pca" if method == "PCA" else "tsne", limit)
ids = data["ids"]
if len(ids) < data["total"]:
    st.info(f"Showing a random sample of {len(ids):,} of {data['total']:,} images "
            f"({method} runs on at most {limit:,} points).")
if len(ids) == 0:
    st.info("The index is empty. Run: `latentsight index build`.")
    st.stop()

rows = {r.id: r for r in home.catalog.images(ids=ids.tolist())}
df = pd.DataFrame({
    "x": data["xy"][:, 0], "y": data["xy"][:, 1], "id": ids,
    "label": [(rows[i].label or "-") if i in rows else "-" for i in ids.tolist()],
    "source": [rows[i].source if i in rows else "-" for i in ids.tolist()],
    "path": [rows[i].path if i in rows else "" for i in ids.tolist()],
})
tooltip = ["id", "label", "source", "path"]
if len(ids) <= core.HOVER_IMAGES_MAX:
    df["image"] = loaders.hover_images(*loaders.home_location(), tuple(ids.tolist()))
    tooltip = ["image", *tooltip]
else:
    st.caption(f"Thumbnails on hover are shown for maps of up to {core.HOVER_IMAGES_MAX:,} "
               "points; click a point to see it.")
if color == "anomaly score":
    by_sha = core.latest_scores_by_sha(home)
    df["anomaly_score"] = [by_sha.get(rows[i].sha256, np.nan) if i in rows else np.nan
                           for i in ids.tolist()]
    if df["anomaly_score"].isna().all():
        st.info("No scan has scored these images yet; run an anomaly scan to color by score.")
    tooltip.append("anomaly_score")
    enc_color = alt.condition("isValid(datum.anomaly_score)",
                              alt.Color("anomaly_score:Q", scale=alt.Scale(scheme="turbo"),
                                        title="anomaly score"),
                              alt.value("#d0d0d0"))
else:
    enc_color = alt.Color(f"{color}:N")
pick = alt.selection_point(name="pick", fields=["id"], on="click", nearest=True)
chart = (
    alt.Chart(df)
    .mark_circle(size=28, opacity=0.8)
    .encode(x=alt.X("x:Q", title=f"{method} 1"), y=alt.Y("y:Q", title=f"{method} 2"),
            color=enc_color, tooltip=tooltip)
    .add_params(pick)
    .properties(height=620)
    .interactive()
)
event = st.altair_chart(chart, key="map", on_select="rerun", selection_mode="pick")

points = (event.selection.get("pick") or []) if event and event.selection else []
if not points:
    st.caption("Hover a point to see its image; click it to open it in Search.")
else:
    picked = int(points[0]["id"])
    c1, c2 = st.columns([1, 5])
    with c1:
        ui.card(home, picked, f"#{picked} · {rows[picked].label or '-'}")
    with c2:
        st.caption(rows[picked].path)
        if st.button("Open in Search", key="open"):
            ui.open_in_search(picked)
