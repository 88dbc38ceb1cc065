"""Classes & synthesis: label counts with sparse classes, generated samples, GAN evaluation."""

import plotly.express as px
import streamlit as st
from latentsight.dashboard import core, loaders, ui

ui.follow_open()
st.title("Classes & synthesis")
home = loaders.home()
state = core.home_state(home)
if not ui.ready(state, need="images"):
    st.stop()
table = core.class_table(home)
if not table:
    st.info(f"No labeled images. Run: `latentsight ingest DIR --labels-from-folders "
            f"--home {state.root}`.")
    st.stop()

median_real = sorted(r["real"] for r in table)[len(table) // 2]
below = st.slider("A class is sparse below this many real images", 1, max(2, 2 * median_real),
                  max(1, median_real // 2), key="sparse_below")
table = core.class_table(home, sparse_below=below)
sparse = [r["label"] for r in table if r["sparse"]]
bars = [{"label": r["label"], "images": r[kind], "kind": kind + (" (sparse)" if r["sparse"]
                                                                   and kind == "real" else "")}
        for r in table for kind in ("real", "synthetic")]
fig = px.bar(bars, x="label", y="images", color="kind", height=360,
             color_discrete_map={"real": "#4c78a8", "real (sparse)": "#e45756",
                                 "synthetic": "#72b7b2"})
fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), barmode="stack",
                  legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
st.plotly_chart(fig, key="counts")
if sparse:
    st.warning(f"Sparse classes: {', '.join(sparse)}.")
else:
    st.success("No class is sparse at this threshold.")

st.subheader("Synthesize")
ui.synthesizer(home, state, sparse)

st.subheader("Generated samples")
made = [r for r in table if r["synthetic"]]
if not made:
    st.caption("No synthetic images in the catalog yet.")
for r in made:
    st.markdown(f"**{r['label']}** · {r['synthetic']} synthetic, {r['real']} real")
    for col, i in ui.grid(core.synthetic_ids(home, r["label"], ui.COLUMNS)):
        with col:
            ui.card(home, i, f"#{i}", synthetic=True, key=f"syn-{i}")

st.subheader("GAN evaluation")
gens = core.generators(home)
if not gens:
    st.caption("No generator trained yet (see `latentsight gan --help` when available).")
for g in gens:
    with st.expander(f"{g.name} ({g.kind})", expanded=g is gens[-1]):
        flat = core.flat_metrics(g.metrics)
        if flat:
            st.dataframe([flat], hide_index=True)
        for key, value in (g.metrics or {}).items():
            if isinstance(value, dict | list) and key != "history":
                st.markdown(f"**{key}**")
                st.dataframe(value if isinstance(value, list) else [value], hide_index=True)
