"""The search page's region search: a typed box, the match box drawn on each result."""

from __future__ import annotations

import shutil

from latentsight.index.home import Home
from latentsight.index.manager import build_index

from tests.dashboard.test_app import open_page, ranked_ids, texts


def test_box_search_says_how_to_add_tiles_then_finds_the_source(monkeypatch, tmp_path,
                                                                 trained_home):
    trained_home.catalog.engine.dispose()
    shutil.copytree(trained_home.root, tmp_path / "home")
    home = Home(tmp_path / "home")
    target = home.catalog.image_ids()[5]
    state = {"query": {"kind": "id", "id": target}, "by_box": True, "box_x": 0, "box_y": 0,
             "box_w": 32, "box_h": 32}
    at = open_page(monkeypatch, home, "views/search.py", **state)
    assert "latentsight index build --local" in texts(at)
    build_index(home, home.catalog.model("test-ae"), device="cpu", progress=False, workers=0,
                local=True)
    at = open_page(monkeypatch, home, "views/search.py", **state)
    assert ranked_ids(at)[0] == target
    assert "box [" in texts(at)
    # the sample view: a box on the full-size image (typed here; the browser test draws one)
    from streamlit.testing.v1 import AppTest

    from tests.dashboard.test_app import APP

    row = home.catalog.image(target)
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("views/sample.py")
    at.query_params["id"] = str(target)
    side = min(32, row.width, row.height)
    for name, v in zip("xywh", (0, 0, side, side), strict=True):
        at.session_state[f"rbox-{target}_{name}"] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key=f"rbox-{target}_w").value == side
    at.button(key="region_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert ranked_ids(at)[0] == target  # the image's own region matches it best
    first = next(m.value for m in at.markdown if m.value.startswith("**1."))
    box = [int(v) for v in first.split("box [")[1].rstrip("]").split(",")]
    assert len(box) == 4 and box[0] + box[2] <= row.width and box[1] + box[3] <= row.height
    # tags filter the region search too
    other = ranked_ids(at)[1]
    home.catalog.add_tag([other], "keep")
    at = open_page(monkeypatch, home, "views/search.py", **state)
    at.multiselect(key="f_tags").set_value(["keep"]).run()
    assert ranked_ids(at) == [other]
