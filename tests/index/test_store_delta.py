"""The delta file: vectors added since the main index file was last written whole.

Covers save/load (eager and lazy), compaction (automatic past the fraction and
explicit), answers unchanged by a compaction, a delta left by another version
of the main file, a copied home, removals from either part, and `index verify`
/ `index compact` / kill points through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from latentsight.index.errors import StoreError
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.manager import status
from latentsight.index.store import FaissStore, delta_path, ids_path

from tests.imagegen import write_folder
from tests.index.crashkit import copy_model_home, run_killed, run_python_m

DIM = 16


def _vecs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _saved(tmp_path, spec: str = "Flat", metric: str = "cosine", n: int = 1000):
    path = tmp_path / "m.faiss"
    store = FaissStore(DIM, spec, metric=metric)
    store.add(np.arange(n), _vecs(n, 0))
    store.save(path)
    return path


def _stat(path):
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


@pytest.mark.parametrize("spec,metric", [("Flat", "cosine"), ("Flat", "l2"),
                                         ("IVF8,Flat", "ip"), ("HNSW8", "cosine")])
def test_delta_survives_save_and_load(tmp_path, spec, metric):
    path = _saved(tmp_path, spec, metric)
    main_before = _stat(path)
    store = FaissStore.load(path, metric=metric)
    new = np.arange(5000, 5040)
    store.add(new, _vecs(40, 1))
    store.save(path)
    assert _stat(path) == main_before  # the main file was not rewritten
    assert delta_path(path).stat().st_size < 40 * DIM * 4 + 4096
    again = FaissStore.load(path, metric=metric)
    assert again.ntotal == 1040 and again.delta_size == 40
    assert set(again.ids().tolist()) == set(range(1000)) | set(new.tolist())
    q = _vecs(6, 2)
    everything = FaissStore(DIM, spec, metric=metric)  # all in one index, nothing in a delta
    everything.add(np.arange(1000), _vecs(1000, 0))
    everything.add(new, _vecs(40, 1))
    if spec == "Flat":  # exact on both sides: the same answers
        a, b = again.search(q, 10), everything.search(q, 10)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    # the delta's own vectors are found, with and without a filter
    hit = again.search(_vecs(40, 1)[:3], 1, allowed_ids=new)[1][:, 0]
    assert np.isin(hit, new).all()
    if metric != "ip":
        assert (hit == new[:3]).all()
    # vectors read back from both parts, in the order asked (the latent map reads them so)
    mixed = np.array([new[3], 7, new[0], 999])
    np.testing.assert_allclose(again.vectors(mixed), everything.vectors(mixed), atol=1e-6)
    with pytest.raises(StoreError, match="not in the index"):
        again.vectors([new[1], 123456])


def test_lazy_open_adds_without_reading_the_main_file(tmp_path):
    path = _saved(tmp_path)
    store = FaissStore.load(path, metric="cosine", lazy=True)
    assert store._lazy is not None and store.ntotal == 1000
    with pytest.raises(StoreError, match="already in the index"):
        store.add([5], _vecs(1, 3))
    store.add(np.arange(2000, 2010), _vecs(10, 3))
    store.save(path)
    assert store._lazy is not None  # still not read
    eager = FaissStore.load(path, metric="cosine")
    lazy = FaissStore.load(path, metric="cosine", lazy=True)
    q = _vecs(4, 4)
    np.testing.assert_array_equal(eager.search(q, 7)[1], lazy.search(q, 7)[1])  # reads it now
    assert lazy._lazy is None


def test_compact_merges_and_leaves_results_unchanged(tmp_path):
    path = _saved(tmp_path, metric="l2")
    store = FaissStore.load(path, metric="l2")
    store.add(np.arange(3000, 3030), _vecs(30, 5))
    store.save(path)
    q = _vecs(8, 6)
    before = FaissStore.load(path, metric="l2").search(q, 15)
    store.compact(path)
    assert not delta_path(path).exists() and ids_path(path).exists()
    after = FaissStore.load(path, metric="l2")
    assert after.delta_size == 0 and after.ntotal == 1030
    np.testing.assert_array_equal(after.search(q, 15)[1], before[1])
    np.testing.assert_allclose(after.search(q, 15)[0], before[0], rtol=1e-5, atol=1e-5)


def test_delta_past_the_fraction_compacts_by_itself(tmp_path):
    path = _saved(tmp_path, n=200)
    store = FaissStore.load(path, metric="cosine")
    store.add(np.arange(900, 905), _vecs(5, 7))  # 5 <= 0.05 * 200: delta
    store.save(path)
    assert delta_path(path).exists()
    store.add(np.arange(905, 920), _vecs(15, 8))  # 20 > 10: the main file is written whole
    main_before = _stat(path)
    store.save(path)
    assert _stat(path) != main_before and not delta_path(path).exists()
    assert FaissStore.load(path, metric="cosine").ntotal == 220


def test_removal_from_delta_and_main(tmp_path):
    path = _saved(tmp_path)
    store = FaissStore.load(path, metric="cosine")
    store.add(np.arange(5000, 5010), _vecs(10, 9))
    assert store.remove([5000, 5001, 3]) == 3
    store.save(path)  # a removal from the main index: written whole, delta merged
    again = FaissStore.load(path, metric="cosine")
    assert again.delta_size == 0 and again.ntotal == 1007
    assert not np.isin([5000, 5001, 3], again.ids()).any()
    store = FaissStore.load(path, metric="cosine")
    store.add([7000], _vecs(1, 10))
    store.save(path)
    store = FaissStore.load(path, metric="cosine")
    assert store.remove([7000]) == 1  # only the delta: no full write needed
    main_before = _stat(path)
    store.save(path)
    assert _stat(path) == main_before
    assert 7000 not in FaissStore.load(path, metric="cosine").ids()


def test_delta_of_another_main_version_is_ignored(tmp_path):
    path = _saved(tmp_path)
    store = FaissStore.load(path, metric="cosine")
    store.add(np.arange(5000, 5010), _vecs(10, 11))
    store.save(path)
    old_delta = delta_path(path).read_bytes()
    store.compact(path)  # the main file now holds the delta's vectors
    delta_path(path).write_bytes(old_delta)  # as if killed before the delta was removed
    again = FaissStore.load(path, metric="cosine")
    assert again.delta_size == 0 and again.ntotal == 1010  # no duplicates
    again.save(path)
    assert FaissStore.load(path, metric="cosine").ntotal == 1010


def test_copied_home_keeps_its_delta(tmp_path):
    path = _saved(tmp_path)
    store = FaissStore.load(path, metric="cosine")
    store.add(np.arange(5000, 5010), _vecs(10, 12))
    store.save(path)
    other = tmp_path / "copy"
    other.mkdir()
    for p in (path, delta_path(path), ids_path(path)):
        shutil.copy(p, other / p.name)  # new inode and mtime: the ids' digest decides
    copy = FaissStore.load(other / path.name, metric="cosine")
    assert copy.delta_size == 10 and copy.ntotal == 1010
    assert FaissStore.load(other / path.name, metric="cosine", lazy=True).ntotal == 1010


def test_damaged_delta_is_an_error(tmp_path):
    path = _saved(tmp_path)
    delta_path(path).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(StoreError, match=r"m\.faiss\.delta"):
        FaissStore.load(path, metric="cosine")


@pytest.fixture(scope="module")
def delta_home(tmp_path_factory, trained_home, texture_dir):
    root = tmp_path_factory.mktemp("delta")
    copy_model_home(trained_home, root / "home", texture_dir / "checker")
    return root


def test_ingest_writes_delta_verify_and_compact(delta_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSIGHT_DELTA_FRACTION", "10")  # the tiny home keeps a delta
    root = delta_home
    home = Home(root / "home")
    row = home.catalog.index_for(home.catalog.model().id)
    main = home.resolve(row.path)
    main_before = _stat(main)
    folder = write_folder(tmp_path / "new", per_label=2, seed=500)
    rep = ingest_paths(home, [folder], progress=False, workers=0)
    assert rep.indexed == rep.added > 0
    assert _stat(main) == main_before and delta_path(main).exists()
    st = status(home, home.catalog.model())
    assert st.ok and st.delta == rep.added
    home.close()
    out = run_python_m(["index", "verify", "--json", "--home", str(root / "home")])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["delta"] == rep.added
    store = FaissStore.load(main, metric="cosine")  # answers before and after the compaction
    before = store.search(np.random.default_rng(1).standard_normal((3, store.dim)), 5)
    out = run_python_m(["index", "compact", "--json", "--home", str(root / "home")])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["delta"] == 0 and json.loads(out.stdout)["ok"]
    assert not delta_path(main).exists()
    after = FaissStore.load(main, metric="cosine")
    got = after.search(np.random.default_rng(1).standard_normal((3, after.dim)), 5)
    np.testing.assert_array_equal(got[1], before[1])


@pytest.mark.parametrize("point", ["delta.before_write", "atomic.before_rename#1",
                                   "delta.after_write", "compact.after_main",
                                   "compact.after_ids"])
def test_kill_during_delta_or_compact_leaves_a_consistent_index(delta_home, tmp_path, point):
    root = delta_home
    compacting = point.startswith("compact")
    folder = write_folder(tmp_path / "k", per_label=2, seed=600 + sum(map(ord, point)))
    frac = "0" if compacting else "10"  # 0: this ingest writes the main file whole
    code, out = run_killed(
        ["ingest", str(folder), "--workers", "0", "--home", str(root / "home")],
        faults=f"kill:{point}", log_path=tmp_path / "log", env={
            "LATENTSIGHT_DELTA_FRACTION": frac})
    assert code == -9, out
    home = Home(root / "home")
    try:
        row = home.catalog.index_for(home.catalog.model().id)
        catalog = set(home.catalog.image_ids())
        store = FaissStore.load(home.resolve(row.path), metric="cosine")  # whole, or raises
        ids = store.ids()
        assert len(set(ids.tolist())) == len(ids)  # never a vector twice
        assert set(ids.tolist()) <= catalog
        ingest_paths(home, [folder], progress=False, workers=0)  # the re-run repairs
        assert status(home, home.catalog.model()).ok
    finally:
        home.close()


def test_index_without_id_list_gets_one_on_its_first_delta(tmp_path):
    """An index file written before id lists existed: the first delta save lists its ids."""
    path = _saved(tmp_path)
    ids_path(path).unlink()
    store = FaissStore.load(path, metric="cosine", lazy=True)
    assert store._lazy is None  # no id list: the main file was read
    store.add([4000], _vecs(1, 13))
    store.save(path)
    assert ids_path(path).exists() and delta_path(path).exists()
    lazy = FaissStore.load(path, metric="cosine", lazy=True)
    assert lazy._lazy is not None and lazy.ntotal == 1001
