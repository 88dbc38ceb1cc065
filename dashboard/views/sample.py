"""Sample: one catalog image full size, its metadata and tags, its anomaly heatmap when a scan
scored it, its nearest normal images, and search from it. Opened as `sample?id=ID`."""

import streamlit as st
from latentsight.dashboard import core, loaders, ui
from latentsight.embedder.errors import LatentsightError
from latentsight.embedder.images import decode_file
from latentsight.training.anomaly import is_background

ui.follow_open()
home = loaders.home()
image_id = ui.url_int("id")
if image_id is None:
    st.title("Sample")
    st.info("Open an image from Search, Anomalies, the latent map or a grid ('Open').")
    st.stop()
try:
    row = home.catalog.image(image_id)
except LatentsightError as e:
    st.title("Sample")
    st.error(str(e))
    st.stop()
st.title(f"#{row.id} · {row.label or 'no label'}" + (" · synthetic" if row.synthetic else ""))

# the scan that scored this image: the one in the URL, else the newest that scored it
result = None
rid = ui.url_int("result")
if rid is not None:
    result = home.catalog.scan_result(rid)
if result is None or result.sha256 != row.sha256 or result.score is None:
    hit = home.catalog.latest_scores([row.sha256]).get(row.sha256)
    result = home.catalog.scan_result(hit[1]) if hit else None
scan = home.catalog.scan(result.scan_id) if result is not None else None

left, right = st.columns([3, 2])
with left:
    try:
        pixels = decode_file(row.path, mode="RGB").pixels
    except (LatentsightError, OSError) as e:
        st.error(f"{row.path}: cannot read the file ({e}).")
        st.stop()
    shown = pixels
    if scan is not None:
        a, b = st.columns(2)
        on = a.toggle("Anomaly heatmap", value=True, key="heat_on")
        opacity = b.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="heat_opacity", disabled=not on)
        if on:
            img = loaders.heatmap(*loaders.home_location(), scan.model_id,
                                  loaders.model_key(home, scan.model_id), row.path,
                                  max(pixels.shape[:2]), float(opacity))
            if img is None:
                st.caption("The scan's model cannot draw a heatmap for this image.")
            shown = img if img is not None else pixels
    st.image(shown, caption=f"{row.width}×{row.height} {row.format} · {row.path}",
             width="stretch")
with right:
    if scan is not None:
        flagged = result.score > scan.threshold
        st.metric(f"Anomaly score (scan #{scan.id})", f"{result.score:.5f}",
                  delta="flagged" if flagged else "not flagged",
                  delta_color="inverse" if flagged else "off")
        rev = home.catalog.reviews(scan_id=scan.id).get(result.id)
        if rev:
            st.caption(f"Reviewed: {core.REVIEW_LABELS[rev.mark]} by {rev.reviewer}, "
                       f"{rev.at:%Y-%m-%d %H:%M}")
    meta = {k: v for k, v in row.as_dict().items() if k not in ("path",)}
    st.dataframe([{"field": k, "value": str(v)} for k, v in meta.items()], hide_index=True)
    tags = home.catalog.tags([row.id]).get(row.id, [])
    st.markdown("**Tags:** " + (" ".join(f":blue-badge[{t}]" for t in tags) or "none"))
    with st.form("tag_form", clear_on_submit=True):
        new_tag = st.text_input("Add a tag", key="new_tag")
        if st.form_submit_button("Tag"):
            try:
                home.catalog.add_tag([row.id], new_tag)
                st.rerun()
            except LatentsightError as e:
                st.error(str(e))
    if tags:
        gone = st.selectbox("Remove a tag", ["-", *tags], key="rm_tag")
        if gone != "-" and st.button("Remove", key="rm_tag_go"):
            home.catalog.remove_tag([row.id], gone)
            st.rerun()
    if st.button("Search from this", key="search_from", type="primary"):
        ui.open_in_search(row.id)

st.subheader("Search this region")
st.caption("Draw a box on the image (or type it) and find the catalog images with a matching "
           "region; each result shows where its match lies (needs `latentsight index build "
           "--local`).")
region_key = f"rbox-{row.id}"
pick, run = st.columns([2, 3])
with pick:
    region = ui.box_picker(pixels, region_key)
with run:
    rk = st.slider("Results", 1, 50, 12, key="region_k")
    go_region = st.button("Search this region", key="region_go", type="primary")
    if st.button("Open in Search", key="region_in_search",
                 help="The search page with this image and box (a URL to share)"):
        ui.set_query_id(row.id)
        st.session_state["by_box"] = True
        st.switch_page(ui.SEARCH_PAGE, query_params={"q": row.id,
                                                     "box": ",".join(map(str, region))})
if go_region:
    st.session_state["region_hits"] = None
    searcher_r = loaders.searcher(home) if core.home_state(home).indexed else None
    if searcher_r is None:
        st.error("No index yet: run `latentsight index build --local` first.")
    else:
        try:
            hits = core.search_hits(searcher_r, row.id, k=int(rk), box=region)
            st.session_state["region_hits"] = (row.id, region, hits)
        except (LatentsightError, ValueError) as e:
            st.error(str(e))
found = st.session_state.get("region_hits")
if found and found[0] == row.id:
    st.markdown(f"**{len(found[2])} results for region {list(found[1])}**")
    ui.region_results(home, found[2], key="region")

st.subheader("Nearest normal images")
state = core.home_state(home)
searcher = loaders.searcher(home) if state.indexed else None
if searcher is None:
    st.caption("No index yet: run `latentsight index build` to see the nearest images.")
else:
    normal = None
    if scan is not None:
        m = next((m for m in home.catalog.models() if m.id == scan.model_id), None)
        normal = ((m.metrics or {}).get("scoring") or {}).get("normal_label") if m else None
        normal = None if m is not None and is_background(m) else normal  # every image
    try:
        hits = searcher.search(row.id, k=ui.COLUMNS + 1, label=normal)
    except LatentsightError as e:
        st.error(str(e))
        hits = []
    hits = [h for h in hits if h.id != row.id][: ui.COLUMNS]
    if normal:
        st.caption(f"Real images labeled {normal!r} (the scan model's normal class).")
    for col, h in ui.grid(hits):
        with col:
            ui.card(home, h.id, f"#{h.id} · {h.label or '-'} · {h.score:.3f}",
                    synthetic=h.synthetic, key=f"nn-{h.id}")
