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
