"""The index manager over both backends: build, verify, repair, delete; spec auto; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from latentsight.index.errors import StoreError
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.manager import build_index, delete_images, open_index, status
from latentsight.index.store import FaissStore, Filter, choose_spec
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture()
def home(tmp_path, trained_home, texture_dir):
    """A fresh home holding the session's trained model and the 48 labeled textures."""
    h = Home(tmp_path / "h")
    m = trained_home.catalog.model("test-ae")
    h.catalog.add_model(name=m.name, kind=m.kind, config=m.config,
                        checkpoint_path=str(trained_home.resolve(m.checkpoint_path)),
                        checkpoint_sha256=m.checkpoint_sha256,
                        metrics=m.metrics)
    ingest_paths(h, [texture_dir], labels_from_folders=True, progress=False, workers=0)
    yield h
    h.close()


@pytest.fixture(params=["lite", "server"])
def milvus_uri(request, home):
    """Where a Milvus index goes: None (a Milvus Lite file in the home) or the test server."""
    if request.param == "lite":
        yield None
        return
    from tests.milvus_server import clean, server_uri

    uri = server_uri()
    clean(uri)
    yield uri
    clean(uri)


def _cli(*args: str, code: int = 0) -> str:
    res = runner.invoke(__import__("latentsight.cli", fromlist=["app"]).app, list(args),
                        catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.stdout


@pytest.mark.parametrize("backend,spec,server", [("faiss", "Flat", False),
                                                ("milvus", "FLAT", False),
                                                ("milvus", "FLAT", True)],
                         ids=["faiss", "milvus-lite", "milvus-server"])
def test_build_verify_filter_and_delete(home, backend, spec, server):
    m = home.catalog.model()
    if server:
        from tests.milvus_server import clean, server_uri

        uri = server_uri()
        clean(uri)
    st = build_index(home, m, backend=backend, spec=spec, device="cpu", progress=False,
                     workers=0, uri=uri if server else None)
    assert st.ok and st.backend == backend and st.ntotal == 48
    store, row = open_index(home, m)
    assert row.backend == backend and row.model_sha256 == m.checkpoint_sha256
    checker = home.catalog.image_ids(labels=["checker"])
    q = np.random.default_rng(0).normal(size=(2, store.dim)).astype(np.float32)
    _, found = store.search(q, 5, filter=Filter.of(labels="checker"))
    assert (found >= 0).all() and np.isin(found, checker).all()
    store.close()

    out = delete_images(home, checker[:3])
    assert out == {"deleted": 3, "vectors_removed": 3, "indexes_rebuilt": 0}
    st = status(home, m)
    assert st.ok and st.ntotal == 45
    store, _ = open_index(home, m)
    assert not np.isin(checker[:3], store.ids()).any()
    store.close()


def test_delete_from_an_hnsw_index_rebuilds_it(home):
    m = home.catalog.model()
    build_index(home, m, spec="HNSW8", device="cpu", progress=False, workers=0)
    ids = home.catalog.image_ids()[:2]
    out = delete_images(home, ids)
    assert out["deleted"] == 2 and out["indexes_rebuilt"] == 1
    st = status(home, m)
    assert st.ok and st.ntotal == 46 and st.spec == "HNSW8"


def test_a_broken_index_is_moved_aside_and_rebuilt_not_emptied(home):
    m = home.catalog.model()
    build_index(home, m, device="cpu", progress=False, workers=0)
    row = home.catalog.index_for(m.id)
    with open(home.resolve(row.path), "r+b") as f:  # damage the file in place
        f.seek(0)
        f.write(b"\0" * 64)
    with pytest.raises(StoreError, match="cannot read"):
        open_index(home, m, repair=False)
    store, row2 = open_index(home, m, repair=True)  # a writer's repair
    assert store.ntotal == 48 and row2.generation == row.generation + 1
    aside = list(home.indexes_dir.glob("*.broken-*"))
    assert len(aside) == 1 and aside[0].read_bytes()[:64] == b"\0" * 64


def test_readers_report_a_truncated_index_and_never_rewrite_it(home):
    """verify exits 1 naming `index rebuild`; search exits 2 the same way; the file is kept."""
    m = home.catalog.model()
    build_index(home, m, device="cpu", progress=False, workers=0)
    row = home.catalog.index_for(m.id)
    path = home.resolve(row.path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    before = (path.read_bytes(), sorted(p.name for p in home.indexes_dir.iterdir()))
    base = ["--home", str(home.root)]
    out = _cli("index", "verify", *base, code=1)
    assert "DAMAGED" in out and "latentsight index rebuild --model test-ae" in out
    assert json.loads(_cli("index", "verify", "--json", *base, code=1))["ok"] is False
    res = runner.invoke(__import__("latentsight.cli", fromlist=["app"]).app,
                        ["search", "1", *base, "--device", "cpu"])
    assert res.exit_code == 2 and "latentsight index rebuild" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert (path.read_bytes(), sorted(p.name for p in home.indexes_dir.iterdir())) == before
    assert home.catalog.index_for(m.id).generation == row.generation  # nothing rebuilt


def test_verify_reports_a_stale_model_and_exits_1(home):
    m = home.catalog.model()
    build_index(home, m, device="cpu", progress=False, workers=0)
    base = ["--home", str(home.root)]
    assert json.loads(_cli("index", "verify", "--json", *base))["ok"] is True
    row = home.catalog.index_for(m.id)
    home.catalog.record_index(model_id=m.id, backend=row.backend, spec=row.spec, path=row.path,
                              ntotal=row.ntotal, model_sha256="0" * 64)
    out = _cli("index", "verify", *base, code=1)
    assert "MISMATCH" in out and "built with checkpoint 000000000000" in out
    home.catalog.add_images([{"sha256": "f" * 64, "path": "/nowhere.png", "byte_size": 1,
                              "width": 1, "height": 1, "mode": "L", "format": "PNG"}])
    st = json.loads(_cli("index", "verify", "--json", *base, code=1))
    assert st["missing"] == 1 and st["extra"] == 0


def test_cli_build_milvus_info_rebuild_and_delete(home):
    base = ["--home", str(home.root)]
    out = _cli("index", "build", "--backend", "milvus", "--spec", "auto", *base)
    assert "milvus index" in out and "48 vectors (FLAT)" in out
    info = json.loads(_cli("index", "info", "--json", *base))
    assert [r["backend"] for r in info] == ["milvus"]
    assert info[0]["path"].endswith(".milvus.db")
    out = _cli("index", "rebuild", *base)
    assert "rebuilt milvus index" in out and "generation 2" in out
    ids = [str(i) for i in home.catalog.image_ids()[:2]]
    out = json.loads(_cli("delete", *ids, "--json", *base))
    assert out["deleted"] == 2 and out["vectors_removed"] == 2
    assert json.loads(_cli("index", "verify", "--json", *base))["ntotal"] == 46


def test_spec_auto_follows_the_faiss_guidelines():
    assert choose_spec(10_000, 64).spec == "Flat"
    big = choose_spec(1_000_000, 128, memory_budget=8 << 30)
    nlist = int(big.spec[3:].split(",")[0])
    assert big.spec.endswith(",Flat") and 4 * 1000 <= nlist <= 16 * 1000
    # 1/128 of the lists, at least 8, at most 64: 32 of 4096 (not 256 = 1/16, too slow)
    assert big.params == "nprobe=32" and "nprobe 32" in big.reason
    assert choose_spec(100_000, 128, memory_budget=8 << 30).params == "nprobe=16"
    assert choose_spec(50_000, 128, memory_budget=8 << 30).params == "nprobe=8"
    # float32 (488 MiB) over the budget, float16 copies (244 MiB) + PQ32 within: re-ranked PQ
    refine = choose_spec(1_000_000, 128, memory_budget=400 << 20)
    assert refine.spec == f"IVF{nlist},PQ32,Refine(SQfp16)"
    assert refine.params == "nprobe=32,k_factor_rf=32" and "budget" in refine.reason
    # not even float16 copies fit: PQ alone, and the reason says recall suffers
    short = choose_spec(1_000_000, 128, memory_budget=100 << 20)
    assert ",PQ" in short.spec and "Refine" not in short.spec and "recall" in short.reason
    m = int(short.spec.rsplit("PQ", 1)[1])
    assert 128 % m == 0 and 1_000_000 * m <= 100 << 20


def test_cli_spec_auto_says_what_it_chose(home):
    res = runner.invoke(__import__("latentsight.cli", fromlist=["app"]).app,
                        ["index", "build", "--spec", "auto", "--device", "cpu",
                         "--home", str(home.root)], catch_exceptions=False)
    assert res.exit_code == 0
    assert "spec auto: Flat" in res.stderr and "50,000" in res.stderr


def test_ivf_with_too_many_lists_names_the_fix():
    store = FaissStore(8, "IVF64,Flat")
    with pytest.raises(StoreError, match="4\\*sqrt"):
        store.add(np.arange(20), np.random.default_rng(0).normal(size=(20, 8)))


def test_gpu_device_falls_back_to_cpu_without_a_faiss_gpu():
    import faiss
    from latentsight.index.store import gpu_device

    assert gpu_device("cpu") is None
    if faiss.get_num_gpus() == 0:
        assert gpu_device("auto") is None and gpu_device("cuda") is None
    with pytest.raises(StoreError, match="'device'"):
        gpu_device("tpu")


def test_cli_build_with_a_metric_keeps_it_through_rebuild(home):
    base = ["--home", str(home.root), "--device", "cpu", "--workers", "0"]
    out = _cli("index", "build", "--metric", "l2", *base)
    assert "48 vectors (Flat)" in out
    info = json.loads(_cli("index", "info", "--json", "--home", str(home.root)))
    assert [(r["backend"], r["metric"]) for r in info] == [("faiss", "l2")]
    m = home.catalog.model()
    store, _ = open_index(home, m)
    assert store.metric == "l2"
    vecs = np.random.default_rng(1).normal(size=(3, store.dim)).astype(np.float32) * 5
    scores, found = store.search(vecs, 4)
    # l2 scores are minus squared distances, best (largest) first, checked against numpy
    ids = store.ids()
    x = np.stack([store.index.reconstruct(int(i)) for i in ids])
    d2 = ((vecs[:, None, :] - x[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(found, ids[np.argsort(d2, axis=1, kind="stable")[:, :4]])
    np.testing.assert_allclose(scores, -np.sort(d2, axis=1)[:, :4], rtol=1e-4)
    store.close()
    out = _cli("index", "rebuild", *base)
    assert "generation 2" in out
    assert json.loads(_cli("index", "verify", "--json", "--home", str(home.root)))["metric"] == "l2"
    out = _cli("index", "rebuild", "--metric", "ip", *base)
    assert home.catalog.index_for(m.id).metric == "ip"


def test_cli_rejects_an_unknown_metric_before_embedding(home):
    res = runner.invoke(__import__("latentsight.cli", fromlist=["app"]).app,
                        ["index", "build", "--metric", "hamming", "--home", str(home.root)])
    assert res.exit_code == 2
    assert "Invalid value for '--metric'" in res.output and "'hamming'" in res.output
    assert home.catalog.index_for(home.catalog.model().id) is None  # nothing built


def _collections(uri: str) -> list[str]:
    from latentsight.index.milvus_store import _connect

    client = _connect(uri, None)
    try:
        return sorted(client.list_collections())
    finally:
        client.close()


@pytest.mark.parametrize("point", ["milvus.after_batch", "milvus.before_switch",
                                   "milvus.after_switch"])
def test_milvus_rebuild_killed_anywhere_leaves_a_whole_collection(home, tmp_path, point,
                                                                milvus_uri):
    """A rebuild SIGKILLed while filling its new collection (or just before switching to
    it) leaves the catalog on the old collection, whole and searchable; killed after the
    switch, on the new one. The next rebuild switches again and drops every leftover.
    On Milvus Lite and on a Milvus server."""
    from tests.index.crashkit import run_killed

    m = home.catalog.model()
    args = ["index", "build", "--backend", "milvus", "--home", str(home.root), "--device", "cpu",
            "--workers", "0", *(["--uri", milvus_uri] if milvus_uri else [])]
    code, log = run_killed(args, log_path=tmp_path / "build.log")  # in a child: Lite is
    assert code == 0, log  # single-process, so the parent opens the file only afterwards
    first = home.catalog.index_for(m.id, "milvus")
    uri = milvus_uri or str(home.resolve(first.path))
    assert first.path == (milvus_uri or first.path)

    code, log = run_killed(["index", "rebuild", *args[2:]], faults=f"kill:{point}",
                           log_path=tmp_path / "rebuild.log")
    assert code == -9, log
    row = home.catalog.index_for(m.id, "milvus")
    switched = point == "milvus.after_switch"
    assert (row.generation == first.generation + 1) is switched
    assert (row.collection == first.collection) is not switched
    assert len(_collections(uri)) == 2  # the one served and the killed run's leftover
    store, _ = open_index(home, m, "milvus", repair=False)
    try:
        assert store.collection == row.collection and store.ntotal == 48
        q = np.random.default_rng(0).normal(size=(2, store.dim)).astype(np.float32)
        assert (store.search(q, 5)[1] >= 0).all()
    finally:
        store.close()

    build_index(home, m, backend="milvus", spec="FLAT", uri=uri, device="cpu", progress=False,
                workers=0)
    last = home.catalog.index_for(m.id, "milvus")
    assert last.collection != row.collection and last.generation == row.generation + 1
    assert _collections(uri) == [last.collection]
    assert status(home, m, "milvus").ok


def test_search_while_another_process_holds_the_milvus_lite_file(home, tmp_path):
    """A reader neither takes the write lock nor re-embeds: one line naming the fix, exit 2."""
    import subprocess
    import sys

    from tests.index.crashkit import ROOT, run_killed, run_python_m

    m = home.catalog.model()
    args = ["--home", str(home.root), "--device", "cpu"]
    code, log = run_killed(["index", "build", "--backend", "milvus", *args, "--workers", "0"],
                           log_path=tmp_path / "build.log")
    assert code == 0, log
    row = home.catalog.index_for(m.id, "milvus")
    uri = str(home.resolve(row.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pymilvus import MilvusClient\n"
         f"c = MilvusClient({uri!r}); c.list_collections(); print('ready', flush=True)\n"
         "sys.stdin.read()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        res = run_python_m(["search", "1", *args], timeout=240)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "latentsight index rebuild" in out and "Traceback" not in out
    assert "rebuilding" not in out and "embedding" not in out  # nothing re-embedded
    after = home.catalog.index_for(m.id, "milvus")
    assert (after.generation, after.collection) == (row.generation, row.collection)
