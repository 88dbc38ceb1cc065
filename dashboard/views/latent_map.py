"""Latent map: a 2-D projection of the active model's embeddings; a point opens in Search."""

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import core, loaders, ui

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
    "label": [rows[i].label or "-" if i in rows else "-" for i in ids.tolist()],
    "source": [rows[i].source if i in rows else "-" for i in ids.tolist()],
    "path": [rows[i].path if i in rows else "" for i in ids.tolist()],
})
if color == "anomaly score":
    by_sha = core.latest_scores_by_sha(home)
    df["anomaly score"] = [by_sha.get(rows[i].sha256, np.nan) if i in rows else np.nan
                           for i in ids.tolist()]
    if df["anomaly score"].isna().all():
        st.info("No scan has scored these images yet; run an anomaly scan to color by score.")
fig = px.scatter(df, x="x", y="y", color=color, custom_data=["id"],
                 hover_data={"x": False, "y": False, "id": True, "label": True, "path": True},
                 color_continuous_scale="Turbo", height=620)
fig.update_traces(marker=dict(size=5, opacity=0.8))
fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), xaxis_title=f"{method} 1",
                  yaxis_title=f"{method} 2")
event = st.plotly_chart(fig, key="map", on_select="rerun", selection_mode="points")

points = event.selection.points if event and event.selection else []
if not points:
    st.caption("Click a point to see the image and open it in Search.")
else:
    picked = int(points[0]["customdata"][0])
    c1, c2 = st.columns([1, 5])
    with c1:
        ui.card(home, picked, f"#{picked} · {rows[picked].label or '-'}")
    with c2:
        st.caption(rows[picked].path)
        if st.button("Open in Search", key="open"):
            ui.open_in_search(picked)
