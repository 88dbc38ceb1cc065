"""One contract, every backend: add a backend to BACKENDS and it is covered.

Each case builds a real catalog (SQLite) holding the images' label, source
and synthetic flag, and a store whose vectors carry the same metadata:
FAISS resolves filters through the catalog, Milvus Lite through its own
scalar fields; both must return the same kind of answers. The Milvus cases run on
Milvus Lite and on a real Milvus 2.3 server (LATENTSIGHT_TEST_MILVUS_URI, started by
.ci/start-milvus.sh; skipped when unset outside CI).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from latentsight.index.catalog import Catalog
from latentsight.index.errors import StoreError
from latentsight.index.manager import catalog_resolver
from latentsight.index.store import Filter, VectorStore

DIM = 16
N = 90
LABELS = ("crack", "scratch", "pit")
SOURCES = ("line1", "line2")


@dataclass(frozen=True)
class Backend:
    name: str
    make: Any  # (tmp_path, catalog) -> store
    reopen: Any  # (store, tmp_path, catalog) -> store, after persisting
    exact: bool = True  # returns the exact top-k (Flat-like) rather than an approximation
    removes: bool = True
    metric: str = "cosine"
    server: bool = False  # a shared Milvus server: its collection is dropped afterwards


def _faiss(spec: str, params: str | None = None, metric: str = "cosine"):
    def make(tmp: Path, catalog: Catalog) -> VectorStore:
        from latentsight.index.store import FaissStore

        return FaissStore(DIM, spec, params=params, metric=metric,
                          resolver=catalog_resolver(catalog))

    def reopen(store: VectorStore, tmp: Path, catalog: Catalog) -> VectorStore:
        from latentsight.index.store import FaissStore

        store.save(tmp / "i.faiss")
        # the manager passes the catalog's metric (ip and cosine files look alike)
        return FaissStore.load(tmp / "i.faiss", spec, metric=metric,
                               resolver=catalog_resolver(catalog))

    return make, reopen


def _milvus(spec: str, metric: str = "cosine"):
    def make(tmp: Path, catalog: Catalog) -> VectorStore:
        from latentsight.index.milvus_store import MilvusStore

        return MilvusStore(DIM, uri=str(tmp / "m.db"), collection="contract", spec=spec,
                           metric=metric)

    def reopen(store: VectorStore, tmp: Path, catalog: Catalog) -> VectorStore:
        from latentsight.index.milvus_store import MilvusStore

        store.save()
        store.close()
        return MilvusStore.open(str(tmp / "m.db"), "contract")

    return make, reopen


def _milvus_server(spec: str, metric: str = "cosine"):
    import uuid

    name = f"t_contract_{uuid.uuid4().hex[:10]}"

    def make(tmp: Path, catalog: Catalog) -> VectorStore:
        from latentsight.index.milvus_store import MilvusStore

        from tests.milvus_server import server_uri

        return MilvusStore(DIM, uri=server_uri(), collection=name, spec=spec, metric=metric)

    def reopen(store: VectorStore, tmp: Path, catalog: Catalog) -> VectorStore:
        from latentsight.index.milvus_store import MilvusStore

        store.save()
        store.close()
        return MilvusStore.open(store.uri, name)

    return make, reopen


BACKENDS = [
    Backend("faiss-flat", *_faiss("Flat")),
    Backend("faiss-ivf", *_faiss("IVF4,Flat", "nprobe=4")),  # all lists probed: exact
    Backend("faiss-hnsw", *_faiss("HNSW16", "efSearch=128"), exact=False, removes=False),
    # PQ codes (4-bit, so 90 vectors can train them) re-ranked against float32 copies:
    # all lists probed and 32*k candidates re-ranked, so the answer is exact
    Backend("faiss-ivfpq-refine", *_faiss("IVF4,PQ4x4,RFlat", "nprobe=4,k_factor=32")),
    # what --spec auto picks when memory is short: float16 copies re-rank (near-exact)
    Backend("faiss-ivfpq-fp16", *_faiss("IVF4,PQ4x4,Refine(SQfp16)", "nprobe=4,k_factor_rf=32"),
            exact=False),
    Backend("faiss-flat-l2", *_faiss("Flat", metric="l2"), metric="l2"),
    Backend("faiss-ivf-ip", *_faiss("IVF4,Flat", "nprobe=4", metric="ip"), metric="ip"),
    Backend("milvus-lite", *_milvus("FLAT")),
    Backend("milvus-lite-l2", *_milvus("FLAT", metric="l2"), metric="l2"),
    Backend("milvus-server", *_milvus_server("FLAT"), server=True),
    Backend("milvus-server-hnsw-l2", *_milvus_server("HNSW:M=16,efConstruction=64,ef=128",
                                                     metric="l2"),
            exact=False, metric="l2", server=True),
]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    meta = [{"label": LABELS[i % 3], "source": SOURCES[(i // 3) % 2], "synthetic": i % 5 == 0}
            for i in range(N)]
    return x, meta


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def case(request, tmp_path, data):
    """(backend, store filled with all N vectors, catalog ids, catalog)."""
    b: Backend = request.param
    x, meta = data
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    ids = np.asarray(catalog.add_images([
        {"sha256": f"{i:064x}", "path": f"/x/{i}.png", "byte_size": 1, "width": 8, "height": 8,
         "mode": "L", "format": "PNG", **m} for i, m in enumerate(meta)
    ]), dtype=np.int64)
    store = b.make(tmp_path, catalog)
    store.add(ids, x, meta)
    store.flush()
    yield b, store, ids, catalog
    store.close()
    catalog.close()
    if b.server:
        from tests.milvus_server import clean

        clean(store.uri, (store.collection,))


def _exact(x: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int,
           metric: str = "cosine") -> np.ndarray:
    """The true top-k ids under `metric` (numpy, no index)."""
    if metric == "l2":
        closeness = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    elif metric == "ip":
        closeness = q @ x.T
    else:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        closeness = qn @ xn.T
    order = np.argsort(-closeness, axis=1, kind="stable")[:, :k]
    return ids[order]


def test_count_ids_and_self_search(case, data):
    b, store, ids, _ = case
    x, _ = data
    assert store.ntotal == N == len(store)
    assert sorted(store.ids().tolist()) == ids.tolist()
    scores, found = store.search(x[:6], 5)
    assert scores.shape == found.shape == (6, 5) and found.dtype == np.int64
    if b.metric != "ip":  # a raw inner product can prefer a longer vector to the query itself
        assert found[:, 0].tolist() == ids[:6].tolist()
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # best first
    if b.exact:
        np.testing.assert_array_equal(found, _exact(x, x[:6], ids, 5, b.metric))


def test_vectors_reads_back_what_was_stored(case, data):
    b, store, ids, _ = case
    x, _ = data
    pick = ids[[5, 0, 17]]
    got = store.vectors(pick)
    assert got.shape == (3, DIM) and got.dtype == np.float32
    want = x[[5, 0, 17]]
    if b.metric == "cosine":
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    if b.exact:
        np.testing.assert_allclose(got, want, atol=1e-4)
    else:  # PQ / fp16 / graph stores decode approximately: still nearest to their own row
        cos = (got / np.linalg.norm(got, axis=1, keepdims=True)) @ (
            x / np.linalg.norm(x, axis=1, keepdims=True)).T
        assert cos.argmax(1).tolist() == [5, 0, 17]
    with pytest.raises(StoreError, match="not in the index"):
        store.vectors([int(ids.max()) + 1000])


def test_missing_slots_are_minus_one(case, data):
    _b, store, ids, _ = case
    x, _ = data
    scores, found = store.search(x[:2], N + 7)
    assert (found[:, N:] == -1).all() and np.isneginf(scores[:, N:]).all()
    assert set(found[0, :N].tolist()) == set(ids.tolist())
    with pytest.raises(StoreError, match="'k'"):
        store.search(x[:1], 0)


@pytest.mark.parametrize(
    "filt",
    [Filter.of(labels="crack"), Filter.of(sources=["line2"]), Filter.of(synthetic=True),
     Filter.of(labels=["pit", "scratch"], sources="line1", synthetic=False)],
    ids=["label", "source", "synthetic", "combined"],
)
def test_filtered_search_is_inside_the_search(case, data, filt):
    b, store, ids, _ = case
    x, meta = data
    ok = np.array([filt.matches(m) for m in meta])
    k = min(10, int(ok.sum()))
    _, found = store.search(x[:4], k, filter=filt)
    assert (found >= 0).all()  # k results whenever k matching vectors exist
    assert np.isin(found, ids[ok]).all()
    if b.exact:
        np.testing.assert_array_equal(found, _exact(x[ok], x[:4], ids[ok], k, b.metric))


def test_filter_matching_nothing_and_allowed_ids(case, data):
    _b, store, ids, _ = case
    x, _ = data
    _, found = store.search(x[:2], 3, filter=Filter.of(labels="no-such-label"))
    assert (found == -1).all()
    allowed = ids[::9]
    _, found = store.search(x[:2], 4, allowed_ids=allowed, filter=Filter.of(labels="crack"))
    want = [i for n, i in enumerate(ids) if i in allowed and n % 3 == 0]
    assert set(found[found >= 0].tolist()) <= set(want)
    assert (found >= 0).sum() == 2 * min(4, len(want))


def test_add_rejects_duplicates_and_wrong_dimension(case, data):
    _b, store, ids, _ = case
    x, meta = data
    with pytest.raises(StoreError, match="already in the index"):
        store.add(ids[:1], x[:1], meta[:1])
    with pytest.raises(StoreError, match="dimension"):
        store.add([10_000], np.zeros((1, DIM + 1), np.float32))
    assert store.ntotal == N


def test_remove_or_a_clear_error(case, data):
    b, store, ids, _ = case
    x, _ = data
    if not b.removes:
        with pytest.raises(StoreError, match="does not support removal.*(Flat or IVF|rebuild)"):
            store.remove(ids[:3])
        return
    assert store.remove(ids[:3]) == 3
    assert store.remove(ids[:3]) == 0  # already gone
    assert store.ntotal == N - 3
    _, found = store.search(x[:3], 5)
    assert not np.isin(found, ids[:3]).any()
    # the vectors kept still answer with their own ids (IVF lists are renumbered)
    if b.metric != "ip":
        _, found = store.search(x[3:], 1)
        assert found[:, 0].tolist() == ids[3:].tolist()
    if b.exact:
        want = _exact(x[3:], x[:4], ids[3:], 6, b.metric)
        np.testing.assert_array_equal(store.search(x[:4], 6)[1], want)


def test_upsert_replaces_vectors(case, data):
    b, store, ids, _ = case
    x, meta = data
    if not b.removes:
        pytest.skip("upsert needs removal; HNSW indexes are rebuilt instead")
    store.upsert(ids[[10, 11]], x[[0, 1]], [meta[10], meta[11]])
    store.flush()
    assert store.ntotal == N
    _, found = store.search(x[:1], 2)
    if b.metric != "ip":
        assert set(found[0].tolist()) == {ids[0], ids[10]}
    if b.exact:
        y = x.copy()
        y[[10, 11]] = x[[0, 1]]
        _, found = store.search(x[:3], 4)
        want = _exact(y, x[:3], ids, 4, b.metric)
        assert [set(r) for r in found.tolist()] == [set(r) for r in want.tolist()]  # ties


def test_persistence_and_reload(case, data, tmp_path):
    b, store, ids, catalog = case
    x, _ = data
    filt = Filter.of(labels="scratch", synthetic=False)
    before = store.search(x[:5], 6), store.search(x[:5], 6, filter=filt)
    again = b.reopen(store, tmp_path, catalog)
    try:
        after = again.search(x[:5], 6), again.search(x[:5], 6, filter=filt)
        assert again.ntotal == N and sorted(again.ids().tolist()) == ids.tolist()
        for (s0, i0), (s1, i1) in zip(before, after, strict=True):
            np.testing.assert_array_equal(i0, i1)
            np.testing.assert_allclose(s0, s1, rtol=1e-5, atol=1e-5)
    finally:
        if again is not store:
            again.close()


def test_milvus_expression_quotes_values():
    f = Filter.of(labels=['a"b'], sources="s", synthetic=False)
    assert f.to_milvus_expr() == 'label in ["a\\"b"] and source in ["s"] and synthetic == false'
    assert Filter().empty and Filter().to_milvus_expr() == ""


# Labels that broke Milvus filters: longer than the old 512-character cut (and two that
# share their first 512 characters), multi-line, quotes, backslashes, control characters,
# and a value that would widen the expression were it not quoted.
HOSTILE_LABELS = [
    "x" * 600, "x" * 512 + "y" * 88, "two\nlines", "cr\rlf\r\n", 'quote"d', "it's",
    "back\\slash", "back\\nslash-n", "tab\there", "\x1b[31mred", "\x00nul", "ünï cödé 缺陷 😀",
    '" or id >= 0 or label == "', "\u2028sep", "",
]


@pytest.fixture(params=["lite", "server"])
def milvus_uri(request, tmp_path):
    if request.param == "lite":
        yield str(tmp_path / "hostile.db")
        return
    from tests.milvus_server import clean, server_uri

    uri = server_uri()
    yield uri
    clean(uri, ("t_hostile",))


def test_milvus_filters_match_hostile_labels_exactly(milvus_uri):
    """Every label is stored whole and its filter finds that image alone, on Lite and on a
    server (a cut or an unescaped newline used to merge labels or fail the search)."""
    from latentsight.index.milvus_store import MilvusStore

    rng = np.random.default_rng(3)
    x = rng.normal(size=(len(HOSTILE_LABELS), DIM)).astype(np.float32)
    ids = np.arange(100, 100 + len(x))
    meta = [{"label": lab, "source": f"src {lab}", "synthetic": False} for lab in HOSTILE_LABELS]
    store = MilvusStore(DIM, uri=milvus_uri, collection="t_hostile", spec="FLAT")
    try:
        store.add(ids, x, meta)
        store.flush()
        for i, lab in enumerate(HOSTILE_LABELS):
            for filt in (Filter.of(labels=lab), Filter.of(sources=f"src {lab}")):
                _, found = store.search(x[:1], 3, filter=filt)
                assert found[0].tolist() == [ids[i], -1, -1], (lab, filt)
        _, found = store.search(x[:1], len(x), filter=Filter.of(labels=HOSTILE_LABELS))
        assert sorted(found[0].tolist()) == ids.tolist()
    finally:
        store.close()


def test_milvus_refuses_to_cut_a_label_an_old_collection_cannot_hold(tmp_path):
    """A collection built with the old 512-byte fields names the rebuild, never truncates."""
    from latentsight.index import milvus_store
    from latentsight.index.milvus_store import MilvusStore

    uri = str(tmp_path / "old.db")
    old, milvus_store.MAX_VARCHAR = milvus_store.MAX_VARCHAR, 512
    try:
        MilvusStore(DIM, uri=uri, collection="t_old").close()
    finally:
        milvus_store.MAX_VARCHAR = old
    store = MilvusStore.open(uri, "t_old")
    try:
        assert store.max_text == 512
        with pytest.raises(StoreError, match="Image 1: its label is 300 characters") as e:
            store.add([1], np.ones((1, DIM), np.float32), [{"label": "é" * 300}])  # 600 bytes
        assert "latentsight index rebuild --backend milvus" in str(e.value)
        assert store.ntotal == 0
    finally:
        store.close()
