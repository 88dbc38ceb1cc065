"""The analyst's workflows through AppTest: each test names the bug of issue 15 it pins."""

from __future__ import annotations

import shutil
from pathlib import Path

from latentsight.index.catalog import ScanResultRow, ScanRow
from latentsight.index.home import Home
from latentsight.index.scan import scan_paths

from tests.dashboard.conftest import copy_home, reconstruction_scan
from tests.dashboard.test_app import APP, open_page, ranked_ids, texts


def small_folder(home: Home, dest: Path, label: str, n: int) -> Path:
    dest.mkdir(parents=True)
    for r in home.catalog.images(labels=[label])[:n]:
        shutil.copy(r.path, dest / Path(r.path).name)
    return dest


def test_scan_from_the_page_picks_the_model_and_shows_the_new_scan(monkeypatch, anomaly_home,
                                                                   tmp_path):
    home = copy_home(anomaly_home, tmp_path / "home")
    first = scan_paths(home, [small_folder(home, tmp_path / "a", "good", 3)], progress=False)
    second = small_folder(home, tmp_path / "b", "checker", 4)
    monkeypatch.setenv("LATENTSIGHT_DATA_ROOTS", str(second))  # typed folders: dashboard/access.py
    at = open_page(monkeypatch, home, "views/anomalies.py")
    assert at.selectbox(key="scan").value == first.scan_id
    assert at.selectbox(key="scan_model").options == ["scan-test (normal: good)"]  # bug 2
    at.text_input(key="scan_folder").set_value(str(second))
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    new = home.catalog.scans()[0]
    assert new.id != first.scan_id and new.n_images == 4
    assert at.selectbox(key="scan").value == new.id  # bug 1: the picker follows the new scan
    assert int(at.metric[0].value) == new.n_flagged
    assert any(f"scan #{new.id}" in s.value for s in at.success)


def test_the_scans_own_threshold_is_never_clamped(monkeypatch, own_home):
    paths = [r.path for r in own_home.catalog.images()][:12]
    scan_id = reconstruction_scan(own_home, paths, [], threshold=1e-9)  # below every score
    at = open_page(monkeypatch, own_home, "views/anomalies.py")
    scan = own_home.catalog.scan(scan_id)
    assert at.selectbox(key="scan").value == scan_id
    assert int(at.metric[0].value) == scan.n_flagged == 12  # bug 3: not "Flagged 11 / Normal 1"
    assert int(at.metric[1].value) == 0


def test_a_scan_whose_files_all_failed_shows_why_and_is_not_the_default(monkeypatch, own_home):
    scored = own_home.catalog.scans()[0].id
    with own_home.catalog.session() as s:
        bad = ScanRow(model_id=own_home.catalog.model().id, threshold=1.0, paths=["/x"],
                      status="done", n_images=0, n_failed=2)
        s.add(bad)
        s.flush()
        s.add_all(ScanResultRow(scan_id=bad.id, path=f"/x/{i}.png", error="truncated file")
                  for i in range(2))
        bad_id = bad.id
    at = open_page(monkeypatch, own_home, "views/anomalies.py")
    assert at.selectbox(key="scan").value == scored  # bug 4: the scored scan by default
    at.selectbox(key="scan").set_value(bad_id).run()
    assert any("scored no images" in w.value for w in at.warning)
    assert "truncated file" in at.dataframe[0].value.to_csv()


def test_zero_flagged_says_so(monkeypatch, own_home):
    paths = [r.path for r in own_home.catalog.images()][:5]
    reconstruction_scan(own_home, paths, [], threshold=1e9)
    at = open_page(monkeypatch, own_home, "views/anomalies.py")
    assert int(at.metric[0].value) == 0
    assert "No image scores above the threshold" in texts(at)


def test_review_marks_are_stored_and_exported(monkeypatch, own_home):
    at = open_page(monkeypatch, own_home, "views/anomalies.py", reviewer="ana")
    scan = own_home.catalog.scan(at.selectbox(key="scan").value)
    results = own_home.catalog.scan_results(scan.id)
    top = max((r for r in results if r.score is not None), key=lambda r: r.score)
    at.button_group(key=f"rev-{top.id}").set_value("false_alarm").run()
    assert not at.exception
    rev = own_home.catalog.reviews(scan_id=scan.id)[top.id]
    assert (rev.mark, rev.reviewer) == ("false_alarm", "ana") and rev.at is not None
    csv_text = at.download_button(key="scan_csv").proto.url  # served by the media manager
    assert csv_text
    from latentsight.dashboard import core

    body = core.scan_csv(results, scan.threshold,
                         own_home.catalog.reviews(scan_id=scan.id)).decode()
    assert "review,reviewer,reviewed_at" in body.splitlines()[0]
    assert any(line.startswith(top.path) and ",false_alarm,ana," in line
               for line in body.splitlines())
    assert int(at.metric[4].value) == 1


def test_one_set_of_filters_drives_search_and_the_browse_grid(monkeypatch, dash_home):
    label = dash_home.catalog.images()[0].label
    at = open_page(monkeypatch, dash_home, "views/search.py")
    assert len([m for m in at.multiselect if m.label == "Label"]) == 1  # bug 9
    at.multiselect(key="f_labels").set_value([label]).run()
    picks = [int(b.key.split("-")[1]) for b in at.button if b.key and b.key.startswith("pick-")]
    assert picks and {r.label for r in dash_home.catalog.images(ids=picks)} == {label}
    assert at.query_params["label"] in (label, [label])  # the filters are in the URL


def test_a_catalog_id_in_the_url_is_the_query(monkeypatch, dash_home):
    target = dash_home.catalog.image_ids()[4]
    monkeypatch.setenv("LATENTSIGHT_HOME", str(dash_home.root))
    monkeypatch.setenv("LATENTSIGHT_DEVICE", "cpu")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["q"] = str(target)
    at.run()
    assert not at.exception
    assert ranked_ids(at)[0] == target


def test_a_bad_upload_hides_the_previous_results(monkeypatch, dash_home):
    row = dash_home.catalog.images()[3]
    at = open_page(monkeypatch, dash_home, "views/search.py")
    at.file_uploader(key="upload").set_value(("q.png", Path(row.path).read_bytes(),
                                              "image/png")).run()
    assert ranked_ids(at)
    at.file_uploader(key="upload").set_value(("bad.png", b"no pixels", "image/png")).run()
    assert any("bad.png" in e.value for e in at.error)
    assert ranked_ids(at) == []


def test_sample_view_shows_metadata_and_tags_filter_the_grid(monkeypatch, own_home):
    target = own_home.catalog.images()[6]
    monkeypatch.setenv("LATENTSIGHT_HOME", str(own_home.root))
    monkeypatch.setenv("LATENTSIGHT_DEVICE", "cpu")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("views/sample.py")
    at.query_params["id"] = str(target.id)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value.startswith(f"#{target.id}")
    assert target.sha256 in at.dataframe[0].value.to_csv()
    assert at.get("metric")  # the fixture's scan scored it
    assert at.toggle(key="heat_on") and at.slider(key="heat_opacity")
    at.text_input(key="new_tag").set_value("scratch")
    at.button[0].click().run()
    assert own_home.catalog.tags([target.id]) == {target.id: ["scratch"]}
    at = open_page(monkeypatch, own_home, "views/search.py")
    at.multiselect(key="f_tags").set_value(["scratch"]).run()
    picks = [int(b.key.split("-")[1]) for b in at.button if b.key and b.key.startswith("pick-")]
    assert picks == [target.id]


def test_an_empty_or_relative_ingest_path_gets_a_message(monkeypatch, dash_home):
    at = open_page(monkeypatch, dash_home, "views/status.py")
    at.button[0].click().run()
    assert any("Type the folder" in e.value for e in at.error)
    at.text_input(key="ingest_folder").set_value("some/where")
    at.button[0].click().run()
    assert any("relative path" in e.value for e in at.error)


def test_synthesis_uses_the_gans_classes_and_a_chosen_gate(monkeypatch, gan_home):
    from latentsight.training.gan.train import load_generator

    classes = list(load_generator(gan_home, "g1")[0].config.classes)
    at = open_page(monkeypatch, gan_home, "views/classes.py")
    assert at.selectbox(key="synth_label").options == classes  # bug 6
    label = at.selectbox(key="synth_label").value
    gate = at.selectbox(key=f"synth_gate-{label}")
    assert gate.options[0].startswith("off")
    gate.set_value("off")
    at.button(key="synth_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    made = gan_home.catalog.count_images(synthetic=True)
    assert made > 0 and any("no plausibility gate" in s.value for s in at.success)
    # bug 8: search leaves synthetic images out by default and marks them when asked
    synth = gan_home.catalog.images(synthetic=True)[0]
    at = open_page(monkeypatch, gan_home, "views/search.py",
                   query={"kind": "id", "id": synth.id})
    assert synth.id not in ranked_ids(at)
    assert not any("synthetic" in m.value for m in at.markdown if m.value.startswith("**"))
    at.radio(key="f_synth").set_value("all").run()
    assert ranked_ids(at)[0] == synth.id
    first = next(m.value for m in at.markdown if m.value.startswith("**1."))
    assert "synthetic" in first


def test_search_and_the_latent_map_work_on_the_milvus_backend(monkeypatch, own_home):
    import pytest

    pytest.importorskip("milvus_lite")
    from latentsight.index.manager import build_index

    from tests.dashboard.test_app import map_figure, n_points

    build_index(own_home, own_home.catalog.model(), backend="milvus", device="cpu",
                progress=False, workers=0)
    assert own_home.catalog.index_for(own_home.catalog.model().id).backend == "milvus"
    target = own_home.catalog.image_ids()[2]
    at = open_page(monkeypatch, own_home, "views/search.py",
                   query={"kind": "id", "id": target})
    assert ranked_ids(at) and ranked_ids(at)[0] == target, texts(at)
    at = open_page(monkeypatch, own_home, "views/latent_map.py")
    assert sum(n_points(t) for t in map_figure(at)["data"]) == own_home.catalog.count_images()


def test_tags_filter_the_flagged_list_and_the_latent_map(monkeypatch, own_home):
    from tests.dashboard.test_app import map_figure, n_points

    scan = own_home.catalog.scans()[0]
    results = [r for r in own_home.catalog.scan_results(scan.id) if r.score is not None]
    flagged = sorted((r for r in results if r.score > scan.threshold), key=lambda r: -r.score)
    pick = flagged[1]  # not the top one: the filter, not the order, shows it
    image = next(r for r in own_home.catalog.images() if r.sha256 == pick.sha256)
    own_home.catalog.add_tag([image.id], "scratch")
    at = open_page(monkeypatch, own_home, "views/anomalies.py")
    shown = {c.key for c in at.button_group if c.key and c.key.startswith("rev-")}
    assert len(shown) > 1
    at.multiselect(key="f_tags").set_value(["scratch"]).run()
    shown = {c.key for c in at.button_group if c.key and c.key.startswith("rev-")}
    assert shown == {f"rev-{pick.id}"}
    assert at.query_params["tag"] in ("scratch", ["scratch"])
    at = open_page(monkeypatch, own_home, "views/latent_map.py")
    at.multiselect(key="f_tags").set_value(["scratch"]).run()
    assert sum(n_points(t) for t in map_figure(at)["data"]) == 1
