"""Status: catalog size, ingest failures, models and training curves, index health, ingest."""

import plotly.graph_objects as go
import streamlit as st
from latentsight.dashboard import core, loaders
from latentsight.embedder.errors import LatentsightError
from latentsight.index import manager

st.title("Status")
home = loaders.home()
if st.session_state.get("ingest_report"):  # shown after the rerun that refreshed the counts
    kind, text, details = st.session_state.pop("ingest_report")
    getattr(st, kind)(text)
    for d in details:
        st.caption(d)
state = core.home_state(home)
models = home.catalog.models()
failures = home.catalog.failures()

c = st.columns(4)
c[0].metric("Images", f"{state.images:,}")
c[1].metric("Labels", len([k for k in home.catalog.label_counts() if k is not None]))
c[2].metric("Models", len(models))
c[3].metric("Ingest failures", len(failures))
step = state.first_step()
if step:
    st.info(step)

with st.form("ingest"):
    st.markdown("**Ingest a folder**")
    folder = st.text_input("Folder on the server (absolute path)", key="ingest_folder")
    a, b, d = st.columns(3)
    from_folders = a.checkbox("Labels from folder names", value=True, key="ingest_lff")
    label = b.text_input("Or one label for all", key="ingest_label")
    source = d.text_input("Source tag", value="dashboard", key="ingest_source")
    go_ingest = st.form_submit_button("Ingest")
if go_ingest:
    bar = st.progress(0.0, text="listing files...")
    try:
        rep = core.ingest_folder(
            home, folder, labels_from_folders=from_folders and not label.strip(),
            label=label.strip() or None, source=source.strip() or "dashboard",
            on_progress=lambda done, total: bar.progress(
                done / total if total else 1.0, text=f"{done}/{total} files"),
        )
        n_files = rep["added"] + rep["duplicates"] + rep["skipped"] + len(rep["failed"])
        text = (f"added {rep['added']}, duplicates {rep['duplicates']}, failed "
                f"{len(rep['failed'])}, skipped (not images) {rep['skipped']}, added to index "
                f"{rep['indexed']}")
        kind = "success" if n_files else "warning"
        if not n_files:
            text = f"{folder.strip()}: no files found in the folder; nothing ingested."
        st.session_state["ingest_report"] = (
            kind, text, [f"failed: {f['path']}: {f['error']}" for f in rep["failed"]])
        st.rerun()  # the counts above are the catalog's new ones
    except LatentsightError as e:
        st.error(str(e))

st.subheader("Models")
if not models:
    st.caption(f"No model yet. Run: `latentsight train --home {state.root}`.")
else:
    st.dataframe([{"name": m.name, "kind": m.kind, "role": m.role, "active": m.active,
                   "created": m.created_at, **core.flat_metrics(m.metrics)} for m in models],
                 hide_index=True)
    active = next((m for m in models if m.active), models[-1])
    pick = st.selectbox("Training curve of", models, index=models.index(active), key="curve",
                        format_func=lambda m: m.name + (" (active)" if m.active else ""))
    hist = core.history(pick)
    if hist:
        fig = go.Figure()
        for key in ("train_loss", "val_loss"):
            if any(key in e for e in hist):
                fig.add_scatter(x=[e["epoch"] for e in hist], y=[e.get(key) for e in hist],
                                mode="lines+markers", name=key)
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="epoch",
                          yaxis_title="loss",
                          legend=dict(orientation="h", yanchor="top", y=-0.25, x=0))
        st.plotly_chart(fig, key="curve_chart")
    else:
        st.caption("This model has no training history.")

st.subheader("Index health")
health = []
for m in models:
    if m.role != "encoder" or home.catalog.index_for(m.id) is None:
        continue
    try:
        s = manager.status(home, m)
        health.append({"model": m.name, "ok": s.ok, "vectors": s.ntotal,
                       "catalog images": s.catalog_images, "missing": s.missing,
                       "extra": s.extra, "spec": s.spec, "generation": s.generation})
    except LatentsightError as e:
        health.append({"model": m.name, "ok": False, "error": str(e)})
if health:
    st.dataframe(health, hide_index=True)
    for h in health:
        if not h["ok"]:
            st.warning(f"Index of {h['model']} is out of line with the catalog. Run: "
                       f"`latentsight index build --model {h['model']} --home {state.root}`.")
else:
    st.caption("No index yet.")

st.subheader("Ingest failures")
if failures:
    st.dataframe([{"path": f.path, "error": f.error_class, "reason": f.message, "at": f.at}
                  for f in failures], hide_index=True)
else:
    st.caption("None.")
