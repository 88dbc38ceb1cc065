"""Every page through Streamlit's AppTest, on a populated home and on an empty one."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from latentsight.index.home import Home
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PAGES = ["views/search.py", "views/anomalies.py", "views/latent_map.py", "views/classes.py",
         "views/status.py"]
RANK = re.compile(r"^\*\*(\d+)\. #(\d+)\*\*")


def open_page(monkeypatch, home: Home, page: str, **state) -> AppTest:
    monkeypatch.setenv("LATENTSIGHT_HOME", str(home.root))
    monkeypatch.delenv("LATENTSIGHT_DB_URL", raising=False)
    monkeypatch.setenv("LATENTSIGHT_DEVICE", "cpu")
    at = AppTest.from_file(APP, default_timeout=180)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def ranked_ids(at: AppTest) -> list[int]:
    """Catalog ids of the result cards, in rank order."""
    found = [RANK.match(m.value) for m in at.markdown]
    return [int(m.group(2)) for m in sorted((m for m in found if m), key=lambda m: int(m[1]))]


def texts(at: AppTest) -> str:
    return "\n".join(e.value for kind in ("info", "warning", "error", "markdown", "caption")
                     for e in getattr(at, kind))


@pytest.mark.parametrize("page", PAGES)
def test_empty_home_says_what_to_run_first(monkeypatch, empty_home, page):
    at = open_page(monkeypatch, empty_home, page)
    assert "latentsight ingest" in texts(at)
    assert not at.error


def test_search_page_widgets(monkeypatch, dash_home):
    at = open_page(monkeypatch, dash_home, "views/search.py")
    assert at.slider(key="k").value == 12
    assert at.multiselect(key="f_labels").options
    assert at.file_uploader
    assert at.button(key=f"pick-{dash_home.catalog.image_ids()[0]}")
    assert "Upload an image, give a catalog id, or pick one" in texts(at)


def test_search_by_catalog_id_shows_the_query_first(monkeypatch, dash_home):
    target = dash_home.catalog.image_ids()[7]
    at = open_page(monkeypatch, dash_home, "views/search.py")
    at.number_input(key="by_id").set_value(target)
    at.button(key="search_by_id").click().run()
    assert not at.exception
    ids = ranked_ids(at)
    assert len(ids) == 12 and ids[0] == target
    assert at.download_button(key="csv")


def test_clicking_a_result_searches_from_it(monkeypatch, dash_home):
    first = dash_home.catalog.image_ids()[0]
    at = open_page(monkeypatch, dash_home, "views/search.py",
                   query={"kind": "id", "id": first})
    second = ranked_ids(at)[1]
    at.button(key="hit-2").click().run()
    assert ranked_ids(at)[0] == second


def test_filters_keep_only_the_chosen_label(monkeypatch, dash_home):
    row = dash_home.catalog.images()[0]
    at = open_page(monkeypatch, dash_home, "views/search.py",
                   query={"kind": "id", "id": row.id})
    other = next(lab for lab in at.multiselect(key="f_labels").options if lab != row.label)
    at.multiselect(key="f_labels").set_value([other]).run()
    ids = ranked_ids(at)
    labels = {r.id: r.label for r in dash_home.catalog.images(ids=ids)}
    assert ids and set(labels.values()) == {other}


def test_upload_searches_and_a_non_image_gets_a_clear_message(monkeypatch, dash_home):
    row = dash_home.catalog.images()[3]
    at = open_page(monkeypatch, dash_home, "views/search.py")
    at.file_uploader(key="upload").set_value(("q.png", Path(row.path).read_bytes(),
                                              "image/png")).run()
    assert not at.exception
    assert ranked_ids(at)[0] == row.id  # the same pixels are their own nearest neighbor
    at.file_uploader(key="upload").set_value(("notes.png", b"just some text", "image/png")).run()
    assert not at.exception
    assert any("notes.png" in e.value and "not an image" in e.value for e in at.error)


def test_oversized_upload_is_refused(monkeypatch, dash_home):
    from latentsight.dashboard.core import MAX_UPLOAD_MB

    big = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (2200, 2200, 3), dtype=np.uint8)).save(big, "PNG")
    assert big.tell() > MAX_UPLOAD_MB * 1024 * 1024
    at = open_page(monkeypatch, dash_home, "views/search.py")
    at.file_uploader(key="upload").set_value(("big.png", big.getvalue(), "image/png")).run()
    assert any("limit" in e.value for e in at.error)


def test_anomalies_threshold_reflags_live(monkeypatch, dash_home):
    at = open_page(monkeypatch, dash_home, "views/anomalies.py")
    scan = dash_home.catalog.scan(at.selectbox(key="scan").value)
    slider = at.slider(key=f"thr-{scan.id}")
    flagged = int(at.metric[0].value)
    assert flagged == scan.n_flagged and int(at.metric[2].value) == 1
    assert at.get("plotly_chart") and at.download_button(key="scan_csv")
    slider.set_value(slider.min).run()
    assert int(at.metric[0].value) > flagged
    assert int(at.metric[0].value) + int(at.metric[1].value) == scan.n_images - 1


def map_figure(at: AppTest) -> dict:
    import json

    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def n_points(trace: dict) -> int:
    """Points in a plotly trace (plotly writes numpy arrays as base64 "bdata")."""
    x = trace["x"]
    if isinstance(x, dict):
        return len(np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"]))
    return len(x)


def test_latent_map_greys_unscored_points_and_keeps_them(monkeypatch, own_home):
    from latentsight.index.catalog import ScanRow
    from sqlalchemy import delete

    from tests.dashboard.conftest import reconstruction_scan

    with own_home.catalog.session() as s:
        s.execute(delete(ScanRow))
    scored = [r.path for r in own_home.catalog.images()][:10]  # the rest stay unscored
    reconstruction_scan(own_home, scored, [])
    at = open_page(monkeypatch, own_home, "views/latent_map.py")
    n = own_home.catalog.count_images()
    assert sum(n_points(t) for t in map_figure(at)["data"]) == n
    at.radio(key="color").set_value("anomaly score").run()
    assert not at.exception
    traces = {t["name"]: t for t in map_figure(at)["data"]}
    assert n_points(traces["scored"]) == 10 and n_points(traces["unscored"]) == n - 10
    assert traces["unscored"]["marker"]["color"] == "#c8c8c8"
    at.radio(key="color").set_value("scan flag").run()
    names = {t["name"] for t in map_figure(at)["data"]}
    assert {"flagged", "not flagged", "unscored"} >= names and "unscored" in names
    at.radio(key="method").set_value("t-SNE").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1


def test_classes_page_highlights_sparse_classes(monkeypatch, dash_home):
    at = open_page(monkeypatch, dash_home, "views/classes.py")
    assert at.get("plotly_chart")
    at.slider(key="sparse_below").set_value(at.slider(key="sparse_below").max).run()
    assert any("Sparse classes" in w.value for w in at.warning)


def test_status_page_shows_models_curves_and_index_health(monkeypatch, dash_home):
    at = open_page(monkeypatch, dash_home, "views/status.py")
    assert int(at.metric[0].value.replace(",", "")) == dash_home.catalog.count_images()
    assert at.text_input(key="ingest_folder")
    assert at.selectbox(key="curve").value.name == "test-ae"
    assert at.get("plotly_chart")
    assert len(at.dataframe) >= 2


def test_scan_and_synthesis_say_what_to_run_first(monkeypatch, dash_home):
    at = open_page(monkeypatch, dash_home, "views/anomalies.py")
    assert "No model is calibrated for anomaly scans" in texts(at)  # test-ae has no scorer
    at = open_page(monkeypatch, dash_home, "views/classes.py")
    assert "latentsight gan train" in texts(at)


def test_status_page_ingests_a_folder_into_catalog_and_index(monkeypatch, dash_home, tmp_path):
    import shutil

    from latentsight.index.manager import status

    from tests.imagegen import write_folder

    dash_home.catalog.engine.dispose()
    home = Home(shutil.copytree(dash_home.root, tmp_path / "home"))
    before = home.catalog.count_images()
    folder = write_folder(tmp_path / "new", per_label=2, seed=7)
    (folder / "blobs" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    monkeypatch.setenv("LATENTSIGHT_DATA_ROOTS", str(tmp_path / "new"))
    at = open_page(monkeypatch, home, "views/status.py")
    at.text_input(key="ingest_folder").set_value(str(folder))
    at.button[0].click().run()
    assert not at.exception
    assert any("added 8" in s.value and "failed 1" in s.value for s in at.success)
    assert home.catalog.count_images() == before + 8
    # the counts at the top are the catalog's new ones, without a reload
    assert int(at.metric[0].value.replace(",", "")) == before + 8
    assert status(home, home.catalog.model()).ok  # the new images went into the index
    assert any("junk.png" in c.value for c in at.caption)
