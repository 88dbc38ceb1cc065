"""The dashboard's Streamlit-free logic: thumbnails, filtered search, re-flagging, classes."""

from __future__ import annotations

import pytest
from latentsight.dashboard import core
from latentsight.embedder.errors import DecodeError
from latentsight.index.home import Home
from latentsight.index.search import Searcher

from tests.imagegen import write_folder


def test_thumbnail_is_made_once_and_reused(dash_home):
    image_id = dash_home.catalog.image_ids()[0]
    first = core.thumbnail(dash_home, image_id)
    assert first is not None and first.parent == dash_home.root / "thumbs"
    stamp = first.stat().st_mtime_ns
    assert core.thumbnail(dash_home, image_id) == first
    assert first.stat().st_mtime_ns == stamp
    assert core.thumbnail(dash_home, 10**9) is None


def test_upload_checks_name_the_upload_and_the_reason():
    with pytest.raises(DecodeError, match=r"notes\.txt: not an image"):
        core.decode_upload(b"plain text, no pixels", "notes.txt")
    with pytest.raises(DecodeError, match="over the 1 MB limit"):
        core.decode_upload(b"\x89PNG" + b"0" * (1024 * 1024 + 1), "big.png", max_mb=1)


def test_search_options_are_searcher_arguments(dash_home):
    s = Searcher(dash_home, device="cpu")
    ids = dash_home.catalog.image_ids()
    assert s.search(ids[0], k=5, **core.search_options(synthetic="synthetic only")) == []
    hits = s.search(ids[0], k=5, **core.search_options())
    assert [h.id for h in hits][0] == ids[0] and len(hits) == 5
    assert core.search_options() == {"label": None, "source": None, "include_synthetic": False,
                                     "synthetic": None}  # real images only, as the CLI
    assert core.search_options(synthetic="all")["include_synthetic"] is True
    with pytest.raises(ValueError, match="synthetic must be one of"):
        core.search_options(synthetic="yes")


def test_reflag_counts_move_with_the_threshold(dash_home):
    scan = dash_home.catalog.scans()[0]
    results = dash_home.catalog.scan_results(scan.id)
    scores = sorted(r.score for r in results if r.score is not None)
    low, high = core.reflag(results, scores[0] - 1), core.reflag(results, scores[-1])
    assert low.flagged == len(scores) and high.flagged == 0
    assert low.failed == high.failed == 1
    mid = core.reflag(results, scan.threshold)
    assert mid.flagged == scan.n_flagged
    flagged = [results[i].score for i in mid.order]
    assert flagged == sorted(flagged, reverse=True) and min(flagged) > scan.threshold
    assert len(mid.unflagged) == mid.normal and all(
        results[i].score <= scan.threshold for i in mid.unflagged)
    csv_text = core.scan_csv(results, scan.threshold).decode()
    assert csv_text.count("\n") == len(results) + 1 and "not an image" in csv_text


def test_threshold_range_never_clamps_the_scans_threshold():
    lo, hi, step = core.threshold_range([0.5, 0.6, 0.9], 0.1)
    assert lo < 0.1 < 0.9 < hi and step > 0
    lo, hi, _ = core.threshold_range([0.5, 0.6], 3.0)
    assert lo < 0.5 and hi > 3.0


def test_palette_has_a_distinct_colour_per_label():
    for n in (3, 10, 24, 40, 80):
        colours = core.palette(n)
        assert len(colours) == n == len(set(colours))


def test_selected_ids_reads_plotly_points():
    sel = {"points": [{"customdata": [5]}, {"customdata": [2]}, {"customdata": [5]}, {"x": 1}]}
    assert core.selected_ids(sel) == [5, 2]
    assert core.selected_ids(None) == [] and core.selected_ids({"points": []}) == []


def test_typed_folders_must_be_absolute_and_given(tmp_path, monkeypatch):
    from latentsight.index.errors import CatalogError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(CatalogError, match="Type the folder"):
        core.server_folder("  ")
    with pytest.raises(CatalogError, match="imgs: a relative path"):
        core.server_folder("imgs")
    assert core.server_folder(str(tmp_path / "imgs")) == tmp_path / "imgs"


def test_class_table_marks_sparse_classes(tmp_path):
    home = Home(tmp_path / "h")
    from latentsight.index.ingest import ingest_paths

    write_folder(tmp_path / "a", per_label=6)
    write_folder(tmp_path / "b", per_label=1, seed=1)
    ingest_paths(home, [tmp_path / "a"], labels_from_folders=True, progress=False, workers=0)
    ingest_paths(home, [tmp_path / "b" / "blobs"], label="rare", progress=False, workers=0)
    table = {r["label"]: r for r in core.class_table(home)}
    assert table["rare"]["sparse"] and table["rare"]["real"] == 1
    assert not any(r["sparse"] for lab, r in table.items() if lab != "rare")


def test_ingest_folder_reports_progress_and_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSIGHT_DATA_ROOTS", str(tmp_path / "imgs"))
    home = Home(tmp_path / "h")
    write_folder(tmp_path / "imgs", per_label=3)
    (tmp_path / "imgs" / "checker" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    seen = []
    rep = core.ingest_folder(home, tmp_path / "imgs", labels_from_folders=True, chunk=5,
                             on_progress=lambda done, total: seen.append((done, total)))
    assert rep["added"] == 12 and len(rep["failed"]) == 1
    assert seen[-1] == (13, 13) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert home.catalog.count_images(label="checker") == 3
    assert core.ingest_folder(home, tmp_path / "imgs", labels_from_folders=True)["added"] == 0
