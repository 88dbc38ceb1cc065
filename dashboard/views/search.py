"""Search: query by upload or by a catalog image; results as a grid; CSV download."""

import streamlit as st
from latentsight.dashboard import core, loaders, ui
from latentsight.embedder.errors import DecodeError, LatentsightError

st.title("Search")
home = loaders.home()
if not ui.ready(core.home_state(home)):
    st.stop()
searcher = loaders.searcher(home)
if searcher is None:
    st.stop()
labels, sources = core.filter_values(home)

with st.sidebar:
    k = st.slider("Results (k)", 1, 50, 12, key="k")
    f_labels = st.multiselect("Label", labels, key="f_labels")
    f_sources = st.multiselect("Source", sources, key="f_sources")
    f_synth = ui.synthetic_choice("f_synth")

upload_tab, browse_tab = st.tabs(["Upload an image", "Pick from the catalog"])
with upload_tab:
    up = st.file_uploader(f"Query image (up to {core.MAX_UPLOAD_MB} MB)", key="upload",
                          max_upload_size=core.MAX_UPLOAD_MB)
    if up is not None and st.session_state.get("upload_seen") != up.file_id:
        st.session_state["upload_seen"] = up.file_id
        try:
            pixels = core.decode_upload(up.getvalue(), up.name)
            st.session_state["query"] = {"kind": "upload", "name": up.name,
                                         "bytes": up.getvalue(), "pixels": pixels}
        except DecodeError as e:
            st.session_state["upload_error"] = f"Cannot use {e.path} as a query: {e.reason}."
    if up is None:
        st.session_state.pop("upload_error", None)
    if st.session_state.get("upload_error"):
        st.error(st.session_state["upload_error"])
with browse_tab:
    b_labels = st.multiselect("Label", labels, key="b_labels")
    b_sources = st.multiselect("Source", sources, key="b_sources")
    b_synth = ui.synthetic_choice("b_synth")
    per_page = 2 * ui.COLUMNS
    rows, total = core.browse(home, labels=b_labels, sources=b_sources, synthetic=b_synth,
                              offset=0, limit=0)
    pages = max(1, -(-total // per_page))
    page = st.number_input(f"Page (of {pages}, {total} images)", 1, pages, 1, key="b_page")
    rows, _ = core.browse(home, labels=b_labels, sources=b_sources, synthetic=b_synth,
                          offset=(page - 1) * per_page, limit=per_page)
    for col, row in ui.grid(rows):
        with col:
            ui.card(home, row.id, f"#{row.id} · {row.label or '-'}")
            st.button("Search", key=f"pick-{row.id}", on_click=ui.set_query_id, args=(row.id,))
    c1, c2 = st.columns([1, 3])
    by_id = c1.number_input("Or a catalog id", min_value=1, step=1, value=None, key="by_id")
    if c2.button("Search by id", key="search_by_id") and by_id is not None:
        if by_id in {r.id for r in home.catalog.images(ids=[by_id])}:
            ui.set_query_id(by_id)
        else:
            st.error(f"No image with id {by_id} in the catalog.")

q = ui.query()
if q is None:
    st.info("Upload an image or pick one from the catalog to search.")
    st.stop()

st.subheader("Query")
if q["kind"] == "id":
    with st.columns(ui.COLUMNS)[0]:
        ui.card(home, q["id"], f"#{q['id']}")
else:
    st.image(core.make_thumbnail(q["pixels"]), caption=q["name"])
try:
    hits = core.search(searcher, q["id"] if q["kind"] == "id" else q["bytes"], k=k,
                       labels=f_labels, sources=f_sources, synthetic=f_synth)
except LatentsightError as e:
    st.error(str(e))
    st.stop()

st.subheader(f"{len(hits)} results")
if not hits:
    st.info("No catalog image matches the filters.")
for col, (rank, hit) in ui.grid(list(enumerate(hits, 1))):
    with col:
        ui.card(home, hit.id, f"**{rank}. #{hit.id}** · {hit.label or '-'} · {hit.score:.3f}",
                detail=hit.path)
        st.button("Search from this", key=f"hit-{rank}", on_click=ui.set_query_id, args=(hit.id,))
st.download_button("Download results (CSV)", key="csv",
                   data=core.to_csv([{"rank": r, **h.as_dict()} for r, h in enumerate(hits, 1)],
                                    ["rank", "id", "score", "label", "source", "path"]),
                   file_name="latentsight-search.csv", mime="text/csv")
