"""Local (tile) vectors: search by region, and their life with the images they come from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from latentsight.index.errors import StoreError
from latentsight.index.local import Geometry, choose_geometry, has_local, load_local
from PIL import Image

from tests.cli import run
from tests.conftest import PRE_ISSUE_14
from tests.imagegen import texture

W, H = 96, 64  # not square: tiles are cut at native resolution, never squashed


def _overlap(a, b) -> int:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))


def write_defects(root: Path, n: int, seed: int) -> dict[str, tuple[int, int, int, int]]:
    """n faint stripe backgrounds, each with a 24x24 patch of bright or dark stripes (the label)
    in a direction of its own;
    returns file name -> the patch's box."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for i in range(n):
        kind = ("bright", "dark")[i % 2]
        bg = texture("stripes_h", rng, W)[:H, :W].astype(np.float64)
        img = np.clip(128 + (bg - 128) * 0.3, 0, 255).astype(np.uint8)  # a faint background
        x, y = int(rng.integers(0, W - 24)), int(rng.integers(0, H - 24))
        yy, xx = np.mgrid[0:24, 0:24]
        angle = np.pi * i / n  # a different stripe direction in every image
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / 12)
        patch = (stripes + 1) * 60 + (120 if kind == "bright" else 0)
        img[y : y + 24, x : x + 24] = patch.astype(np.uint8)
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(d / f"{seed}-{i:03d}.png")
        boxes[f"{seed}-{i:03d}.png"] = (x, y, 24, 24)
    return boxes


@pytest.fixture(scope="module")
def local_home(tmp_path_factory):
    """A home of 16 patched images, a tiny AE, its index with local vectors."""
    import torch
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.manager import build_index
    from latentsight.training.train import TrainConfig, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("local")
    boxes = write_defects(root / "imgs", 16, seed=0)
    home = Home(root / "home")
    ingest_paths(home, [root / "imgs"], labels_from_folders=True, progress=False, workers=0)
    # the recipe before issue 14: these labels differ by brightness, which the default's
    # standardized pixel PCA and brightness jitter leave out (self-first 12 of 16, not 15)
    cfg = TrainConfig(model="ae", epochs=1, batch_size=16, name="loc-ae", device="cpu",
                      aux="none", model_config={"image_size": 32, "depth": 3, "latent_dim": 16,
                                                "width": 8}, **PRE_ISSUE_14)
    train(home, cfg, progress=False)
    build_index(home, home.catalog.model("loc-ae"), device="cpu", progress=False, workers=0,
                local=True)
    return home, boxes, root


def test_geometry_comes_from_the_images_and_tiles_fit():
    g = choose_geometry([(600, 240)] * 3, image_size=64)
    assert g.tiles == (120, 60)
    boxes = g.boxes(600, 240)
    assert all(w == h and x + w <= 600 and y + h <= 240 for x, y, w, h in boxes)
    assert {b[2] for b in boxes} == {120, 60}
    assert Geometry.from_dict(json.loads(json.dumps(g.as_dict()))) == g


def test_box_search_returns_the_source_image_first_with_an_overlapping_box(local_home):
    from latentsight.index.search import Searcher

    home, boxes, _root = local_home
    s = Searcher(home, "loc-ae", device="cpu")
    rows = home.catalog.images()
    first = 0
    for row in rows:
        box = boxes[Path(row.path).name]
        hits = s.search(row.id, k=3, box=box)
        assert len({h.id for h in hits}) == len(hits) == 3  # one hit per image
        if hits[0].id == row.id:
            first += 1
            assert _overlap(hits[0].box, box) > 0
    # a 1-epoch toy encoder: measured 16 of 16 first; allow a few near-identical patches
    assert first >= 12, f"the source image came first for {first} of {len(rows)} crops"
    # label filter inside the region search
    row = rows[0]
    other = "bright" if row.label == "dark" else "dark"
    hits = s.search(row.id, k=5, box=boxes[Path(row.path).name], label=other)
    assert hits and all(h.label == other for h in hits)


def test_cli_search_box_json_and_bad_box(local_home):
    home, boxes, _root = local_home
    row = home.catalog.images()[3]
    box = boxes[Path(row.path).name]
    out = json.loads(run("search", str(row.id), "--box", ",".join(map(str, box)), "--k", "2",
                         "--json", "--home", str(home.root), "--device", "cpu"))
    assert out[0]["id"] == row.id and len(out[0]["box"]) == 4
    assert _overlap(out[0]["box"], box) > 0
    run("search", str(row.id), "--box", "1,2,3", "--home", str(home.root), code=2)
    run("search", str(row.id), "--box", f"0,0,{W + 1},10", "--home", str(home.root), code=2)


def test_local_vectors_follow_ingest_delete_rebuild_and_verify(local_home):
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.manager import build_index, delete_images, status

    home, _boxes, root = local_home
    model = home.catalog.model("loc-ae")
    before = load_local(home, model).store.ntotal
    new = write_defects(root / "more", 2, seed=7)
    rep = ingest_paths(home, [root / "more"], labels_from_folders=True, progress=False,
                       workers=0)
    st = status(home, model)
    assert st.local and st.local_missing == 0 and st.local_ntotal > before and st.ok
    from latentsight.index.search import Searcher

    new_id = rep.ids[0]
    name = Path(home.catalog.image(new_id).path).name
    hits = Searcher(home, "loc-ae", device="cpu").search(new_id, k=1, box=new[name])
    assert hits[0].id == new_id

    out = delete_images(home, rep.ids)
    assert out["local_vectors_removed"] == st.local_ntotal - before
    st = status(home, model)
    assert st.ok and st.local_ntotal == before

    # damage: drop one image's tiles behind the catalog's back -> verify says so -> rebuild
    local = load_local(home, model)
    victim = int(home.catalog.image_ids()[0])
    ids = local.store.ids()
    local.store.remove(ids[(ids >> 16) == victim])
    local.save(home, model)
    st = status(home, model)
    assert st.local_missing == 1 and not st.ok
    out = run("index", "verify", "--home", str(home.root), code=1)
    assert "local vectors" in out
    run("index", "rebuild", "--home", str(home.root), "--device", "cpu", "--workers", "0")
    st = status(home, model)
    assert st.ok and st.local_ntotal == before
    build_index(home, model, device="cpu", progress=False, workers=0)  # keeps them
    assert has_local(home, model)


def test_an_index_without_local_vectors_keeps_working_and_says_how_to_add_them(trained_home):
    from latentsight.index.manager import status
    from latentsight.index.search import Searcher

    model = trained_home.catalog.model("test-ae")
    assert not has_local(trained_home, model)
    s = Searcher(trained_home, "test-ae", device="cpu")
    assert len(s.search(1, k=3)) == 3
    with pytest.raises(StoreError, match="index build --local"):
        s.search(1, k=3, box=(0, 0, 16, 16))
    assert status(trained_home, model).ok
    res = run("search", "1", "--box", "0,0,16,16", "--home", str(trained_home.root),
              "--device", "cpu", code=2)
    del res
    out = run("index", "verify", "--home", str(trained_home.root))
    assert "latentsight index build --local" in out


def test_anomaly_vector_embeds_the_most_anomalous_tile(local_home):
    """With a map that is hot on the pasted patch, the anomaly-weighted vector is the tile
    vector of a tile over the patch; tile_anomaly is each box's mean of the map."""
    from latentsight.embedder.images import decode_file
    from latentsight.index.local import anomaly_vector, default_sides, embed_tiles, tile_anomaly
    from latentsight.index.manager import load_encoder
    from latentsight.index.paths import from_catalog

    home, boxes, _root = local_home
    enc = load_encoder(home, home.catalog.model("loc-ae"), "cpu")
    row = home.catalog.images()[0]
    px = decode_file(from_catalog(row.path)).pixels
    x, y, w, h = boxes[Path(row.path).name]
    amap = np.zeros(px.shape, np.float32)
    amap[y : y + h, x : x + w] = 1.0
    geo = choose_geometry([(W, H)], enc.image_size)
    tiles = geo.boxes(W, H)
    means = tile_anomaly(amap, tiles)
    bx, by, bw, bh = tiles[3]
    assert means[3] == pytest.approx(amap[by : by + bh, bx : bx + bw].mean())
    vec, used = anomaly_vector(enc, px, amap, geo, where="tile", scales="best")
    assert _overlap(used[0], (x, y, w, h)) > 0 and means[tiles.index(used[0])] == means.max()
    one = embed_tiles(enc, px, used)[0]
    np.testing.assert_allclose(vec, one / np.linalg.norm(one), rtol=1e-5, atol=1e-6)
    vec, used = anomaly_vector(enc, px, amap, geo, scales="each")  # a square on the peak, each side
    sides = default_sides(geo)  # the geometry's tiles and half the finest
    assert sides == [*geo.tiles, geo.tiles[-1] // 2]
    assert len(used) == len(sides) and vec.shape == (len(sides) * len(one),)
    assert all(_overlap(b, (x, y, w, h)) >= min(b[2], w) * min(b[2], h) // 2 for b in used)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="anomaly map"):
        anomaly_vector(enc, px, amap[:-1], geo)


def test_anomaly_weighted_vectors_are_indexed_searched_and_follow_deletes(local_home):
    """`build_anomaly` stores one anomaly-weighted vector per image (a detector fitted on
    patch-free backgrounds); a search by anomaly then uses them: the query image comes
    first with a box on its patch; deleting an image drops its vector; asking for them
    where they do not fit says how to build them."""
    from latentsight.embedder.scoring import DEFAULT_SCORER, make_scorer
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.local import build_anomaly, has_anomaly, load_anomaly
    from latentsight.index.manager import delete_images, load_encoder
    from latentsight.index.search import Searcher

    home, boxes, root = local_home
    model = home.catalog.model("loc-ae")
    enc = load_encoder(home, model, "cpu")
    rng = np.random.default_rng(3)
    normals = [np.clip(128 + (texture("stripes_h", rng, W)[:H, :W] - 128.0) * 0.3, 0,
                       255).astype(np.uint8) for _ in range(8)]
    scorer = make_scorer(DEFAULT_SCORER, enc).fit(normals[:3], reference=normals[3:])
    index = build_anomaly(home, model, enc, scorer)
    assert has_anomaly(home, model) and index.store.ntotal == home.catalog.count_images()
    assert index.scan_model == "" and set(index.boxes) == set(home.catalog.image_ids())
    s = Searcher(home, "loc-ae", device="cpu")
    rows = home.catalog.images()
    on_patch = 0
    for row in rows[:6]:
        hits = s.search(row.id, k=3, anomaly=scorer)
        assert hits[0].id == row.id and len({h.id for h in hits}) == 3  # its own vector
        assert hits[0].box is not None and s.last_query_box == tuple(hits[0].box)
        on_patch += _overlap(hits[0].box, boxes[Path(row.path).name]) > 0
    assert on_patch >= 4, f"the anomalous square was on the patch in {on_patch} of 6"
    # named scanning model that is not the one they were built under: tiles, or an error
    with pytest.raises(StoreError, match="index build --anomaly"):
        s.search(rows[0].id, k=3, anomaly="no-such-scan", weighted=True)
    # follows ingest (a scorer object cannot embed new images: they are left out, said so)
    # and delete
    write_defects(root / "anomaly-more", 1, seed=11)
    rep = ingest_paths(home, [root / "anomaly-more"], labels_from_folders=True, progress=False,
                       workers=0)
    delete_images(home, [rows[0].id, *rep.ids])
    after = load_anomaly(home, model)
    assert after.store.ntotal == len(rows) - 1 and rows[0].id not in after.boxes
    assert rows[0].id not in set(after.store.ids().tolist())
    hits = s.search(rows[1].id, k=3, anomaly=scorer)
    assert hits[0].id == rows[1].id and rows[0].id not in {h.id for h in hits}


def test_cli_index_build_anomaly_and_search_with_a_scanning_model(anomaly_home, tmp_path):
    """`index build --anomaly SCAN` on a copy of the scanning home: one vector per image,
    `search --anomaly SCAN --weighted --json` finds the query first with a box, and an
    image ingested and synced gets its vector from the named scanning model."""
    import shutil

    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.local import load_anomaly
    from latentsight.index.manager import sync_index

    root = tmp_path / "home"
    shutil.copytree(anomaly_home.root, root)
    args = ["--home", str(root), "--device", "cpu"]
    out = json.loads(run("index", "build", "--model", "scan-test", "--anomaly", "scan-test",
                         "--workers", "0", "--json", *args))
    home = Home(root)
    n = home.catalog.count_images()
    assert out["anomaly_ntotal"] == n and out["anomaly_model"] == "scan-test"
    qid = home.catalog.images(labels=["checker"])[0].id
    hits = json.loads(run("search", str(qid), "--anomaly", "scan-test", "--weighted", "--k",
                          "3", "--model", "scan-test", "--json", *args))
    assert hits[0]["id"] == qid and len(hits[0]["box"]) == 4
    # eval retrieval --anomaly reads the stored vectors; computed afresh they score the same
    ev = json.loads(run("eval", "retrieval", "--model", "scan-test", "--anomaly", "scan-test",
                        "--json", *args))
    assert ev["anomaly"]["vectors"] == "index" and ev["anomaly"]["n"] == ev["n"] == n
    assert set(ev["anomaly"]["per_label"]) == {"good", "checker"}
    from latentsight.training.evaluate import evaluate_retrieval

    fresh = evaluate_retrieval(home, model="scan-test", anomaly="scan-test", use_index=False,
                               device="cpu", progress=False, baseline=False)["anomaly"]
    assert fresh["vectors"] == "computed"
    for key in ("precision_at_k", "macro_precision_at_k", "map", "macro_map"):
        assert fresh[key] == pytest.approx(ev["anomaly"][key], abs=1e-6), key
    text = run("eval", "retrieval", "--model", "scan-test", "--anomaly", "scan-test", *args)
    assert "anomaly-weighted under scan-test" in text and "read from the index" in text
    extra = tmp_path / "extra"
    extra.mkdir()
    flipped = np.ascontiguousarray(np.asarray(Image.open(from_row(home, qid)))[:, ::-1])
    Image.fromarray(flipped).save(extra / "flipped.png")  # new content: not a duplicate
    rep = ingest_paths(home, [extra], label="checker", progress=False, workers=0)
    assert rep.added == 1
    sync_index(home, home.catalog.model("scan-test"))  # scan-test is not the active model
    index = load_anomaly(home, home.catalog.model("scan-test"))
    assert index.store.ntotal == n + 1 and index.scan_model == "scan-test"


def from_row(home, image_id: int) -> str:
    from latentsight.index.paths import from_catalog

    return from_catalog(home.catalog.image(image_id).path)
