"""Beyond one machine: a Milvus server vs Milvus Lite vs FAISS, and Ray scans vs the local engine.

    eval "$(.ci/start-milvus.sh)"; eval "$(.ci/start-ray.sh)"
    nice -n 5 python benchmarks/scaling.py [--n 100000] [--dim 128] [--images 96] [--write]

Protocol:
1. Stores: N L2-normalized vectors (a mixture of Gaussians, as benchmarks/index.py),
   FLAT (exact) on every backend, cosine, through latentsight's own store classes.
   Insert = add in the stores' batches + flush (Milvus) or nothing (FAISS keeps RAM);
   queries/s at batch 1 (20 single queries: the dashboard's and the CLI's case) and at
   batch 64 (192 queries), and one filtered search (a third of the vectors match).
   recall@10 against FAISS Flat (all three are exact: it should read 1.000).
2. Ray: one folder of `--images` 32x32 textures scanned with the same calibrated model by
   the local engine, then by the Ray engine with 1 and 2 actors (each node of the local
   cluster has 1 CPU). Wall time of the whole scan call, actor start-up included.
With --write the tables replace the "Measured here" section of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MARK = "## Measured here"


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(64, min(4096, n // 100)), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_store(name: str, make, x: np.ndarray, q: np.ndarray, truth: np.ndarray) -> dict:
    from latentsight.index.store import Filter

    ids = np.arange(len(x), dtype=np.int64)
    meta = [{"label": ("a", "b", "c")[i % 3], "source": "s", "synthetic": False}
            for i in range(len(x))]
    t = time.perf_counter()
    store = make()
    for s in range(0, len(x), 10_000):
        store.add(ids[s : s + 10_000], x[s : s + 10_000], meta[s : s + 10_000])
        print(f"  {name}: {s + 10_000} added", file=sys.stderr, flush=True)
    store.flush()
    insert = time.perf_counter() - t
    store.search(q[:2], 10)  # warm
    t = time.perf_counter()
    for i in range(20):
        store.search(q[i : i + 1], 10)
    single = 20 / (time.perf_counter() - t)
    t = time.perf_counter()
    found = np.concatenate([store.search(q[s : s + 64], 10)[1] for s in range(0, 192, 64)])
    batch = 192 / (time.perf_counter() - t)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth[:192], strict=True)])
    t = time.perf_counter()
    _, fl = store.search(q[:10], 10, filter=Filter.of(labels="b"))
    filtered = 10 / (time.perf_counter() - t)
    assert (fl % 3 == 1).all()
    store.close()
    row = {"backend": name, "insert_s": insert, "single_qps": single, "batch64_qps": batch,
           "filtered_qps": filtered, "recall@10": recall}
    print(row, file=sys.stderr, flush=True)
    return row


def stores(n: int, dim: int, tmp: Path) -> list[dict]:
    from latentsight.index.catalog import Catalog
    from latentsight.index.manager import catalog_resolver
    from latentsight.index.milvus_store import MilvusStore
    from latentsight.index.store import FaissStore

    x = vectors(n, dim)
    q = vectors(200, dim, seed=1)
    truth = (q @ x.T).argsort(axis=1)[:, ::-1][:, :10]
    catalog = Catalog(f"sqlite:///{tmp / 'c.db'}")  # FAISS resolves the filter through it
    catalog.add_images([{"sha256": f"{i:064x}", "path": f"/x/{i}", "byte_size": 1, "width": 1,
                         "height": 1, "mode": "L", "format": "PNG",
                         "label": ("a", "b", "c")[i % 3], "source": "s"} for i in range(n)])
    # catalog ids are 1-based: shift the store's ids to match
    rows = []

    def faiss():
        store = FaissStore(dim, "Flat", resolver=lambda f: catalog_resolver(catalog)(f) - 1)
        return store

    rows.append(bench_store("FAISS Flat (in process)", faiss, x, q, truth))
    rows.append(bench_store("Milvus Lite FLAT (embedded)", lambda: MilvusStore(
        dim, uri=str(tmp / "lite.db"), collection="bench", spec="FLAT"), x, q, truth))
    uri = os.environ.get("LATENTSIGHT_TEST_MILVUS_URI")
    if uri:
        def server():
            from latentsight.index.milvus_store import _connect

            c = _connect(uri, None)
            if c.has_collection("t_bench"):
                c.drop_collection("t_bench")
            return MilvusStore(dim, uri=uri, collection="t_bench", spec="FLAT", client=c)

        rows.append(bench_store("Milvus 2.3.5 server FLAT (loopback gRPC)", server, x, q,
                                truth))
        from tests.milvus_server import clean

        clean(uri, ("t_bench",))
    catalog.close()
    return rows


def ray_scans(images: int, tmp: Path) -> list[dict]:
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.ray_engine import scan_paths_ray
    from latentsight.index.scan import scan_paths
    from latentsight.training.anomaly import train_scorer
    from latentsight.training.train import TrainConfig
    from PIL import Image

    from tests.imagegen import normal_textures, write_normal_folder

    home = Home(tmp / "home")
    ingest_paths(home, [write_normal_folder(tmp / "good", n=40, seed=1)], label="good",
                 progress=False, workers=0)
    cfg = TrainConfig(epochs=20, batch_size=16, lr=3e-3, patience=20, name="bench",
                      device="cpu", model_config={"image_size": 16, "depth": 2, "width": 16,
                                                  "latent_dim": 32})
    train_scorer(home, "good", cfg, fpr=0.1, progress=False, workers=0)
    folder = tmp / "scan"
    folder.mkdir()
    for i, img in enumerate(normal_textures(images, seed=5)):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    address = os.environ.get("LATENTSIGHT_TEST_RAY_ADDRESS")
    runs = [("local engine (this process)", lambda: scan_paths(
        home, [folder], device="cpu", progress=False, k_neighbors=0))]
    if address:
        for n in (1, 2):
            runs.append((f"Ray, {n} actor(s)", lambda n=n: scan_paths_ray(
                home, [folder], address=address, workers=n, device="cpu", progress=False,
                k_neighbors=0)))
    rows, ref = [], None
    for name, fn in runs:
        t = time.perf_counter()
        s = fn()
        wall = time.perf_counter() - t
        scores = {r.path: r.score for r in s.results}
        same = ref is None or all(abs(scores[p] - v) <= 1e-5 * max(1, abs(v))
                                  for p, v in ref.items())
        ref = ref or scores
        rows.append({"engine": name, "images": len(s.results), "wall_s": wall,
                     "images_per_s": len(s.results) / wall, "same_scores": same})
        print(rows[-1], file=sys.stderr, flush=True)
    home.close()
    return rows


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) and v < 10 else (  # noqa: E731
        f"{v:,.1f}" if isinstance(v, float) else str(v))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--skip-stores", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lt-scaling-"))
    try:
        parts = []
        if not args.skip_stores:
            parts.append(f"Vector stores, {args.n:,} x {args.dim} vectors, FLAT, cosine, k=10:\n\n"
                         + table(stores(args.n, args.dim, tmp)))
        if not args.skip_ray:
            parts.append(f"Anomaly scan of {args.images} 32x32 images (16 px model), local "
                         "Ray cluster of 2 one-CPU nodes on loopback:\n\n"
                         + table(ray_scans(args.images, tmp)))
        text = "\n\n".join(parts)
        print(text)
        if args.write:
            doc = (ROOT / "docs" / "scaling.md").read_text()
            head = doc.split(MARK)[0].rstrip()
            rest = doc.split(MARK)[1].split("\n## ", 1) if MARK in doc else ["", ""]
            tail = ("\n\n## " + rest[1]) if len(rest) > 1 else ""
            (ROOT / "docs" / "scaling.md").write_text(
                f"{head}\n\n{MARK} (benchmarks/scaling.py)\n\n{text}\n{tail}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
