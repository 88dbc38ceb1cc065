"""Hostile inputs: every bad file gets a per-file reason, the batch goes on, counts are right.

Covers ingest (API and CLI), a decoder that hangs or dies (real timeouts and
real killed workers), a file deleted between listing and reading, names that
are not UTF-8, and search by upload (bytes).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.probe import Limits, ProbePool
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.paths import from_catalog, to_catalog
from typer.testing import CliRunner

from latentsight.cli import app
from tests.badfiles import make_corpus

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    corpus = make_corpus(root / "mixed")
    (root / "mixed" / "notes.txt").write_text("not an image and not named like one")
    return root / "mixed", corpus


def test_each_failure_says_what_is_wrong(tmp_path, corpus_dir):
    folder, corpus = corpus_dir
    rep = ingest_paths(Home(tmp_path / "h"), [folder], progress=False, workers=1)
    reason = {f.path: f.error for f in rep.failed}
    expect = {
        "fifo.jpg": "not a regular file (a FIFO)",
        "broken_link.png": "broken symbolic link",
        "loop.png": "symbolic link loop",
        "over_limit.png": "over the 67108864-byte limit",
        "bomb.png": "pixel limit",
        "zero.jpg": "empty",
        "page.jpg": "HTML",
        "truncated.png": "truncated",
        "unreadable.jpg": "Input/output error" if os.geteuid() == 0 else "permission denied",
    }
    for name, text in expect.items():
        assert text in reason[to_catalog(corpus[name][0])], (name, reason)
    n_bad = sum(e == "fail" for _, e in corpus.values())
    assert len(rep.failed) == n_bad and rep.added == len(corpus) - n_bad


def test_non_utf8_and_long_names_are_stored_and_reopened(tmp_path, corpus_dir):
    folder, corpus = corpus_dir
    home = Home(tmp_path / "h")
    ingest_paths(home, [folder], progress=False, workers=0)
    original = os.path.abspath(corpus["caf%E9.png"][0])
    row = next(r for r in home.catalog.images() if r.path.startswith("bytes:"))
    assert row.path.endswith("/caf%E9.png")
    assert from_catalog(row.path) == original
    assert os.path.isfile(from_catalog(row.path))
    long_row = next(r for r in home.catalog.images() if r.path.endswith("n" * 240 + ".png"))
    assert len(long_row.path) > 1000 and os.path.isfile(from_catalog(long_row.path))
    # the JSON of the whole catalog is printable (no lone surrogates)
    json.dumps([r.as_dict() for r in home.catalog.images()], default=str).encode("utf-8")


def test_catalog_path_form_round_trips():
    for raw in (b"/a/b.png", b"/caf\xe9/x.png", b"/\xff\xfe%41.png", "/ü/ñ.png".encode(),
                b"bytes:/odd", b"/a%20b.png"):
        path = os.fsdecode(raw)
        text = to_catalog(path)
        text.encode("utf-8")  # always storable as text
        assert os.fsencode(from_catalog(text)) == raw


def test_cli_ingest_corpus_reports_every_file_and_exits_0(tmp_path, corpus_dir):
    folder, corpus = corpus_dir
    home = str(tmp_path / "h")
    n_bad = sum(e == "fail" for _, e in corpus.values())
    res = runner.invoke(app, ["ingest", str(folder), "--json", "--home", home, "--workers", "1"])
    assert res.exit_code == 0, res.output  # bad files are reported, not fatal (issue 2)
    out = json.loads(res.stdout)
    assert (out["added"], len(out["failed"]), out["skipped"]) == (len(corpus) - n_bad, n_bad, 1)
    assert all(f["path"] and f["error"] for f in out["failed"])
    again = runner.invoke(app, ["ingest", str(folder), "--home", home, "--workers", "1"])
    assert again.exit_code == 0
    assert f"added 0, duplicates {len(corpus) - n_bad}, failed {n_bad}" in again.stdout
    for path, expected in corpus.values():
        if expected == "fail":
            assert f"failed: {to_catalog(path)}: " in again.stdout
    good = runner.invoke(app, ["ingest", str(corpus["plain.png"][0]), "--home", home])
    assert good.exit_code == 0 and "added 0, duplicates 1, failed 0" in good.stdout


@pytest.fixture()
def small_folder(tmp_path, texture_dir):
    folder = tmp_path / "small"
    shutil.copytree(texture_dir / "blobs", folder)
    return folder


def test_hanging_and_dying_decoders_are_reported_and_the_rest_goes_on(
    tmp_path, small_folder, texture_dir, monkeypatch
):
    shutil.copy(texture_dir / "checker" / "000.png", small_folder / "hang_me.png")
    shutil.copy(texture_dir / "checker" / "001.png", small_folder / "die_me.png")
    monkeypatch.setenv("LATENTSIGHT_FAULTS", "hang:hang_me,die:die_me")
    rep = ingest_paths(Home(tmp_path / "h"), [small_folder], progress=False, workers=2,
                       limits=Limits(timeout_s=2.0))
    reasons = {os.path.basename(f.path): f.error for f in rep.failed}
    assert set(reasons) == {"hang_me.png", "die_me.png"}
    assert "took over 2s" in reasons["hang_me.png"]
    assert "decoder process died" in reasons["die_me.png"]
    assert rep.added == 12  # every other file went through


def test_probe_pool_restarts_after_each_bad_worker(small_folder, monkeypatch):
    paths = sorted(str(p) for p in small_folder.iterdir())
    monkeypatch.setenv("LATENTSIGHT_FAULTS", f"die:{os.path.basename(paths[3])}")
    with ProbePool(2) as pool:
        probes = pool.probe(paths, (16, 1))
        assert pool.restarts >= 2  # one after the crash, one after the lone retry
    assert [p.error is None for p in probes] == [i != 3 for i in range(len(paths))]
    assert all(p.pixels.shape == (1, 16, 16) for p in probes if p.error is None)


def test_file_deleted_between_listing_and_reading(tmp_path, small_folder, texture_dir,
                                                  monkeypatch):
    shutil.copy(texture_dir / "checker" / "002.png", small_folder / "vanishing.png")
    monkeypatch.setenv("LATENTSIGHT_FAULTS", "unlink:vanishing")
    rep = ingest_paths(Home(tmp_path / "h"), [small_folder], progress=False, workers=1)
    assert [os.path.basename(f.path) for f in rep.failed] == ["vanishing.png"]
    assert "not found" in rep.failed[0].error and rep.added == 12


def test_search_by_upload_each_corpus_file(trained_home, corpus_dir):
    from latentsight.index.search import Searcher

    _folder, corpus = corpus_dir
    s = Searcher(trained_home, "test-ae", device="cpu")
    tried = 0
    for name, (path, expected) in corpus.items():
        if not (path.is_file() and not path.is_symlink() and os.access(path, os.R_OK)):
            continue  # only a file's bytes can be uploaded
        data = path.read_bytes()
        tried += 1
        if expected == "ok":
            vec = s.query_vector(data, name=name)
            assert vec.shape == (1, s.encoder.embed_dim) and np.isfinite(vec).all(), name
            assert s.search(data, k=3)[0].id in set(trained_home.catalog.image_ids())
        else:
            with pytest.raises(DecodeError) as ei:
                s.query_vector(data, name=name)
            assert ei.value.path == name and ei.value.reason, name
    assert tried >= 20


def test_cli_search_with_hostile_query_files_exits_2_naming_the_file(trained_home, corpus_dir):
    _folder, corpus = corpus_dir
    for name in ("fifo.jpg", "loop.png", "bomb.png", "over_limit.png", "unreadable.jpg"):
        res = runner.invoke(app, ["search", str(corpus[name][0]), "--home",
                                  str(trained_home.root), "--model", "test-ae", "--device", "cpu"])
        assert res.exit_code == 2 and name in res.output, (name, res.output)


def test_build_and_search_read_back_non_utf8_paths(tmp_path, trained_home, texture_dir,
                                                   corpus_dir):
    from latentsight.index.manager import build_index
    from latentsight.index.search import Searcher

    from tests.index.crashkit import copy_model_home

    folder, corpus = corpus_dir
    home = Home(copy_model_home(trained_home, tmp_path / "home", texture_dir / "checker"))
    ingest_paths(home, [folder], progress=False, workers=0)
    st = build_index(home, home.catalog.model(), device="cpu", progress=False, workers=1)
    assert st.ok and st.ntotal == home.catalog.count_images()  # every file re-read, none lost
    row = next(r for r in home.catalog.images() if r.path.startswith("bytes:"))
    hits = Searcher(home, device="cpu").search(row.id, k=1)
    assert hits[0].id == row.id and hits[0].path == row.path


def test_scan_reports_every_bad_file_and_scores_the_good_ones(anomaly_home, corpus_dir, tmp_path):
    """The hostile corpus through `scan`: per-file reasons, the scan goes on, counts are right."""
    from latentsight.index.scan import scan_paths

    folder, corpus = corpus_dir
    summary = scan_paths(anomaly_home, [folder], device="cpu", progress=False)
    by_name = {os.path.basename(from_catalog(r.path)): r for r in summary.results}
    bad = {n for n, (_, e) in corpus.items() if e == "fail"}
    good = {n for n, (_, e) in corpus.items() if e == "ok"}
    for name in bad:
        key = os.path.basename(from_catalog(to_catalog(corpus[name][0])))
        assert by_name[key].error, name
    assert len(summary.failed) == len(bad)
    assert len(summary.scored) == len(good)
    assert all(np.isfinite(r.score) for r in summary.scored)
    assert summary.skipped == 1  # notes.txt
    res = runner.invoke(app, ["scan", str(folder), "--json", "--home", str(anomaly_home.root),
                              "--device", "cpu"])
    assert res.exit_code in (0, 1), res.output  # 1 = something flagged; never 2 for bad files


def _within(seconds, fn):
    """Run fn in a daemon thread; fail instead of hanging the suite when it does not return."""
    import threading

    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish in {seconds}s"
    return out["v"]


def test_scan_refuses_a_36_mp_image_before_tiling_and_skips_a_fifo(anomaly_home, tmp_path):
    """A 36 MP flat PNG (a few KB) took 546 s to tile; a suffix-less FIFO hung the scan."""
    from latentsight.index.scan import scan_paths
    from PIL import Image

    folder = tmp_path / "incoming"
    folder.mkdir()
    Image.new("L", (6000, 6000), 128).save(folder / "huge.png")
    Image.new("L", (32, 32), 128).save(folder / "small.png")
    os.mkfifo(folder / "pipe")
    summary = _within(120, lambda: scan_paths(anomaly_home, [folder], device="cpu",
                                              progress=False, workers=1))
    by_name = {os.path.basename(r.path): r for r in summary.results}
    assert "over the 4000000-pixel limit" in by_name["huge.png"].error
    assert by_name["pipe"].error == "not a regular file (a FIFO)"
    assert by_name["small.png"].error is None and np.isfinite(by_name["small.png"].score)


def test_ingest_without_workers_skips_a_suffixless_fifo_with_a_reason(tmp_path, texture_dir):
    folder = tmp_path / "in"
    shutil.copytree(texture_dir / "blobs", folder)
    os.mkfifo(folder / "pipe")
    rep = _within(60, lambda: ingest_paths(Home(tmp_path / "h"), [folder], progress=False,
                                           workers=0))
    assert [(os.path.basename(f.path), f.error) for f in rep.failed] == [
        ("pipe", "not a regular file (a FIFO)")]
    assert rep.added == 12
