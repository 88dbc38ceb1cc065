"""Anomalies: pick or start a scan, move the threshold, review flagged images, export CSV."""

import plotly.graph_objects as go
import streamlit as st
from latentsight.dashboard import core, loaders, ui

st.title("Anomalies")
home = loaders.home()
state = core.home_state(home)

with st.expander("Start a scan on a folder", expanded=False):
    ui.scan_starter(home, state)

scans = core.scans(home)
if not scans:
    st.info("No anomaly scans yet. Start one above, or run: "
            f"`latentsight scan FOLDER --home {state.root}`.")
    st.stop()

scan = st.selectbox(
    "Scan", scans, key="scan",
    format_func=lambda s: f"#{s.id} · {s.started_at:%Y-%m-%d %H:%M} · {s.n_images} images · "
                          f"{s.status}",
)
results = core.scan_results(home, scan.id)
scores = [r.score for r in results if r.score is not None]
if not scores:
    st.warning(f"Scan #{scan.id} has no scored images yet ({len(results)} results).")
    st.stop()

lo, hi = min(scores), max(scores)
step = (hi - lo) / 200 if hi > lo else 1.0
default = min(max(float(scan.threshold), lo), hi)
threshold = st.slider("Threshold (score above it = anomalous)", float(lo), float(hi + step),
                      float(default), step=float(step), key=f"thr-{scan.id}", format="%.5f")
fl = core.reflag(results, threshold)

c = st.columns(4)
c[0].metric("Flagged", fl.flagged)
c[1].metric("Normal", fl.normal)
c[2].metric("Failed to score", fl.failed)
c[3].metric("Scan threshold", f"{scan.threshold:.5f}")

fig = go.Figure(go.Histogram(x=scores, nbinsx=50, marker_color="#4c78a8", name="images"))
fig.add_vline(x=threshold, line_color="#e45756", line_dash="dash",
              annotation_text=f"threshold {threshold:.4f}")
fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="anomaly score",
                  yaxis_title="images", showlegend=False)
st.plotly_chart(fig, key="hist")
st.download_button("Export CSV", core.scan_csv(results, threshold), key="scan_csv",
                   file_name=f"latentsight-scan-{scan.id}.csv", mime="text/csv")

st.subheader("Flagged images")
show = st.slider("Show the top", 1, 50, 8, key="top")
fitted = loaders.scorer(home, scan.model_id)  # the scan API's scorer, when this build has it
enc = loaders.encoder(home, scan.model_id) if fitted is None else None
flagged_sha = {results[i].sha256 for i in fl.order}
gen = core.index_generation(home, home.catalog.model())[0] if state.indexed else -1
for i in fl.order[:show]:
    r = results[i]
    cols = st.columns([1, 1, 3])
    with cols[0]:
        thumb = core.scan_thumbnail(home, r.id)
        if thumb is not None:
            st.image(str(thumb), caption=f"score {r.score:.5f}", width="stretch")
    with cols[1]:
        if fitted is not None:
            overlay, what = core.anomaly_overlay(*fitted, r.path), "anomaly map"
        else:
            overlay = core.heatmap_overlay(enc, r.path) if enc is not None else None
            what = "reconstruction error"
        if overlay is not None:
            st.image(overlay, caption=what, width="stretch")
        else:
            st.caption("no heatmap for this model")
    with cols[2]:
        st.caption(r.path)
        near = r.nearest_ids or (loaders.neighbors(*loaders.home_location(), r.id, gen, 8)
                                 if state.indexed else [])
        rows = {x.id: x for x in home.catalog.images(ids=near)}
        normal = [j for j in near if j in rows and rows[j].sha256 not in flagged_sha
                  and rows[j].sha256 != r.sha256][:4]
        if normal:
            st.markdown("Nearest normal images")
            for col, j in zip(st.columns(4), normal, strict=False):
                with col:
                    ui.card(home, j, f"#{j} · {rows[j].label or '-'}")
if fl.failed:
    with st.expander(f"{fl.failed} file(s) could not be scored"):
        st.dataframe([{"path": r.path, "error": r.error} for r in results if r.score is None])
