"""Anomalies: pick or start a scan, move the threshold, review flagged and unflagged images,
refit the threshold from the reviews, export CSV."""

import plotly.graph_objects as go
import streamlit as st
from latentsight.dashboard import core, loaders, ui
from latentsight.embedder.errors import LatentsightError

ui.follow_open()
st.title("Anomalies")
home = loaders.home()
state = core.home_state(home)
who = ui.reviewer()
tags = ui.tag_filter(home)

with st.expander("Start a scan on a folder", expanded=False):
    ui.scan_starter(home, state)
if st.session_state.get("scan_started"):
    st.success(st.session_state.pop("scan_started"))

scans = home.catalog.scans()
if not scans:
    st.info("No anomaly scans yet. Start one above, or run: "
            f"`latentsight scan FOLDER --home {state.root}`.")
    st.stop()
by_id = {s.id: s for s in scans}
if st.session_state.get("scan") not in by_id:
    wanted = ui.url_int("scan")
    st.session_state["scan"] = wanted if wanted in by_id else core.default_scan(home, scans).id
models = {m.id: m.name for m in home.catalog.models()}
scan_id = st.selectbox(
    "Scan", list(by_id), key="scan",
    format_func=lambda i: f"#{i} · {by_id[i].started_at:%Y-%m-%d %H:%M} · "
                          f"{models.get(by_id[i].model_id, '?')} · {by_id[i].n_images} scored · "
                          f"{by_id[i].n_failed} failed · {by_id[i].status}",
)
scan = by_id[scan_id]
ui.set_url(scan=scan.id)
results = home.catalog.scan_results(scan.id)
scores = [r.score for r in results if r.score is not None]
if not scores:
    failed = [r for r in results if r.error]
    st.warning(f"Scan #{scan.id} scored no images ({len(results)} results, {len(failed)} "
               "failed).")
    if failed:
        st.markdown("Why the files failed:")
        st.dataframe([{"path": r.path, "reason": r.error} for r in failed], hide_index=True)
    st.stop()

lo, hi, step = core.threshold_range(scores, float(scan.threshold))
threshold = st.slider("Threshold (score above it = anomalous)", lo, hi, float(scan.threshold),
                      step=step, key=f"thr-{scan.id}", format="%.5f")
fl = core.reflag(results, threshold)
reviews = home.catalog.reviews(scan_id=scan.id)

c = st.columns(5)
c[0].metric("Flagged", fl.flagged)
c[1].metric("Normal", fl.normal)
c[2].metric("Failed to score", fl.failed)
c[3].metric("Scan threshold", f"{scan.threshold:.5f}")
c[4].metric("Reviewed", len(reviews))

fig = go.Figure(go.Histogram(x=scores, nbinsx=50, marker_color="#4c78a8", name="images"))
fig.add_vline(x=threshold, line_color="#e45756", line_dash="dash",
              annotation_text=f"threshold {threshold:.4f}")
fig.update_layout(height=280, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="anomaly score",
                  yaxis_title="images", showlegend=False)
st.plotly_chart(fig, key="hist")
a, b, c2 = st.columns([1, 2, 2])
a.download_button("Export CSV", core.scan_csv(results, threshold, reviews), key="scan_csv",
                  file_name=f"latentsight-scan-{scan.id}.csv", mime="text/csv")
with c2:
    refit_normals = st.checkbox(
        "Also refit the normal set", key="refit_normals",
        help="False alarms join the normal images and images marked defect or missed leave "
             "them; the scorer is fitted again on them (no training), then the threshold. "
             "Same as: latentsight train --normal-label L --use-reviews --refit-normals")
if b.button("Refit the threshold from the reviews", key="refit",
            help="Same as: latentsight train --normal-label L --use-reviews"):
    from latentsight.index.review import refit_threshold

    try:
        with st.spinner("Refitting the scorer on the reviewed normal set..." if refit_normals
                        else "Refitting the threshold..."):
            res = refit_threshold(home, model=models.get(scan.model_id),
                                  reviewer_note=f"dashboard, {who}", refit_normals=refit_normals)
        normals = (f" Normal set: {res.normals_added} false alarm(s) joined, "
                   f"{res.normals_removed} defect(s) left, {res.normal_set} images."
                   if res.refit_normals else "")
        st.success(f"{res.model}: threshold {res.old_threshold:.5f} -> {res.new_threshold:.5f} "
                   f"(errors on the reviews {res.errors_before} -> {res.errors_after}); new "
                   f"scans use it.{normals}")
    except LatentsightError as e:
        st.error(str(e))

fitted = loaders.scorer(home, scan.model_id)
mkey = loaders.model_key(home, scan.model_id)
flagged_sha = {results[i].sha256 for i in fl.order}
gen = core.index_generation(home, home.catalog.model())[0] if state.indexed else -1
MARKS = {"flagged": ["-", "defect", "false_alarm"], "unflagged": ["-", "missed"]}


def mark(result_id: int, key: str) -> None:
    value = st.session_state[key]
    try:
        home.catalog.set_review(result_id, None if value == "-" else value, who)
    except LatentsightError as e:
        st.session_state["review_error"] = str(e)


def row_of(i: int, kind: str) -> None:
    r = results[i]
    cols = st.columns([1, 1, 3])
    with cols[0]:
        thumb = core.scan_thumbnail(home, r.id)
        if thumb is not None:
            st.image(str(thumb), caption=f"score {r.score:.5f}", width="stretch")
    with cols[1]:
        img = loaders.heatmap(*loaders.home_location(), scan.model_id, mkey, r.path,
                              core.THUMB_SIZE, 1.0)
        what = "anomaly map" if fitted is not None else "reconstruction error"
        if img is not None:
            st.image(img, caption=what, width="stretch")
        else:
            st.caption("no heatmap for this model")
    with cols[2]:
        st.caption(r.path)
        rev = reviews.get(r.id)
        key = f"rev-{r.id}"
        options = MARKS[kind]
        st.session_state.setdefault(key, rev.mark if rev and rev.mark in options else "-")
        st.segmented_control("Review", options, key=key, on_change=mark, args=(r.id, key),
                             format_func=lambda m: {"-": "not reviewed", **core.REVIEW_LABELS}[m])
        if rev:
            st.caption(f"{core.REVIEW_LABELS[rev.mark]} · {rev.reviewer} · {rev.at:%Y-%m-%d %H:%M}")
        near = r.nearest_ids or (loaders.neighbors(*loaders.home_location(), r.id, gen, 8)
                                 if state.indexed else [])
        rows = {x.id: x for x in home.catalog.images(ids=near)}
        normal = [j for j in near if j in rows and rows[j].sha256 not in flagged_sha
                  and rows[j].sha256 != r.sha256][:4]
        if normal:
            st.markdown("Nearest normal images")
            for col, j in zip(st.columns(4), normal, strict=False):
                with col:
                    ui.card(home, j, f"#{j} · {rows[j].label or '-'}", key=f"n-{r.id}-{j}")


if st.session_state.get("review_error"):
    st.error(st.session_state.pop("review_error"))
flagged_list, unflagged_list = fl.order, fl.unflagged
tagged_note = ""
if tags:  # scan results are files: a result carries the tags of the catalog image it is
    tagged_sha = {r.sha256 for r in home.catalog.images(ids=sorted(
        home.catalog.tagged_ids(tags)))}
    flagged_list = [i for i in fl.order if results[i].sha256 in tagged_sha]
    unflagged_list = [i for i in fl.unflagged if results[i].sha256 in tagged_sha]
    tagged_note = f", {len(flagged_list)} tagged {', '.join(tags)}"
st.subheader(f"Flagged images ({fl.flagged}{tagged_note})")
show = st.slider("Show the top", 1, 50, 8, key="top")
if not fl.order:
    st.info(f"No image scores above the threshold {threshold:.5f}; lower it to see the most "
            "anomalous ones, or review the unflagged images below.")
elif not flagged_list:
    st.info(f"No flagged image carries the tag(s) {', '.join(tags)} (sidebar).")
for i in flagged_list[:show]:
    row_of(i, "flagged")

with st.expander(f"Unflagged images, most anomalous first ({len(unflagged_list)}): mark the "
                 "ones the scan missed"):
    show_un = st.slider("Show the top", 1, 50, 8, key="top_unflagged")
    for i in unflagged_list[:show_un]:
        row_of(i, "unflagged")
if fl.failed:
    with st.expander(f"{fl.failed} file(s) could not be scored"):
        st.dataframe([{"path": r.path, "error": r.error} for r in results if r.score is None],
                     hide_index=True)
