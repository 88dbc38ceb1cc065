from __future__ import annotations

import numpy as np
import pytest
from latentsight.index.errors import StoreError
from latentsight.index.store import FaissStore


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 16)).astype(np.float32), np.arange(1000, 1200, dtype=np.int64)


def test_search_returns_self_first_and_faiss_shapes(data):
    x, ids = data
    store = FaissStore(16)
    store.add(ids, x)
    scores, found = store.search(x[:5], 3)
    assert scores.shape == found.shape == (5, 3)
    assert found[:, 0].tolist() == ids[:5].tolist()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_missing_slots_are_minus_one(data):
    x, ids = data
    store = FaissStore(16)
    store.add(ids[:2], x[:2])
    scores, found = store.search(x[:1], 5)
    assert found[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()


def test_filter_is_inside_the_search_not_a_cut(data):
    x, ids = data
    store = FaissStore(16)
    store.add(ids, x)
    allowed = ids[::7]  # 29 ids, most of them far from any given query
    _, found = store.search(x[:3], 10, allowed_ids=allowed)
    assert (found >= 0).all()  # k results whenever k allowed ids exist
    assert np.isin(found, allowed).all()


def test_save_load_round_trip_gives_identical_results(tmp_path, data):
    x, ids = data
    store = FaissStore(16)
    store.add(ids, x)
    store.save(tmp_path / "i.faiss")
    again = FaissStore.load(tmp_path / "i.faiss")
    a, b = store.search(x[:10], 7), again.search(x[:10], 7)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert sorted(again.ids().tolist()) == ids.tolist()
    assert not list(tmp_path.glob("*.tmp"))


def test_remove_and_upsert(data):
    x, ids = data
    store = FaissStore(16)
    store.add(ids, x)
    assert store.remove(ids[:10]) == 10
    assert store.ntotal == 190
    _, found = store.search(x[:1], 1)
    assert found[0, 0] != ids[0]
    store.upsert(ids[10:12], x[:2])  # replace two vectors
    _, found = store.search(x[:1], 1)
    assert found[0, 0] == ids[10]
    assert store.ntotal == 190


def test_errors_are_clear(data):
    x, ids = data
    store = FaissStore(16)
    store.add(ids[:3], x[:3])
    with pytest.raises(StoreError, match="already in the index"):
        store.add(ids[:1], x[:1])
    with pytest.raises(StoreError, match="dimension"):
        store.add([5], np.zeros((1, 8), np.float32))
    with pytest.raises(StoreError, match="Invalid faiss index spec"):
        FaissStore(16, "NotASpec")
    hnsw = FaissStore(16, "HNSW8")
    hnsw.add(ids[:3], x[:3])
    with pytest.raises(StoreError, match="does not support removal"):
        hnsw.remove(ids[:1])


def test_ivf_trains_on_first_add(data):
    x, ids = data
    store = FaissStore(16, "IVF4,Flat")
    store.add(ids, x)
    assert store.is_trained and store.ntotal == 200
    _, found = store.search(x[:2], 3, allowed_ids=ids[50:])
    assert np.isin(found[found >= 0], ids[50:]).all()


def test_refine_search_parameters_are_set_and_saved(tmp_path, data):
    import faiss

    x, ids = data
    store = FaissStore(16, "IVF4,PQ4x4,RFlat", params="nprobe=2,k_factor=8")  # k_factor_rf alias
    store.add(ids, x)
    refine = faiss.downcast_index(store.index.index)
    assert refine.k_factor == 8 and faiss.extract_index_ivf(refine).nprobe == 2
    store.set_params("k_factor_rf=3")
    assert refine.k_factor == 3
    store.save(tmp_path / "r.faiss")
    loaded = FaissStore.load(tmp_path / "r.faiss")
    again = faiss.downcast_index(loaded.index.index)
    assert again.k_factor == 3 and faiss.extract_index_ivf(again).nprobe == 2
    with pytest.raises(StoreError, match="Invalid search parameters 'efSearch=3'"):
        store.set_params("efSearch=3")


def test_refine_over_a_non_ivf_index_cannot_remove(data):
    x, ids = data
    store = FaissStore(16, "PQ4x4,RFlat")
    store.add(ids, x)
    with pytest.raises(StoreError, match="does not support removal.*IVF1024,PQ32,RFlat"):
        store.remove(ids[:1])
    assert store.ntotal == 200
