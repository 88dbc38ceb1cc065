"""Exact search through torch: the same ids and scores as faiss's own Flat index.

FaissStore("Flat") answers through torch's BLAS over a view of the faiss
rows; the reference here is a bare faiss IndexFlatIP / IndexFlatL2 searched
by faiss itself (with an IDSelectorBatch for filters). Ties aside: where two
ids differ, their scores must be equal within float tolerance.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from latentsight.index.store import BLAS_KERNELS, FaissStore, Filter, _TopK, exact_search

DIM = 24


def _data(n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    q = rng.standard_normal((9, DIM)).astype(np.float32)
    ids = (np.arange(n) * 7 + 3).astype(np.int64)  # catalog ids are not positions
    return x, q, ids


def _faiss_flat(metric: str, x: np.ndarray, ids: np.ndarray):
    x = x.copy()
    if metric == "cosine":
        faiss.normalize_L2(x)
    inner = faiss.IndexFlatL2(DIM) if metric == "l2" else faiss.IndexFlatIP(DIM)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(x, ids)
    return index


def _faiss_search(index, metric: str, q: np.ndarray, k: int, allowed=None):
    q = q.copy()
    if metric == "cosine":
        faiss.normalize_L2(q)
    params = None
    if allowed is not None:
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed, np.int64)))
    s, i = index.search(q, k, params=params)
    if metric == "l2":
        s = -s
    s[i < 0] = -np.inf
    return s, i


def _same(got, want, tol: float = 1e-4) -> None:
    gs, gi = got
    ws, wi = want
    assert gs.shape == ws.shape and gi.shape == wi.shape
    finite = np.isfinite(ws)
    assert (np.isfinite(gs) == finite).all()
    np.testing.assert_allclose(gs[finite], ws[finite], rtol=tol, atol=tol)
    differ = gi != wi
    # a different id is only allowed where its score ties the reference's
    np.testing.assert_allclose(gs[differ], ws[differ], rtol=tol, atol=tol)
    assert (gi[~finite] == -1).all()
    assert differ.mean() < 0.05


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_flat_matches_faiss(metric):
    x, q, ids = _data()
    store = FaissStore(DIM, "Flat", metric=metric)
    store.add(ids, x)
    assert store._flat_tensor() is not None  # the torch path answers, not faiss
    ref = _faiss_flat(metric, x, ids)
    for k in (1, 10, 50):
        _same(store.search(q, k), _faiss_search(ref, metric, q, k))
    _same(store.search(q[:1], 10), _faiss_search(ref, metric, q[:1], 10))  # batch 1


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("share", [0.02, 0.6])  # few rows gathered / most rows masked
def test_filtered_matches_faiss(metric, share):
    x, q, ids = _data(seed=1)
    rng = np.random.default_rng(2)
    allowed = rng.choice(ids, int(len(ids) * share), replace=False)
    store = FaissStore(DIM, "Flat", metric=metric)
    store.add(ids, x)
    ref = _faiss_flat(metric, x, ids)
    _same(store.search(q, 10, allowed_ids=allowed),
          _faiss_search(ref, metric, q, 10, allowed))
    few = allowed[:3]  # fewer matches than k: -1 slots with -inf
    got = store.search(q, 10, allowed_ids=few)
    _same(got, _faiss_search(ref, metric, q, 10, few))
    assert (got[1][:, 3:] == -1).all() and set(got[1][0, :3]) == set(few)
    assert (store.search(q, 5, allowed_ids=[10**9])[1] == -1).all()  # nothing allowed


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_removals_match_faiss(metric):
    x, q, ids = _data(seed=3)
    store = FaissStore(DIM, "Flat", metric=metric)
    store.add(ids, x)
    store.search(q, 5)  # a cached view of the rows must not survive the removal
    gone = ids[::3]
    assert store.remove(gone) == len(gone)
    keep = ~np.isin(ids, gone)
    ref = _faiss_flat(metric, x[keep], ids[keep])
    got = store.search(q, 20)
    _same(got, _faiss_search(ref, metric, q, 20))
    assert not np.isin(got[1], gone).any()
    more = np.arange(10) + 10**6
    store.add(more, x[:10])  # rows added after the removal are searched too
    got = store.search(x[:10], 1, allowed_ids=more)[1][:, 0]
    if metric != "ip":  # each row is its own nearest neighbour (ip favours long vectors)
        assert (got == more).all()
    assert np.isin(got, more).all()


def test_filter_through_resolver_and_k_beyond_n():
    x, q, ids = _data(n=50, seed=4)
    labels = {int(i): ("a" if j % 2 else "b") for j, i in enumerate(ids)}
    store = FaissStore(DIM, "Flat", resolver=lambda f: np.array(
        [i for i, lab in labels.items() if lab in f.labels], np.int64))
    store.add(ids, x)
    s, i = store.search(q, 80, filter=Filter.of(labels="a"))
    assert (i[:, :25] >= 0).all() and (i[:, 25:] == -1).all()
    assert {labels[int(v)] for v in i[i >= 0]} == {"a"}
    assert np.isneginf(s[:, 25:]).all()
    assert (np.diff(s[:, :25], axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize("blas", BLAS_KERNELS)
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_both_kernels_match_faiss_beyond_the_small_path(monkeypatch, blas, metric):
    """Searches big enough for the chunked kernels (not the one-product small path): torch's
    and numpy's BLAS each give faiss's ids and scores, filtered and not."""
    import latentsight.index.store as store_mod

    monkeypatch.setenv(store_mod.BLAS_ENV, blas)
    x, _, ids = _data(40_000)
    q = np.random.default_rng(3).standard_normal((20, DIM)).astype(np.float32)
    assert 40_000 * DIM * len(q) >= store_mod.SMALL_SEARCH_MACS
    store = FaissStore(DIM, "Flat", metric=metric)
    store.add(ids, x)
    ref = _faiss_flat(metric, x, ids)
    _same(store.search(q, 10), _faiss_search(ref, metric, q, 10))
    allowed = ids[np.random.default_rng(4).random(len(ids)) < 0.6]
    _same(store.search(q, 10, allowed_ids=allowed), _faiss_search(ref, metric, q, 10, allowed))


def test_blas_choice_is_measured_once_per_kind(monkeypatch):
    """Without the override, the kernel is picked by timing both, once for single queries
    and once for batches, and kept."""
    import latentsight.index.store as store_mod
    import torch

    monkeypatch.delenv(store_mod.BLAS_ENV, raising=False)
    monkeypatch.setattr(store_mod, "_BLAS", {})
    xb = torch.from_numpy(np.random.default_rng(0).standard_normal((50_000, DIM))
                          .astype(np.float32))
    one = torch.zeros((1, DIM))
    many = torch.zeros((64, DIM))
    first = store_mod.blas_for(xb, one)
    assert first in ("torch", "numpy") and set(store_mod._BLAS) == {"gemv"}
    store_mod._BLAS["gemv"] = "numpy" if first == "torch" else "torch"  # kept, not re-measured
    assert store_mod.blas_for(xb, one) == store_mod._BLAS["gemv"]
    assert store_mod.blas_for(xb, many) in BLAS_KERNELS
    assert set(store_mod._BLAS) == {"gemv", "gemm"}
    # a large index is measured again, on more of its rows: the winner changes with the rows
    big = torch.zeros((store_mod.LARGE_ROWS + 1, DIM))
    assert store_mod.blas_for(big, many) in BLAS_KERNELS
    assert set(store_mod._BLAS) == {"gemv", "gemm", "gemm-large"}


@pytest.mark.parametrize("blas", BLAS_KERNELS)
def test_exact_search_blocks_merge(monkeypatch, blas):
    """More rows than one score block: the per-block top-k merge gives the global top-k."""
    import latentsight.index.store as store_mod
    import torch

    monkeypatch.setenv(store_mod.BLAS_ENV, blas)

    rng = np.random.default_rng(5)
    x = rng.standard_normal((20_000, 8)).astype(np.float32)
    q = rng.standard_normal((2048, 8)).astype(np.float32)  # 2048 queries: 8192-row blocks
    s, p = exact_search(torch.from_numpy(x), q, 5, metric="ip")
    full = q @ x.T
    want = np.sort(full, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(s, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(full, p, 1), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_empty_flat_and_everything_removed(metric):
    store = FaissStore(DIM, "Flat", metric=metric)
    q = _data(n=10)[1]
    s, i = store.search(q, 4)
    assert (i == -1).all() and np.isneginf(s).all()
    store.add([1, 2], q[:2])
    store.remove([1, 2])
    s, i = store.search(q, 4, allowed_ids=[1])
    assert (i == -1).all() and np.isneginf(s).all()


def test_filtered_topk_over_blocks_of_any_size_matches_a_full_sort():
    """The running top k (a compare with the k-th so far, candidates merged in batches)
    gives the k best of all blocks: blocks smaller than k, a query whose first blocks are
    all -inf (rows filtered out), merges forced after nearly every block."""
    rng = np.random.default_rng(7)
    nq, n, k = 7, 3000, 10
    scores = rng.standard_normal((nq, n)).astype(np.float32)
    scores[2, :1500] = -np.inf  # query 2: nothing until row 1500
    top = _TopK(nq, k)
    top.budget = 40  # merge almost every block
    bounds = np.unique(np.r_[0, np.sort(rng.choice(np.arange(1, n), 60, replace=False)), n])
    assert (np.diff(bounds) < k).any()  # some blocks hold fewer than k rows
    for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True):
        top.add(np.ascontiguousarray(scores[:, b0:b1]), int(b0))
    top.flush()
    want = -np.sort(-scores, axis=1)[:, :k]
    np.testing.assert_array_equal(top.s, want)
    np.testing.assert_array_equal(np.take_along_axis(scores, top.p, 1), want)
    assert (top.p[2] >= 1500).all()


@pytest.mark.parametrize("blas", BLAS_KERNELS)
def test_concurrent_searches_are_right_and_leave_the_blas_threads_as_found(monkeypatch, blas):
    """Searches from several threads at once (the dashboard's, a scan's) each get their own
    answer, and numpy's BLAS keeps its thread count: a kernel that limited it from worker
    threads once left the whole process on one BLAS thread."""
    from concurrent.futures import ThreadPoolExecutor

    import latentsight.index.store as store_mod
    import torch
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    monkeypatch.setenv(store_mod.BLAS_ENV, blas)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40_000, 32)).astype(np.float32)
    qs = [rng.standard_normal((int(rng.integers(1, 70)), 32)).astype(np.float32)
          for _ in range(24)]
    before = blas_threads()

    def one(q):
        s, p = exact_search(torch.from_numpy(x), q, 7, metric="ip")
        want = -np.sort(-(q @ x.T), axis=1)[:, :7]
        return (np.allclose(s, want, atol=1e-4)
                and np.allclose(np.take_along_axis(q @ x.T, p, 1), want, atol=1e-4))

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(one, qs))
    assert blas_threads() == before
