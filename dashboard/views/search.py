"""Search: query by upload or by a catalog image, optionally by a region of it (a box);
results as a grid (the matching region drawn on each); CSV; browse below."""

import streamlit as st
from latentsight.dashboard import core, loaders, ui
from latentsight.embedder.errors import DecodeError, LatentsightError

ui.follow_open()
st.title("Search")
home = loaders.home()
if not ui.ready(core.home_state(home)):
    st.stop()
searcher = loaders.searcher(home)
if searcher is None:
    st.stop()
f = ui.filters(home)
with st.sidebar:
    k = st.slider("Results (k)", 1, 50, 12, key="k")
    if "by_box" not in st.session_state and st.query_params.get("box"):
        st.session_state["by_box"] = True
    by_box = st.checkbox("Search by region (box)", key="by_box",
                         help="Match a region of the query against the tiles of every image "
                         "(needs: latentsight index build --local). Draw the box on the "
                         "query or type it.")


def query_pixels(q: dict):
    """The query's decoded pixels at full size (None, with a message, when unreadable)."""
    if q["kind"] == "upload":
        return q["pixels"]
    from latentsight.embedder.images import decode_file
    from latentsight.index.paths import from_catalog

    try:
        return decode_file(from_catalog(home.catalog.image(q["id"]).path), mode="RGB").pixels
    except (LatentsightError, OSError) as e:
        st.error(f"Cannot read query #{q['id']}: {e}")
        return None


upload_tab, id_tab = st.tabs(["Upload an image", "A catalog id"])
with upload_tab:
    up = st.file_uploader(f"Query image (up to {core.MAX_UPLOAD_MB} MB)", key="upload",
                          max_upload_size=core.MAX_UPLOAD_MB)
    if up is not None and st.session_state.get("upload_seen") != up.file_id:
        st.session_state["upload_seen"] = up.file_id
        try:
            pixels = core.decode_upload(up.getvalue(), up.name)
            st.session_state["query"] = {"kind": "upload", "name": up.name,
                                         "bytes": up.getvalue(), "pixels": pixels}
            st.session_state.pop("upload_error", None)
        except DecodeError as e:
            st.session_state["upload_error"] = f"Cannot use {e.path} as a query: {e.reason}."
            st.session_state["query"] = None  # no stale results under the error
    if up is None:
        st.session_state.pop("upload_error", None)
    if st.session_state.get("upload_error"):
        st.error(st.session_state["upload_error"])
with id_tab:
    c1, c2 = st.columns([1, 3])
    by_id = c1.number_input("Catalog id", min_value=1, step=1, value=None, key="by_id")
    if c2.button("Search by id", key="search_by_id") and by_id is not None:
        if home.catalog.images(ids=[by_id]):
            ui.set_query_id(by_id)
        else:
            st.error(f"No image with id {by_id} in the catalog.")

q = ui.query()
ui.set_url(q=q["id"] if q and q["kind"] == "id" else None)
if q is None:
    if not st.session_state.get("upload_error"):
        st.info("Upload an image, give a catalog id, or pick one from the catalog below.")
else:
    st.subheader("Query")
    if q["kind"] == "id":
        with st.columns(ui.COLUMNS)[0]:
            ui.card(home, q["id"], f"#{q['id']}", key="query")
    else:
        st.image(core.make_thumbnail(q["pixels"]), caption=q["name"])
    query_value = q["id"] if q["kind"] == "id" else q["bytes"]
    box = None
    if by_box:
        st.markdown("**Region of the query to search for**")
        with st.columns([2, 3])[0]:
            pixels = query_pixels(q)
            box = ui.box_picker(pixels, "box") if pixels is not None else None
    ui.set_url(box=",".join(str(v) for v in box) if box is not None else None)
    try:
        hits = core.search_hits(searcher, query_value, k=k, tags=f["tags"], box=box,
                                **core.search_options(f["labels"], f["sources"], f["synthetic"]))
    except (LatentsightError, ValueError) as e:
        st.error(str(e))
        hits = None
    if hits is not None:
        st.subheader(f"{len(hits)} results" + (f" in region {list(box)}" if box else ""))
        if f["tags"]:
            st.caption(f"Tagged {', '.join(f['tags'])} only (sidebar).")
        if box is not None:
            ui.region_results(home, hits, key="hit")
        else:
            if not hits:
                st.info("No catalog image matches the filters.")
            for col, (rank, hit) in ui.grid(list(enumerate(hits, 1))):
                with col:
                    ui.card(home, hit.id, f"**{rank}. #{hit.id}** · {hit.label or '-'} · "
                            f"{hit.score:.3f}", detail=hit.path, synthetic=hit.synthetic,
                            key=f"hit-{rank}")
                    st.button("Search from this", key=f"hit-{rank}", on_click=ui.set_query_id,
                              args=(hit.id,))
        st.download_button(
            "Download results (CSV)", key="csv", file_name="latentsight-search.csv",
            mime="text/csv",
            data=core.to_csv([{"rank": r, **h.as_dict()} for r, h in enumerate(hits, 1)],
                             ["rank", "id", "score", "label", "source", "synthetic", "path",
                             "box"]))

st.divider()
st.subheader("Browse the catalog")
st.caption("The sidebar's filters apply here too. Search from an image, or open it.")
ui.browse_grid(home, f, key="b")
