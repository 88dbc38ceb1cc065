"""Search: query by upload or by a catalog image, optionally by a region of it (a box);
results as a grid (the matching region drawn on each); CSV; browse below."""

import streamlit as st
from latentsight.dashboard import core, loaders, ui
from latentsight.embedder.errors import DecodeError, LatentsightError
from PIL import ImageDraw

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
    by_box = st.checkbox("Search by region (box)", key="by_box",
                         help="Match a region of the query against the tiles of every image "
                         "(needs: latentsight index build --local).")
    box = None
    if by_box:
        b1, b2 = st.columns(2)
        box = (b1.number_input("x", 0, value=0, key="box_x"),
               b2.number_input("y", 0, value=0, key="box_y"),
               b1.number_input("w", 1, value=32, key="box_w"),
               b2.number_input("h", 1, value=32, key="box_h"))


def boxed(path: str, box: list[int]):
    """A thumbnail of a catalog image with the matching region outlined."""
    from latentsight.embedder.images import decode_file
    from latentsight.index.paths import from_catalog

    px = decode_file(from_catalog(path), mode="RGB").pixels
    img = core.make_thumbnail(px)
    sx, sy = img.width / px.shape[1], img.height / px.shape[0]
    x, y, w, h = box
    ImageDraw.Draw(img).rectangle([x * sx, y * sy, (x + w) * sx - 1, (y + h) * sy - 1],
                                  outline=(255, 40, 40), width=2)
    return img


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
    try:
        hits = searcher.search(query_value, k=k,
                               **core.search_options(f["labels"], f["sources"], f["synthetic"]),
                               box=None if box is None else tuple(int(v) for v in box))
    except (LatentsightError, ValueError) as e:
        st.error(str(e))
        hits = None
    if hits is not None:
        st.subheader(f"{len(hits)} results")
        if f["tags"]:
            st.caption("Tags filter the browse grid below and the latent map; the search "
                       "itself filters by label, source and synthetic.")
        if not hits:
            st.info("No catalog image matches the filters.")
        for col, (rank, hit) in ui.grid(list(enumerate(hits, 1))):
            with col:
                caption = f"**{rank}. #{hit.id}** · {hit.label or '-'} · {hit.score:.3f}"
                if hit.box is not None:
                    st.image(boxed(hit.path, hit.box), width="stretch")
                    st.markdown(caption + f" · box {hit.box}")
                    st.caption(hit.path)
                else:
                    ui.card(home, hit.id, caption, detail=hit.path, synthetic=hit.synthetic,
                            key=f"hit-{rank}")
                st.button("Search from this", key=f"hit-{rank}", on_click=ui.set_query_id,
                          args=(hit.id,))
        st.download_button(
            "Download results (CSV)", key="csv", file_name="latentsight-search.csv",
            mime="text/csv",
            data=core.to_csv([{"rank": r, **h.as_dict()} for r, h in enumerate(hits, 1)],
                             ["rank", "id", "score", "label", "source", "synthetic", "path"]))

st.divider()
st.subheader("Browse the catalog")
st.caption("The sidebar's filters apply here too. Search from an image, or open it.")
ui.browse_grid(home, f, key="b")
