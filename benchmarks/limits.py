"""What this machine can do: the limits every speed figure is read against.

    python benchmarks/limits.py [--data ../shared/datasets/neu-cls] [--no-write]

Measures, in this process:
1. Memory bandwidth: a 256 MiB float32 array summed (read) and copied
   (read + write), numpy and torch; GB/s counts the bytes touched.
2. GEMM: float32 2048x2048 @ 2048x2048, torch and numpy -> GFLOP/s (2 n^3 / t),
   and the BLAS kernels threadpoolctl reports for every loaded BLAS.
3. Image decode with Pillow, from bytes already in memory: NEU-CLS JPEGs
   (or generated 200x200 JPEG/PNG when the data set is absent), full decode
   and `Image.draft` reduced-size decode (JPEG DCT scaling to >= 64 px, the
   size the default model reads), converted to grayscale -> images/s.
4. SHA-256 of a 64 MiB buffer -> GB/s, and images/s at the data set's mean
   file size.
Each figure is the median of 5 timed repeats (the machine is shared: medians
and paired runs, never a single timing). Results go to
benchmarks/results/limits.json and the "Limits (issue 16)" section of
docs/benchmarks.md. Other benchmarks call these functions to state their
bound measured in their own run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "neu-cls"


def median_time(fn: Callable[[], object], repeats: int = 5, min_s: float = 0.05) -> float:
    """Median seconds of one call of fn (each repeat loops until min_s has passed)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        times.append(dt / n)
    return statistics.median(times)


def memory_bandwidth(mib: int = 256) -> dict[str, float]:
    """GB/s for a large read (sum) and copy (read + write), numpy and torch."""
    import torch

    a = np.ones(mib * 2**18, np.float32)  # mib MiB
    b = np.empty_like(a)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    nbytes = a.nbytes
    out = {
        "numpy_sum_GBps": nbytes / median_time(lambda: a.sum()) / 1e9,
        "numpy_copy_GBps": 2 * nbytes / median_time(lambda: np.copyto(b, a)) / 1e9,
        "torch_sum_GBps": nbytes / median_time(lambda: ta.sum()) / 1e9,
        "torch_copy_GBps": 2 * nbytes / median_time(lambda: tb.copy_(ta)) / 1e9,
    }
    out["per_core_sum_GBps"] = _read_per_core(ta)
    out["read_GBps"] = max(out["numpy_sum_GBps"], out["torch_sum_GBps"],
                           out["per_core_sum_GBps"])
    return out


def _read_per_core(ta: object) -> float:
    """GB/s of summing `ta` in one slice per core at once, each on one torch thread."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    n_cores = len(os.sched_getaffinity(0))
    parts = ta.chunk(n_cores)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(n_cores) as ex:
            sec = median_time(lambda: list(ex.map(lambda p: p.sum(), parts)))
    finally:
        torch.set_num_threads(before)
    return ta.numel() * ta.element_size() / sec / 1e9


def gemm_flops(n: int = 2048) -> dict[str, float]:
    """GFLOP/s of a float32 n x n matrix product, torch and numpy."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    y = rng.standard_normal((n, n), dtype=np.float32)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    flop = 2 * n**3
    out = {
        "torch_GFLOPs": flop / median_time(lambda: tx @ ty, repeats=5, min_s=0.2) / 1e9,
        "numpy_GFLOPs": flop / median_time(lambda: x @ y, repeats=5, min_s=0.2) / 1e9,
        "torch_per_core_GFLOPs": _gemm_per_core(tx, ty),
    }
    out["GFLOPs"] = max(out["torch_GFLOPs"], out["numpy_GFLOPs"],
                        out["torch_per_core_GFLOPs"])
    return out


def _gemm_per_core(tx: object, ty: object) -> float:
    """GFLOP/s of one product per core at once, each on one torch thread (how
    latentsight's exact search runs its chunks; on a loaded machine often faster than
    one product on every thread)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    n_cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(n_cores) as ex:
            def run() -> None:
                list(ex.map(lambda _i: tx @ ty, range(n_cores)))

            sec = median_time(run, repeats=5, min_s=0.2)
    finally:
        torch.set_num_threads(before)
    return n_cores * 2 * tx.shape[0] ** 3 / sec / 1e9


def blas_kernels() -> list[dict[str, object]]:
    """Every BLAS/OpenMP library loaded in this process (after importing faiss and torch)."""
    import faiss  # noqa: F401 - loads its bundled OpenBLAS
    import torch  # noqa: F401
    from threadpoolctl import threadpool_info

    out = [{"lib": Path(i["filepath"]).name, "api": i["internal_api"],
            "kernel": i.get("architecture"), "threads": i["num_threads"]}
           for i in threadpool_info()]
    mkl = "MKL" if "Math Kernel Library" in torch.__config__.parallel_info() else "?"
    out.append({"lib": "torch (ATen)", "api": "blas", "kernel": mkl,
                "threads": torch.get_num_threads()})
    return out


def sample_images(data: Path, n: int = 200) -> tuple[list[bytes], str]:
    """n JPEG files' bytes from the data set, or generated ones; and where they came from."""
    every = sorted(data.rglob("*.jpg")) if data.is_dir() else []
    files = every[:: max(1, len(every) // n)][:n]
    if files:
        return [f.read_bytes() for f in files], f"NEU-CLS ({len(files)} JPEGs, 200x200)"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        px = (rng.random((200, 200, 3)) * 64 + np.linspace(0, 160, 200)[:, None, None])
        buf = io.BytesIO()
        Image.fromarray(px.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, f"generated ({n} JPEGs, 200x200)"


def decode_rates(blobs: list[bytes], size: int = 64) -> dict[str, float]:
    """Pillow images/s from in-memory bytes: full decode, draft decode, and PNG for reference."""
    from PIL import Image

    def full() -> None:
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                im.convert("L").load()

    def draft() -> None:
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                im.draft("L", (size, size))  # DCT scaling: 1/2, 1/4, 1/8 while >= size
                im.convert("L").load()

    pngs = []
    for b in blobs[:50]:
        with Image.open(io.BytesIO(b)) as im:
            buf = io.BytesIO()
            im.save(buf, "PNG")
            pngs.append(buf.getvalue())

    def png() -> None:
        for b in pngs:
            with Image.open(io.BytesIO(b)) as im:
                im.convert("L").load()

    return {
        "jpeg_full_ips": len(blobs) / median_time(full, repeats=5, min_s=0.1),
        "jpeg_draft_ips": len(blobs) / median_time(draft, repeats=5, min_s=0.1),
        "png_full_ips": len(pngs) / median_time(png, repeats=5, min_s=0.1),
        "mean_file_bytes": float(np.mean([len(b) for b in blobs])),
    }


def sha256_rate(mib: int = 64) -> float:
    """GB/s of hashlib.sha256 over a large buffer."""
    buf = os.urandom(mib * 2**20)
    return len(buf) / median_time(lambda: hashlib.sha256(buf).digest(), min_s=0.2) / 1e9


def measure(data: Path = DEFAULT_DATA) -> dict[str, object]:
    """All the limits, measured now in this process."""
    import torch

    blobs, where = sample_images(data)
    res: dict[str, object] = {
        "machine": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
        "memory": memory_bandwidth(), "gemm": gemm_flops(), "blas": blas_kernels(),
        "decode": {**decode_rates(blobs), "images": where},
        "sha256_GBps": sha256_rate(),
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    dec = res["decode"]
    res["sha256_ips"] = res["sha256_GBps"] * 1e9 / dec["mean_file_bytes"]
    # decode + hash, one after the other in one process, per image
    for kind in ("full", "draft"):
        per = 1 / dec[f"jpeg_{kind}_ips"] + 1 / res["sha256_ips"]
        res[f"decode_hash_{kind}_ips_per_core"] = 1 / per
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    res = measure(args.data)
    print(json.dumps(res, indent=2))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "limits.json").write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_write:
        write_section(res)
    return 0


def write_section(res: dict) -> None:
    from benchmarks.report import replace_section

    m, g, d = res["memory"], res["gemm"], res["decode"]
    blas = "; ".join(f"{b['lib']}: {b['kernel']}" for b in res["blas"] if b["api"] != "openmp")
    body = (
        "`python benchmarks/limits.py` — what this machine can do, measured in one process\n"
        f"({res['cores']} cores, shared with other jobs, load average {res.get('load', '?')}:\n"
        "medians of 5 repeats). Every other\n"
        "speed section states the limit that bounds it, measured again in its own run.\n\n"
        "| limit | value |\n|---|---|\n"
        "| memory read (256 MiB sum, best of numpy, torch, torch one slice per core) | "
        f"{m['read_GBps']:.1f} GB/s |\n"
        f"| memory copy (numpy / torch; read + write bytes) | {m['numpy_copy_GBps']:.1f} / "
        f"{m['torch_copy_GBps']:.1f} GB/s |\n"
        f"| GEMM float32 2048^3, torch | {g['torch_GFLOPs']:.0f} GFLOP/s |\n"
        f"| GEMM float32 2048^3, numpy | {g['numpy_GFLOPs']:.0f} GFLOP/s |\n"
        f"| GEMM float32 2048^3, torch, one product per core on one thread each | "
        f"{g['torch_per_core_GFLOPs']:.0f} GFLOP/s |\n"
        f"| JPEG decode, full, to grayscale ({d['images']}) | {d['jpeg_full_ips']:.0f} img/s |\n"
        f"| JPEG decode, `Image.draft` to >= 64 px | {d['jpeg_draft_ips']:.0f} img/s |\n"
        f"| PNG decode, full (the same images as PNG) | {d['png_full_ips']:.0f} img/s |\n"
        f"| SHA-256 | {res['sha256_GBps']:.2f} GB/s = {res['sha256_ips']:.0f} img/s at "
        f"{d['mean_file_bytes'] / 1024:.1f} KiB |\n"
        f"| decode + hash, one core, full / draft | {res['decode_hash_full_ips_per_core']:.0f} / "
        f"{res['decode_hash_draft_ips_per_core']:.0f} img/s |\n"
        f"\nBLAS kernels loaded (threadpoolctl): {blas}.\n"
        "\nReading: a flat scan of N vectors of dimension d at batch 1 reads N*d*4 bytes, so\n"
        "its bound is memory read / (N*d*4) queries/s; at batch 64 it is a GEMM, bound by\n"
        "GFLOP/s / (2*N*d) queries/s. Decode figures are per core, from bytes in memory.\n"
    )
    replace_section("Limits (issue 16)", body)


if __name__ == "__main__":
    raise SystemExit(main())
