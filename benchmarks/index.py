"""Vector index families on synthetic embeddings: build time, memory, recall@10, queries/s.

    nice -n 5 python benchmarks/index.py [--jobs 10000x128,...] [--families flat,ivf,pq,hnsw,milvus]
                                         [--append] [--overhead] [--milvus-max N] [--threads 2]

Protocol:
1. Vectors: a mixture of Gaussians (n/100 centres, clamped to 64..4096, noise
   0.35 of the centre spread), L2-normalized, as embeddings are. Uniform random
   vectors have no neighbourhood structure and would make every approximate
   index look worse than it does on real embeddings; say so when quoting.
   Dims: 128, and 384 = the default AE's embed_dim (64x64 input, latent 128
   + pooled features 256).
2. Ground truth: exact inner-product search (faiss IndexFlatIP) for 1,000
   held-out queries, k=10. recall@10 = |approx top-10 ∩ exact top-10| / 10.
3. Each index is built through latentsight's FaissStore (train on a sample,
   add with ids); build time is wall clock, memory is the serialized index size.
   IVF-PQ is built once with an exact re-ranking stage (`IVFn,PQm,RFlat`); the
   rows without re-ranking search that build's PQ base index directly (the same
   trained quantizers, memory = the base plus the 8-byte ids), and the
   `Refine(SQfp16)` rows (float16 copies, what `--spec auto` picks when memory
   is short) wrap the same base in an IndexRefine over float16 codes.
   queries/s at batch 64 over 1,000 queries and at batch 1 over about 2 s of
   single queries (30 to 1,000; rows before the re-run of this script used 300)
   (one query per call, as the dashboard and the CLI ask), faiss on `--threads`
   OpenMP threads.
4. Store overhead: FaissStore.search vs the same IndexIDMap2's own search with
   the same pre-normalized queries, batch 1, same run; target ratio <= 1.10.
5. Milvus Lite (embedded, FLAT and HNSW; FLAT only above 100k) up to
   `--milvus-max` vectors: insert + flush + index time, recall, queries/s
   through MilvusStore. Above 10k vectors batch 1 is timed over 30 queries and
   above 100k recall and batch 64 over 256 queries (a FLAT search there takes
   seconds). Inserting stops after `--milvus-timeout` seconds; the measured
   partial insert rate is then recorded in the notes instead of a row.
Results: benchmarks/results/index.json and the "Index (issue 5)" section of
docs/benchmarks.md. No GPU rows unless faiss sees a GPU (then Flat and IVF GPU
rows are added).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's

# spinning OpenMP threads waste the shared cores (and wreck single-query timings)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
from latentsight.index.store import FaissStore, choose_spec, ivf_lists, ivf_nprobe, normalize  # noqa: E402

from benchmarks.report import replace_section  # noqa: E402

K = 10
NQ = 1000
NQ1 = 1000  # at most; batch 1 runs about 2 s worth of single queries (at least 30)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n base vectors and NQ queries from the same Gaussian mixture, L2-normalized."""
    rng = np.random.default_rng(seed)
    c = int(np.clip(n // 100, 64, 4096))
    centres = rng.normal(size=(c, dim)).astype(np.float32)
    out = np.empty((n + NQ, dim), np.float32)
    for s in range(0, n + NQ, 200_000):
        e = min(s + 200_000, n + NQ)
        pick = rng.integers(0, c, e - s)
        out[s:e] = centres[pick] + 0.35 * rng.normal(size=(e - s, dim)).astype(np.float32)
    out = normalize(out)
    return out[:n], out[n:]


def ground_truth(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(x)
    return idx.search(q, K)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


THREADS = 2
# rows: measured in this run; old_rows: kept from earlier runs (--append), except the
# families re-measured in this run (`ran`: n, dim, family)
RESULTS: dict = {"rows": [], "overhead": [], "notes": [], "old_rows": [], "ran": set()}
OUT = ROOT / "benchmarks" / "results" / "index.json"


def checkpoint() -> None:
    """Write what has been measured so far (a long run cut short keeps its rows)."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = merged(RESULTS["old_rows"], RESULTS["rows"], RESULTS["ran"])
    OUT.write_text(json.dumps({"rows": rows, "overhead": RESULTS["overhead"],
                               "notes": RESULTS["notes"], "meta": RESULTS.get("meta", {}),
                               "partial": True}, indent=2))


def qps(fn, q: np.ndarray, batch: int, n: int, clients: int | None = None
        ) -> tuple[float, np.ndarray]:
    """Queries/s for fn over the first n queries; returns (qps, ids).

    Batches go to faiss's OpenMP threads. Single queries (batch 1) are issued
    by THREADS client threads, one query per call each, with faiss on one
    OpenMP thread: how a server answers single queries on THREADS cores.
    """
    if batch > 1:
        out = []
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            out.append(fn(q[s : s + batch]))
        return n / (time.perf_counter() - t0), np.concatenate(out)
    from concurrent.futures import ThreadPoolExecutor

    faiss.omp_set_num_threads(1)
    try:
        with ThreadPoolExecutor(clients or THREADS) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda i: fn(q[i : i + 1]), range(min(n, 20))))  # warm-up, rate
            rate = min(n, 20) / (time.perf_counter() - t0)
            n = int(min(n, max(30, 2 * rate)))  # about 2 s of single queries, >= 30
            t0 = time.perf_counter()
            out = list(pool.map(lambda i: fn(q[i : i + 1]), range(n)))
            dt = time.perf_counter() - t0
    finally:
        faiss.omp_set_num_threads(THREADS)
    return n / dt, np.concatenate(out)


def index_bytes(index: object) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def faiss_rows(x: np.ndarray, q: np.ndarray, truth: np.ndarray, families: set[str]) -> list[dict]:
    n, dim = x.shape
    nlist = ivf_lists(n)
    refine = [f"nprobe=16,k_factor_rf={kf}" for kf in (16, 32, 64)]
    specs = [
        ("flat", "Flat", [None]),
        ("ivf", f"IVF{nlist},Flat", [f"nprobe={p}" for p in (8, 16, 32, 64)]),
        ("pq", f"IVF{nlist},PQ{dim // 8},RFlat", refine),  # PQ16 at 128, PQ48 at 384
        ("pq", f"IVF{nlist},PQ{dim // 4},RFlat", refine),  # PQ32 at 128, PQ96 at 384
        ("hnsw", "HNSW32", [f"efSearch={e}" for e in (32, 64, 128)]),
    ]
    rows = []
    for family, spec, param_sets in specs:
        if family not in families:
            continue
        log(f"  build {spec} on {n} x {dim}")
        t0 = time.perf_counter()
        store = build_store(x, spec)
        build = time.perf_counter() - t0
        size = index_bytes(store.index)
        for params in param_sets:
            if params:
                store.set_params(params)
            measure(rows, lambda b, st=store: st.search(b, K)[1], q, truth,
                    {"engine": "faiss", "spec": spec, "params": params or "-", "n": n,
                     "dim": dim, "build_s": build, "bytes": size})
        if family == "pq":
            pq_variants(rows, store, x, q, truth, build, fp16=spec.endswith(f"PQ{dim // 4},RFlat"))
        if faiss.get_num_gpus() > 0 and spec.startswith(("Flat", "IVF")):
            rows.extend(gpu_rows(x, q, truth, spec, param_sets[-1]))
        del store
    return rows


def build_store(x: np.ndarray, spec: str, params: str | None = None) -> FaissStore:
    n, dim = x.shape
    ids = np.arange(n, dtype=np.int64)
    store = FaissStore(dim, spec, params=params)
    store.train(x)
    for s in range(0, n, 100_000):
        store.add(ids[s : s + 100_000], x[s : s + 100_000])
    return store


def measure(rows: list[dict], fn, q: np.ndarray, truth: np.ndarray, row: dict) -> None:
    """Time fn at batch 64 and batch 1, add the row with its recall, checkpoint."""
    q64, found = qps(fn, q, 64, NQ)
    q1, _ = qps(fn, q, 1, NQ1)
    row.update(recall10=recall(found, truth), qps_b1=q1, qps_b64=q64)
    rows.append(row)
    RESULTS["rows"].append(row)
    checkpoint()
    log(f"    {row['spec']} {row['params']}: recall {row['recall10']:.3f} qps1 {q1:.0f} "
        f"qps64 {q64:.0f}")


def pq_variants(rows: list[dict], store: FaissStore, x: np.ndarray, q: np.ndarray,
                truth: np.ndarray, build: float, fp16: bool) -> None:
    """Rows for the PQ base without re-ranking and for a float16 re-ranking stage.

    Both reuse the trained base of the RFlat build and are searched through faiss
    directly: the benchmark's ids are 0..n-1, so the base's positions are the ids.
    """
    n, dim = x.shape
    refine = faiss.downcast_index(store.index.index)
    base = faiss.downcast_index(refine.base_index)
    ivf = faiss.extract_index_ivf(base)
    spec = store.spec.rsplit(",", 1)[0]  # IVFn,PQm
    base_bytes = index_bytes(base) + 8 * n
    ivf.nprobe = 16
    measure(rows, lambda b: base.search(b, K)[1], q, truth,
            {"engine": "faiss", "spec": spec, "params": "nprobe=16", "n": n, "dim": dim,
             "build_s": build, "bytes": base_bytes})
    if not fp16:
        return
    t0 = time.perf_counter()
    fp16 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                      faiss.METRIC_INNER_PRODUCT)
    fp16.add(x)
    both = faiss.IndexRefine(base, fp16)
    add_s = time.perf_counter() - t0
    size = base_bytes + index_bytes(fp16)
    p = ivf_nprobe(ivf.nlist)  # what --spec auto probes
    for kf in (16, 32, 64):
        ivf.nprobe = p
        both.k_factor = kf
        measure(rows, lambda b: both.search(b, K)[1], q, truth,
                {"engine": "faiss", "spec": f"{spec},Refine(SQfp16)",
                 "params": f"nprobe={p},k_factor_rf={kf}", "n": n, "dim": dim,
                 "build_s": build + add_s, "bytes": size})


def gpu_rows(x, q, truth, spec, params) -> list[dict]:
    n, dim = x.shape
    t0 = time.perf_counter()
    store = FaissStore(dim, spec, device="cuda")
    store.train(x)
    store.add(np.arange(n), x)
    if params:
        store.set_params(params)
    build = time.perf_counter() - t0
    q64, found = qps(lambda b: store.search(b, K)[1], q, 64, NQ)
    q1, _ = qps(lambda b: store.search(b, K)[1], q, 1, NQ1)
    return [{"engine": "faiss-gpu", "spec": spec, "params": params or "-", "n": n, "dim": dim,
             "build_s": build, "bytes": index_bytes(store.index),
             "recall10": recall(found, truth), "qps_b1": q1, "qps_b64": q64}]


def overhead(x: np.ndarray, q: np.ndarray, spec: str, params: str | None) -> dict:
    """FaissStore.search vs the IDMap2's own search, batch 1, same index, same queries."""
    n, dim = x.shape
    log(f"  overhead {spec} {params or ''}")
    store = build_store(x, spec, params)
    qn = normalize(q)
    raw = store.index

    def search_only(b):  # on pre-normalized queries
        return raw.search(b, K)[1]

    def direct(b):  # a cosine search in faiss itself: normalize a copy of the query, search
        c = b.copy()
        faiss.normalize_L2(c)
        return raw.search(c, K)[1]

    def wrapped(b):
        return store.search(b, K)[1]

    alone = paired(search_only, wrapped, qn)["direct_us1"]
    out = {"spec": spec, "params": params or "-", "n": n, "dim": dim,
           **paired(direct, wrapped, qn), "search_us1": alone}
    for clients, tag in ((THREADS, ""),):
        best_d, best_w = 0.0, 0.0
        for _ in range(3):  # interleaved repeats; keep the best of each (least disturbed)
            best_d = max(best_d, qps(direct, qn, 1, NQ, clients)[0])
            best_w = max(best_w, qps(wrapped, qn, 1, NQ, clients)[0])
        out.update({f"direct_qps{tag}": best_d, f"store_qps{tag}": best_w,
                    f"ratio{tag}": best_d / best_w})
    return out


def paired(direct, wrapped, q: np.ndarray, seconds: float = 4.0) -> dict:
    """Median time of one query, direct and through the store, timed in alternation.

    Each query is run both ways back to back (the order alternating), so a
    disturbance of the shared machine hits both sides alike; medians ignore
    the rest. Runs the queries round-robin for about `seconds`.
    """
    clock = time.perf_counter
    t_d, t_w = [], []
    end = clock() + seconds
    i = 0
    while clock() < end or i < 60:
        b = q[i % len(q) : i % len(q) + 1]
        pair = ((direct, t_d), (wrapped, t_w)) if i % 2 else ((wrapped, t_w), (direct, t_d))
        for fn, acc in pair:
            t0 = clock()
            fn(b)
            acc.append(clock() - t0)
        i += 1
    d, w = float(np.median(t_d)), float(np.median(t_w))
    return {"direct_us1": d * 1e6, "store_us1": w * 1e6, "ratio1": w / d, "pairs1": i}


MILVUS_HNSW = "HNSW:M=32,efConstruction=200,ef=64"


def milvus_specs(n: int, asked: str | None) -> list[str]:
    """Milvus Lite index specs to run at n vectors: FLAT, and HNSW up to 100k, unless asked."""
    if asked:
        return asked.split(";")
    return ["FLAT"] + ([MILVUS_HNSW] if n <= 100_000 else [])


def milvus_rows(x: np.ndarray, q: np.ndarray, truth: np.ndarray, tmp: Path,
                timeout: float, specs: list[str]) -> list[dict]:
    from latentsight.index.milvus_store import MilvusStore

    n, dim = x.shape
    nq = NQ if n <= 100_000 else 256
    nq1 = NQ1 if n <= 10_000 else 30
    rows = []
    for spec in specs:
        uri = str(tmp / f"bench_{n}_{dim}_{spec[:4]}.db")
        log(f"  milvus lite {spec} on {n} x {dim}")
        t0 = time.perf_counter()
        store = MilvusStore(dim, uri=uri, collection="bench", spec=spec)
        done = 0
        for s in range(0, n, 10_000):
            store.add(np.arange(s, min(s + 10_000, n)), x[s : s + 10_000])
            done = min(s + 10_000, n)
            if done < n and time.perf_counter() - t0 > timeout:
                break
        if done < n:
            dt = time.perf_counter() - t0
            RESULTS["notes"].append(
                f"- Milvus Lite {spec} at {n:,} x {dim}: stopped after inserting {done:,} "
                f"vectors in {dt:.0f} s ({done / dt:,.0f} vectors/s; --milvus-timeout "
                f"{timeout:.0f} s); the whole collection would take about "
                f"{n / (done / dt) / 60:.0f} min at that rate. No search row.")
            log(RESULTS["notes"][-1])
            store.close()
            checkpoint()
            continue
        store.flush()
        store.search(q[:1], K)  # first search waits for the index to be ready
        build = time.perf_counter() - t0
        log(f"    inserted, flushed and indexed in {build:.0f} s ({n / build:,.0f} vectors/s)")
        q64, found = qps(lambda b, st=store: st.search(b, K)[1], q[:nq], 64, nq)
        q1, _ = qps(lambda b, st=store: st.search(b, K)[1], q, 1, nq1)
        store.close()
        rows.append({"engine": "milvus-lite", "spec": spec, "params": "-", "n": n, "dim": dim,
                     "build_s": build, "bytes": None, "recall10": recall(found, truth[:nq]),
                     "qps_b1": q1, "qps_b64": q64, "queries": [nq, nq1]})
        RESULTS["rows"].append(rows[-1])
        checkpoint()
        log(f"    recall {rows[-1]['recall10']:.3f} qps1 {q1:.1f} qps64 {q64:.1f}")
    return rows


def render(rows: list[dict], over: list[dict], meta: dict) -> str:
    lines = [
        f"`python benchmarks/index.py` on {meta['machine']}, faiss {meta['faiss']}, "
        f"{meta['threads']} OpenMP threads, {meta['gpus']} GPU(s) seen by faiss"
        + (" (no GPU rows)." if not meta["gpus"] else "."),
        "",
        "Synthetic vectors: a Gaussian mixture (n/100 centres, at most 4,096), L2-normalized; "
        "dim 384 is the default AE's embedding size. The clusters are well separated, so "
        "IVF finds the true neighbours in few lists; this data may flatter IVF compared "
        "with real embeddings at the same nprobe. recall@10 against exact search "
        "over 1,000 held-out queries; queries/s at batch 64 (1,000 queries) and batch 1 "
        "(about 2 s of single calls, 30 to 1,000; 300 in the rows kept from the first run); "
        "Milvus Lite above 10k vectors: batch 1 over 30 calls, and above "
        "100k recall and batch 64 over 256 queries. "
        "IVF-PQ rows: one build per code size with exact re-ranking (`RFlat`, float32 "
        "copies; `k_factor_rf=16` re-ranks 16 x 10 PQ candidates); the row without "
        "re-ranking searches the same build's PQ base, and the `Refine(SQfp16)` rows "
        "(float16 copies, what `--spec auto` picks when memory is short) re-rank the same "
        "base's candidates, both through faiss directly. "
        "Batch 1 = single queries issued by as many client threads as OpenMP threads, faiss "
        "on one OpenMP thread per query. Memory = serialized index size (not measured for "
        "Milvus Lite). The machine's 2 cores were shared with other jobs (load average "
        f"{meta['load']} when this table was written; see the notes), so times carry noise "
        "of tens of percent.",
        "",
        "| engine | spec | search params | n | dim | build s | memory MiB | recall@10 "
        "| q/s batch 1 | q/s batch 64 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['spec']} | {r['params']} | {r['n']:,} | {r['dim']} | "
            f"{r['build_s']:.1f} | {_mib(r['bytes'])} | {r['recall10']:.3f} | "
            f"{_qps(r['qps_b1'])} | {_qps(r['qps_b64'])} |"
        )
    lines += ["", "Store-layer overhead (target <= 1.10): FaissStore.search against calling "
              "faiss directly for the same cosine search on the same IndexIDMap2 (faiss has no "
              "cosine metric: normalize_L2 on a copy of the query, then search), same queries; "
              "the time of the search alone on pre-normalized queries is shown beside it. "
              "One client: the median time of a single query, each query timed both ways back "
              "to back in alternating order for about 4 s, so that the shared machine's "
              "disturbances hit both sides alike. Two clients: queries/s from as many client "
              "threads as cores (best of 3 interleaved runs); there the store's few "
              "microseconds of Python hold the GIL while the other thread waits to return "
              "from faiss, so fast indexes show a larger ratio than the per-query cost "
              "alone:", "",
              "| spec | params | n | dim | search alone us/query, 1 client (median) | faiss "
              "directly us/query | store us/query | ratio | faiss directly q/s, 2 clients | "
              "store q/s | ratio |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for o in over:
        one = (f"{o['search_us1']:,.1f} | {o['direct_us1']:,.1f} | {o['store_us1']:,.1f} | "
               f"{o['ratio1']:.3f}" if "search_us1" in o else "- | - | - | -")
        lines.append(f"| {o['spec']} | {o['params']} | {o['n']:,} | {o['dim']} | {one} | "
                     f"{o['direct_qps']:,.0f} | {o['store_qps']:,.0f} | {o['ratio']:.3f} |")
    goal = [r for r in rows if r["n"] >= 1_000_000 and r["recall10"] >= 0.95
            and r["qps_b1"] >= 1000 and r["engine"] == "faiss"]
    lines += ["", "Goal (recall@10 >= 0.95 at >= 1,000 single queries/s on 1M vectors, "
              "2 cores): " + (", ".join(f"{g['spec']} {g['params']} (dim {g['dim']}, recall "
                                        f"{g['recall10']:.3f}, {g['qps_b1']:,.0f} q/s)"
                                        for g in goal) or "not met by any row in this run.")]
    lines += ["", *meta.get("notes", [])]
    return "\n".join(lines)


def _qps(v: float) -> str:
    return f"{v:.1f}" if v < 10 else f"{v:,.0f}"


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


FAMILIES = ("flat", "ivf", "pq", "hnsw", "milvus")


def family(row: dict) -> str:
    """Which family of the benchmark a row belongs to (a re-measured family replaces its rows).

    Milvus rows are one family per index type ("milvus:FLAT", "milvus:HNSW"), so that
    `--milvus-specs` can add one without dropping the other.
    """
    spec = row["spec"]
    if row["engine"].startswith("milvus"):
        return "milvus:" + spec.split(":")[0]
    if spec.startswith("HNSW"):
        return "hnsw"
    if ",PQ" in spec:
        return "pq"
    return "ivf" if spec.startswith("IVF") else "flat"


def _rank(row: dict) -> tuple:
    spec = row["spec"]
    sub = 2 if "SQfp16" in spec else 1 if "RFlat" in spec else 0
    return (row["n"], row["dim"], FAMILIES.index(family(row).split(":")[0]), sub, row["engine"])


def merged(old: list[dict], new: list[dict], ran: set[tuple[int, int, str]]) -> list[dict]:
    """Old rows of the families not re-measured, and the new rows, in table order."""
    keep = [r for r in old if (r["n"], r["dim"], family(r)) not in ran]
    return sorted(keep + new, key=_rank)


# --- issue 16: exact search at the machine's limit, and adds that do not grow with N ---------


def interleaved(fns: dict, arg_of, seconds: float) -> dict[str, float]:
    """Median seconds per call of each fn, the fns called in rotation (a shared machine's
    disturbances hit them alike); arg_of(i) gives the i-th call's argument."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for name in names:
        fns[name](arg_of(0))  # warm-up
    end, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or min(len(v) for v in times.values()) < 5:
        for name in names[i % len(names):] + names[: i % len(names)]:
            a = arg_of(i)
            t = time.perf_counter()
            fns[name](a)
            times[name].append(time.perf_counter() - t)
        i += 1
    return {k: float(np.median(v)) for k, v in times.items()}


def steady(fns: dict, arg_of, seconds: float, slice_s: float = 1.0) -> dict[str, float]:
    """Median seconds per call of each fn run alone for `slice_s` at a time (the slices in
    rotation, the first call of each left out): the steady state of a process that does
    one kind of search, where `interleaved` measures each call right after another's."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    end, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or min(len(v) for v in times.values()) < 5:
        for name, fn in fns.items():
            fn(arg_of(i))
            stop, calls = time.perf_counter() + slice_s, 0
            while time.perf_counter() < stop or calls < 2:
                i, calls = i + 1, calls + 1
                a = arg_of(i)
                t = time.perf_counter()
                fn(a)
                times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def exact_rows(jobs: list[tuple[int, int]], seconds: float) -> dict:
    """Flat search: faiss, numpy, torch (latentsight's exact_search) and FaissStore, beside
    the memory-read (batch 1) and GEMM (batch 64) bounds measured in the same run."""
    from benchmarks.limits import gemm_flops, memory_bandwidth

    lim = {"memory": memory_bandwidth(), "gemm": gemm_flops()}
    rows = []
    for i, (n, dim) in enumerate(jobs):  # the bounds again beside each job: this VM's
        if i:  # speed drifts by tens of percent over minutes
            lim = {"memory": memory_bandwidth(), "gemm": gemm_flops()}
        rows += exact_job(n, dim, seconds, lim)
    refine = refine_rows(100_000, 128, (16, 64), seconds / 2, lim)
    lim["load"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    from latentsight.index import store as store_mod

    blas = ", ".join(f"{k} {v}" for k, v in sorted(store_mod._BLAS.items()))
    return {"rows": rows, "refine": refine, "limits": lim, "blas": blas}


def blocks_before(xb: object, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """exact_search's batch kernel before issue 16's last change (the same-run baseline):
    numpy's product in blocks of <= 64 MiB of scores on OpenBLAS's own threads, each block
    reduced by torch.topk, the blocks' top k merged."""
    import torch

    x, n, nq = xb.numpy(), int(xb.shape[0]), len(q)
    rows = max(4096, (1 << 24) // nq)
    vs, js = [], []
    with torch.no_grad():
        for b0 in range(0, n, rows):
            v, j = torch.topk(torch.from_numpy(q @ x[b0 : b0 + rows].T), min(k, n - b0), dim=1)
            vs.append(v)
            js.append(j + b0)
        v, j = torch.topk(torch.cat(vs, 1), k, dim=1)
    return v.numpy(), torch.gather(torch.cat(js, 1), 1, j).numpy()


def forced(xt: object, b: np.ndarray, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """exact_search with its kernel set (LATENTSIGHT_EXACT_BLAS) instead of measured."""
    from latentsight.index.store import BLAS_ENV, exact_search

    before = os.environ.get(BLAS_ENV)
    os.environ[BLAS_ENV] = kernel
    try:
        return exact_search(xt, b, K, metric="ip")
    finally:
        if before is None:
            del os.environ[BLAS_ENV]
        else:
            os.environ[BLAS_ENV] = before


def exact_job(n: int, dim: int, seconds: float, lim: dict) -> list[dict]:
    import torch
    from latentsight.index.store import exact_search

    log(f"exact {n} x {dim}")
    x, q = make_data(n, dim)
    raw = faiss.IndexFlatIP(dim)
    raw.add(x)
    store = FaissStore(dim, "Flat", metric="ip")  # data already normalized: ip = cosine
    for s in range(0, n, 100_000):
        store.add(np.arange(s, min(n, s + 100_000)), x[s : s + 100_000])
    xt = torch.from_numpy(x)

    def np_search(b):
        sc = b @ x.T
        top = np.argpartition(-sc, K, axis=1)[:, :K]
        return np.take_along_axis(sc, top, 1)

    fns = {"faiss IndexFlatIP": lambda b: raw.search(b, K),
           "numpy GEMM + argpartition": np_search,
           "numpy, 64 MiB blocks on OpenBLAS's threads + torch.topk (before)":
               lambda b: blocks_before(xt, b, K),
           "exact_search": lambda b: exact_search(xt, b, K, metric="ip"),
           "exact_search, numpy on OpenBLAS's threads forced": lambda b: forced(xt, b, "numpy"),
           "exact_search, torch on a thread per core forced": lambda b: forced(xt, b, "torch"),
           "FaissStore Flat": lambda b: store.search(b, K)}
    rows = []
    for batch in (1, 64):
        def arg(i, b=batch):
            s = (i * b) % (len(q) - b)
            return q[s : s + b]

        t = interleaved(fns, arg, seconds)
        st = steady(fns, arg, seconds)
        if batch == 1:
            bound, bound_by = lim["memory"]["read_GBps"] * 1e9 / (n * dim * 4), "memory read"
        else:
            bound, bound_by = lim["gemm"]["GFLOPs"] * 1e9 / (2 * n * dim), "GEMM"
        fastest = min(t[k] for k in fns if k != "FaissStore Flat")
        st_fastest = min(st[k] for k in fns if k != "FaissStore Flat")
        for name, sec in t.items():
            rows.append({"n": n, "dim": dim, "batch": batch, "method": name,
                         "bound_unit": (lim["memory"]["read_GBps"] if batch == 1
                                        else lim["gemm"]["GFLOPs"]),
                         "qps": batch / sec, "bound_qps": bound, "bound_by": bound_by,
                         "of_bound": batch / sec / bound, "vs_fastest_raw": sec / fastest,
                         "steady_qps": batch / st[name], "steady_of_bound": batch / st[name]
                         / bound, "steady_vs_fastest_raw": st[name] / st_fastest})
        log(f"  batch {batch}: " + ", ".join(f"{k} {batch / v:.0f} q/s" for k, v in t.items())
            + f"; bound {bound:.0f}; steady: "
            + ", ".join(f"{k} {batch / v:.0f}" for k, v in st.items()))
    return rows


def delta_rows(sizes: list[int], dim: int, adds: int, reps: int, full_reps: int) -> dict:
    """Adding `adds` vectors to a saved index of N: open (lazy, as ingest does) + add + save
    through the delta, beside the whole-file rewrite every ingest did before."""
    from latentsight.index.store import delta_path

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="ls-delta-"))
    rng = np.random.default_rng(1)
    for n in sizes:
        log(f"delta: index of {n} x {dim}")
        path = tmp / f"i{n}.faiss"
        store = FaissStore(dim, "Flat")
        for s in range(0, n, 100_000):
            m = min(n, s + 100_000) - s
            store.add(np.arange(s, s + m), rng.standard_normal((m, dim), dtype=np.float32))
        store.save(path)
        del store
        new = rng.standard_normal((adds, dim), dtype=np.float32)
        times = {"delta": [], "full": []}
        next_id = n
        for r in range(max(reps, full_reps)):
            if r < reps:
                delta_path(path).unlink(missing_ok=True)  # each rep: a fresh, empty delta
                t = time.perf_counter()
                st = FaissStore.load(path, metric="cosine", lazy=True)
                st.add(np.arange(next_id, next_id + adds), new)
                st.save(path)
                times["delta"].append(time.perf_counter() - t)
                next_id += adds
                assert st._lazy is not None and st.delta_size == adds
                del st
            if r < full_reps:  # the old path: read the whole index, add, write it whole
                delta_path(path).unlink(missing_ok=True)
                t = time.perf_counter()
                st = FaissStore.load(path, metric="cosine")
                st.add(np.arange(next_id, next_id + adds), new)
                st.compact(path)
                times["full"].append(time.perf_counter() - t)
                next_id += adds
                del st
        rows.append({"n": n, "dim": dim, "adds": adds,
                     "delta_ms": 1e3 * float(np.median(times["delta"])),
                     "full_ms": 1e3 * float(np.median(times["full"])),
                     "file_mib": path.stat().st_size / 2**20, "reps": reps,
                     "full_reps": full_reps})
        log(f"  {rows[-1]}")
        for p in tmp.glob(f"i{n}.faiss*"):
            p.unlink()
    base = rows[0]["delta_ms"]
    for r in rows:
        r["ratio_vs_smallest"] = r["delta_ms"] / base
    return {"rows": rows}


def refine_rows(n: int, dim: int, k_factors: tuple[int, ...], seconds: float, lim: dict
                ) -> list[dict]:
    """The refine stage of IVF-PQ + RFlat: its time per query (the refined search minus its
    base search at k * k_factor, timed in rotation) beside the memory-read bound of the
    candidate rows it scores (k * k_factor * d * 4 bytes per query), and beside numpy
    gathering the same rows (a random-access reference measured in the same run)."""
    x, q = make_data(n, dim)
    index = faiss.index_factory(dim, f"IVF{max(64, n // 400)},PQ{dim // 8},RFlat",
                                faiss.METRIC_INNER_PRODUCT)
    index.train(x[: min(n, 50_000)])
    index.add(x)
    refine = faiss.downcast_index(index)
    base = faiss.downcast_index(refine.base_index)
    base.nprobe = 16
    batch = 256
    rows = []
    for kf in k_factors:
        refine.k_factor = kf
        cand = base.search(q[:batch], K * kf)[1]

        def arg(i: int) -> np.ndarray:
            s = (i * batch) % (len(q) - batch)
            return q[s : s + batch]

        fns = {"refined": lambda b: index.search(b, K),
               "base": lambda b, kk=K * kf: base.search(b, kk),
               "gather": lambda b, c=cand: x[c.ravel()].sum()}
        t = interleaved(fns, arg, seconds)
        per_q = max(t["refined"] - t["base"], 1e-12) / batch
        nbytes = K * kf * dim * 4
        bound = nbytes / (lim["memory"]["read_GBps"] * 1e9)
        rows.append({"n": n, "dim": dim, "k_factor": kf, "candidates": K * kf,
                     "refine_us": per_q * 1e6, "base_us": t["base"] / batch * 1e6,
                     "gather_us": t["gather"] / batch * 1e6, "bound_us": bound * 1e6,
                     "of_bound": bound / per_q})
        log(f"  refine k_factor {kf}: {per_q * 1e6:.1f} us/query (bound {bound * 1e6:.1f})")
    return rows


def render_exact(res: dict) -> str:
    lim = res["limits"]
    lines = [
        "`python benchmarks/index.py --exact` — exact (Flat) search, k=10, on normalized",
        "Gaussian-mixture vectors, every method timed in rotation with the others (medians",
        "per call; the machine is shared by other jobs, so absolute figures move between",
        f"runs, ratios much less; load average at the end {lim.get('load', '?')} on 2 cores).",
        "Bounds measured in the same run just before each N x d (benchmarks/limits.py, the",
        "best of one call on every thread and one slice per core on one thread each; this",
        "VM's speed drifts by tens of percent over minutes): memory read (batch 1 reads",
        "N*d*4 bytes per query) and GEMM (batch 64: 2*N*d flops per query) "
        + ", ".join(sorted({f"{r['bound_unit']:.0f} {'GB/s' if r['batch'] == 1 else 'GFLOP/s'}"
                            f" at {r['n']:,} x {r['dim']}" for r in res["rows"]}))
        + ".",
        "`exact_search` (latentsight's) runs one of two kernels, whichever this machine runs",
        "faster, measured once per process for single queries and for batches, small and",
        f"large indexes (chosen here: {res.get('blas', '?')}): numpy's BLAS on its own",
        "(OpenBLAS's) threads from the calling thread, or torch's BLAS on one thread per core,",
        "the rows split into one span per core, each on its own thread (single queries: one",
        "span either way). The rows go in blocks whose score block stays in cache (2 MiB;",
        "32k rows for single queries), and a block's scores only reach the top k through a",
        "compare with each query's k-th best so far (the first, small block seeds it; the",
        "candidates are merged in batches), so the top k costs a fraction of the product.",
        "The `(before)` row is session 9's batch kernel (numpy on OpenBLAS's threads in 64",
        "MiB score blocks, torch.topk of each), in the same run.",
        "`FaissStore Flat` is the store (exact_search over a no-copy view of faiss's rows);",
        "`vs fastest` is its time per call over the fastest raw method's (<= 1.10 wanted).",
        "Reading (session 10, this table, the AMD EPYC VM): the filtered top k is what",
        "gained. At 1M x 128, where torch.topk over 64 MiB blocks cost as much as the",
        "product, batches run 1.3-1.65x faster than session 9's kernel in the same run (0.53",
        "/ 0.66 of the GEMM bound, rotation / steady, against 0.40 / 0.40); at 100k x 384",
        "0.57 / 0.69 against 0.54 / 0.62; at 10k x 384, where a block's fixed costs weigh",
        "most, 0.46 / 0.54 against 0.52 / 0.58. The `numpy ... forced` row runs the same",
        "kernel as `exact_search` on this VM: the gap between the two (up to 0.08) is the",
        "noise of a run. **The 0.8 asked for is not reached** (best: 0.73 at 100k x 384,",
        "steady). Tried and not kept: numpy's BLAS on one thread per core, each on its own",
        "thread (0.70-0.88 at 1M x 128 in steady state, but half of that right after a call",
        "that woke OpenBLAS's own threads, which spin ~0.1 s after each call; and",
        "threadpoolctl lets only the first thread that limited OpenBLAS change it back, so",
        "concurrent searches left the process on one BLAS thread: a test now guards that).",
        "The top k is numpy's (argpartition), not torch.topk: torch's threads and OpenBLAS's,",
        "each spinning after its own call, made alternating calls 2.5x slower (10k x 384:",
        "11 ms against 4.2 with torch on one thread). Single queries: 0.51-0.71 of the",
        "memory-read bound in rotation, 0.64-0.77 steady at 100k-1M rows (the 10k x 384",
        "rows fit in the caches: 1.43). faiss's own Flat is 2.3-6.6x slower in rotation.",
        "FaissStore: within 0.99-1.12 of the fastest raw method in rotation except 10k",
        "single queries (1.40: its per-call filter and id work on a 0.4 ms search).",
        "Two ways of timing: `rotation`, each call right after another method's (what a",
        "search meets in a process doing other BLAS work: OpenBLAS's and OpenMP's idle",
        "threads spin for a while after their call and hold a core), and `steady`, each",
        "method alone for 1 s at a time, the slices in rotation (a process doing one kind",
        "of search).",
        "",
        "| N x d | batch | method | bound (q/s) | queries/s, rotation | of bound | "
        "time vs fastest raw | queries/s, steady | of bound | time vs fastest raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        name = f"**{r['method']}**" if r["method"] == "FaissStore Flat" else r["method"]
        lines.append(f"| {r['n']:,} x {r['dim']} | {r['batch']} | {name} | "
                     f"{r['bound_qps']:,.0f} ({r['bound_by']}) | {r['qps']:,.0f} | "
                     f"{r['of_bound']:.2f} | {r['vs_fastest_raw']:.2f} | "
                     f"{r['steady_qps']:,.0f} | {r['steady_of_bound']:.2f} | "
                     f"{r['steady_vs_fastest_raw']:.2f} |")
    if res.get("refine"):
        lines += [
            "",
            "The refine stage (faiss's own `RFlat` re-ranking of IVF-PQ candidates, not a",
            "BLAS call): per query, the refined search minus its base search at k x k_factor",
            "candidates (batches of 256, timed in rotation), beside the memory-read bound of",
            "the candidate rows it reads (k x k_factor x d x 4 bytes at the bandwidth above)",
            "and numpy gathering and summing the same rows (random access, same run).",
            "",
            "| N x d | k_factor | candidates | refine (us/query) | bound (us) | of bound | "
            "numpy gather (us) | base search (us) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["refine"]:
            lines.append(f"| {r['n']:,} x {r['dim']} | {r['k_factor']} | {r['candidates']} | "
                         f"{r['refine_us']:.1f} | {r['bound_us']:.1f} | {r['of_bound']:.2f} | "
                         f"{r['gather_us']:.1f} | {r['base_us']:.1f} |")
    return "\n".join(lines) + "\n"


def render_delta(res: dict) -> str:
    rows = res["rows"]
    lines = [
        f"`python benchmarks/index.py --delta` — adding {rows[0]['adds']} vectors (dim "
        f"{rows[0]['dim']}) to a saved",
        "Flat index of N, the store part of an ingest: open as ingest does (lazily: the",
        "sorted id list and the delta, not the main file), add, save",
        "(the delta file: temp + fsync + rename). Beside it, the whole-file path every ingest",
        "took before (read the index, add, write it whole + fsync). Medians of the repeats",
        "shown; synthetic vectors; page cache warm (the index was just written).",
        "",
        "| N | index file | add via delta (ms) | ratio vs smallest N | whole-file rewrite (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['file_mib']:,.0f} MiB | {r['delta_ms']:.1f} "
                     f"({r['reps']}x) | {r['ratio_vs_smallest']:.2f} | {r['full_ms']:,.0f} "
                     f"({r['full_reps']}x) |")
    return "\n".join(lines) + "\n"


def main16(args) -> None:
    from benchmarks.report import replace_section

    out = ROOT / "benchmarks" / "results"
    if args.exact:
        if args.render:  # only the text again, from the last run's figures
            res = json.loads((out / "index_exact.json").read_text())
        else:
            jobs = [tuple(int(v) for v in j.split("x")) for j in args.exact_jobs.split(",")]
            res = exact_rows(jobs, args.seconds)
            (out / "index_exact.json").write_text(json.dumps(res, indent=2) + "\n")
        text = render_exact(res)
        print(text)
        if not args.no_doc:
            replace_section("Exact search at the limit (issue 16)", text)
    if args.delta:
        sizes = [int(v) for v in args.delta_sizes.split(",")]
        res = delta_rows(sizes, 384, 100, reps=7, full_reps=2)
        (out / "index_delta.json").write_text(json.dumps(res, indent=2) + "\n")
        text = render_delta(res)
        print(text)
        if not args.no_doc:
            replace_section("Incremental adds (issue 16)", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="10000x128,10000x384,100000x128,100000x384,1000000x128",
                    help="NxDIM runs, in order (384 = the default AE's embed_dim)")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="which index families to run in every job")
    ap.add_argument("--milvus-max", type=int, default=1_000_000)
    ap.add_argument("--milvus-timeout", type=float, default=1800,
                    help="seconds of Milvus Lite inserting before giving up (the rate is noted)")
    ap.add_argument("--milvus-specs", default=None,
                    help="Milvus Lite specs separated by ';' (default: FLAT, and "
                    f"{MILVUS_HNSW} up to 100k vectors)")
    ap.add_argument("--overhead", action="store_true",
                    help="measure the store-layer overhead at the first 100000x128 job "
                    "(always when not appending)")
    ap.add_argument("--drop-dims", default="",
                    help="with --append: remove the old rows of these dims (e.g. 640)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in benchmarks/results/index.json; a family "
                    "re-measured at the same n x dim replaces its old rows")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the docs section from benchmarks/results/index.json "
                         "(with --exact: from index_exact.json)")
    ap.add_argument("--exact", action="store_true",
                    help="only the exact-search rows (faiss, numpy, torch, FaissStore vs bounds)")
    ap.add_argument("--exact-jobs", default="10000x384,100000x384,1000000x128")
    ap.add_argument("--seconds", type=float, default=6.0, help="--exact: seconds per row set")
    ap.add_argument("--delta", action="store_true",
                    help="only the incremental-add rows (100 vectors into 10k/100k/1M)")
    ap.add_argument("--delta-sizes", default="10000,100000,1000000")
    args = ap.parse_args()
    if args.exact or args.delta:
        faiss.omp_set_num_threads(args.threads)
        main16(args)
        return
    global THREADS
    THREADS = args.threads
    faiss.omp_set_num_threads(args.threads)
    jobs = [tuple(int(v) for v in j.split("x")) for j in args.jobs.split(",")]
    families = set(args.families.split(","))
    old_rows, over, notes, old_meta = [], [], [], {}
    if args.append or args.render:
        old = json.loads(OUT.read_text())
        drop = {int(d) for d in args.drop_dims.split(",") if d}
        old_rows = [r for r in old["rows"] if r["dim"] not in drop]
        over, notes, old_meta = old["overhead"], old.get("notes", []), old.get("meta", {})
        jobs = [] if args.render else jobs
    new_rows: list[dict] = []
    ran: set[tuple[int, int, str]] = set()
    RESULTS.update(rows=new_rows, overhead=over, notes=notes, old_rows=old_rows, ran=ran,
                   meta=old_meta)
    tmp = Path(tempfile.mkdtemp(prefix="ls-bench-"))
    want_overhead = args.overhead or not args.append
    for n, dim in jobs:
        log(f"data {n} x {dim}")
        x, q = make_data(n, dim)
        truth = ground_truth(x, q)
        specs = milvus_specs(n, args.milvus_specs)
        ran |= {(n, dim, f) for f in families if f != "milvus"}
        faiss_rows(x, q, truth, families)  # appends to RESULTS["rows"]
        if "milvus" in families and n <= args.milvus_max:
            ran |= {(n, dim, "milvus:" + s.split(":")[0]) for s in specs}
            milvus_rows(x, q, truth, tmp, args.milvus_timeout, specs)
        if n == 100_000 and dim == 128 and want_overhead:
            log("store overhead")
            over.clear()
            auto = choose_spec(n, dim, memory_budget=1 << 62)
            over.append(overhead(x, q, "Flat", None))
            over.append(overhead(x, q, auto.spec, auto.params))
            over.append(overhead(x, q, "HNSW32", "efSearch=64"))
            over.append(overhead(x, q, f"IVF{ivf_lists(n)},PQ{dim // 8},RFlat",
                                 "nprobe=16,k_factor_rf=16"))
            want_overhead = False
            checkpoint()
        del x, q, truth
        checkpoint()
    rows = merged(old_rows, new_rows, ran)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores",
            "faiss": faiss.__version__, "threads": args.threads, "gpus": faiss.get_num_gpus(),
            "notes": notes, "load": load if jobs else old_meta.get("load", load)}
    OUT.write_text(json.dumps({"rows": rows, "overhead": over, "notes": notes, "meta": meta},
                              indent=2))
    text = render(rows, over, meta)
    print(text)
    if not args.no_doc:
        replace_section("Index (issue 5)", text)


if __name__ == "__main__":
    main()
