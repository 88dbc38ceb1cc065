"""Ingest throughput into an existing index, beside the bare model forward pass.

    python benchmarks/ingest.py [--data ../shared/datasets/neu-cls] [--batch 256] [--repeats 2]

Protocol (NEU-CLS, 64x64 grayscale default AE):
1. A temp home gets the first 100 images of each class ingested, a default
   AE registered and its Flat index built (the weights do not matter for speed).
2. `ingest_paths` adds the other 1200 images: read, SHA-256, decode in worker
   processes, catalog insert per batch, embed from the decoded arrays, index add,
   index save. Timed end to end -> images/s; with the default worker count and
   with decoding in the ingest process (`workers=0`), a fresh home each.
3. The same 1200 images, already decoded and resized to tensors, go through
   `model.embed` at the same batch size -> images/s ("bare forward").
4. The limit, measured in the same run (benchmarks/limits.py): Pillow JPEG
   decode (full and `Image.draft`) of those files' bytes from memory plus
   SHA-256, per core and on all cores, and the bound of the forward and the
   decoding sharing the cores.
Each round runs every setting and then the bare forward, so each ratio is
between runs under the same load; medians of the rounds.
Figures: ingest / bare forward (target >= 0.6) and ingest / decode + hash limit.
Results go to benchmarks/results/ingest.json and the "Ingest (issue 2)" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's
# Heavy imports (torch, the index) happen inside the functions: the decoding workers are
# spawned processes that re-import this script as their main module, and should not pay
# for torch (`latentsight` itself runs as `python -m latentsight`, whose workers skip it).

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "neu-cls"


def link_subset(src: Path, dst: Path, lo: int, hi: int) -> list[Path]:
    """Symlink images [lo, hi) of each class folder into dst/CLASS/ (nothing is copied)."""
    out = []
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(cls.glob("*.jpg"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in files[lo:hi]:
            link = dst / cls.name / f.name
            link.symlink_to(f.resolve())
            out.append(link)
    return out


def bare_forward(model: object, files: list[Path], batch: int) -> float:
    """images/s of `model.embed` alone on the files, decoded and resized beforehand."""
    import torch
    from latentsight.embedder.encoder import to_batch
    from latentsight.embedder.images import decode_file

    px = [decode_file(f, mode="L").pixels for f in files]
    xs = [to_batch(px[i : i + batch], 64, 1) for i in range(0, len(px), batch)]
    with torch.no_grad():
        model.embed(xs[0])  # warm-up
        t = time.perf_counter()
        for x in xs:
            model.embed(x)
        dt = time.perf_counter() - t
    return len(files) / dt


def probe_rate(files: list[Path], want: tuple[int, int]) -> float:
    """Files/s of `probe_file` (read, checks, SHA-256, draft decode, resize: what a decoding
    worker does per file) on this thread: one core's most, our decoder, not bare Pillow."""
    from latentsight.embedder.probe import probe_file

    for f in files[:50]:  # warm-up: page cache, Pillow's plugins
        probe_file(str(f), want)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for f in files:
            probe_file(str(f), want)
        best = max(best, len(files) / (time.perf_counter() - t))
    return best


def one_run(data: Path, tmp: Path, batch: int, workers: int | None) -> tuple[float, int, object]:
    """A fresh home: 600 images ingested and indexed, then 1200 more timed. images/s."""
    import torch
    from latentsight.embedder.models import create, save_checkpoint
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.manager import build_index

    first = link_subset(data, tmp / "first", 0, 100)
    rest = link_subset(data, tmp / "rest", 100, 300)
    home = Home(tmp / "home")
    ingest_paths(home, [tmp / "first"], labels_from_folders=True, progress=False)
    torch.manual_seed(0)
    model = create("ae").eval()
    sha = save_checkpoint(model, home.models_dir / "bench-ae", {"name": "bench-ae"})
    home.catalog.add_model(name="bench-ae", kind="ae", config=model.config.__dict__,
                           checkpoint_path=str(home.models_dir / "bench-ae"),
                           checkpoint_sha256=sha, metrics={})
    build_index(home, home.catalog.model(), device="cpu", progress=False)
    t = time.perf_counter()
    rep = ingest_paths(home, [tmp / "rest"], labels_from_folders=True, batch_size=batch,
                       workers=workers, progress=False)
    dt = time.perf_counter() - t
    assert rep.added == rep.indexed and not rep.failed, rep.as_dict()  # NEU has 1 dup
    home.close()
    return len(rest) / dt, len(first), (model, rest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every setting")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skip: NEU-CLS not found at {args.data}", file=sys.stderr)
        return 0
    import torch
    from latentsight.embedder.images import default_workers
    from latentsight.index.ingest import EMBED_CHUNK

    from benchmarks.limits import decode_rates, sha256_rate

    cores = len(os.sched_getaffinity(0))
    settings = {f"{default_workers()} worker(s) (default)": None, "0 workers (in process)": 0}
    if cores != default_workers():
        settings[f"{cores} workers (one per core)"] = cores
    runs: dict[str, list[float]] = {k: [] for k in settings}
    ratios: dict[str, list[float]] = {k: [] for k in settings}
    forwards: list[float] = []
    chunk_forwards: list[float] = []  # at the batch ingest embeds at (EMBED_CHUNK)
    loads: list[float] = []
    for r in range(args.repeats):  # one round = every setting, then the bare forward
        got = {}
        for name, workers in settings.items():
            with tempfile.TemporaryDirectory() as tmp:
                ips, n_first, (model, rest) = one_run(args.data, Path(tmp), args.batch, workers)
                rest = [p.resolve() for p in rest]
                got[name] = ips
        fwd = bare_forward(model, rest, args.batch)  # right after, under the same load
        forwards.append(fwd)
        chunk_forwards.append(bare_forward(model, rest, EMBED_CHUNK))
        loads.append(os.getloadavg()[0])
        for name, ips in got.items():
            runs[name].append(ips)
            ratios[name].append(ips / fwd)
        print(f"round {r}: " + ", ".join(f"{k} {v:.0f}" for k, v in got.items())
              + f"; forward {fwd:.0f} images/s (load {loads[-1]:.1f})", file=sys.stderr)
    blobs = [p.read_bytes() for p in rest[::6]]
    dec = decode_rates(blobs)
    probe_ips = probe_rate(rest, (model.config.image_size, model.config.channels))
    sha_ips = sha256_rate() * 1e9 / dec["mean_file_bytes"]
    full_1core = 1 / (1 / dec["jpeg_full_ips"] + 1 / sha_ips)
    draft_1core = 1 / (1 / dec["jpeg_draft_ips"] + 1 / sha_ips)  # what ingest decodes now
    med = {k: float(statistics.median(v)) for k, v in runs.items()}
    med_ratio = {k: float(statistics.median(v)) for k, v in ratios.items()}
    forward_ips = float(statistics.median(forwards))
    default = next(iter(settings))
    # the whole machine's bound when the forward (on every core) and decoding + hashing share
    # the cores: core-seconds per image = cores / forward + 1 / decode_hash_1core
    shared = cores / (cores / forward_ips + 1 / draft_1core)
    shared_probe = cores / (cores / forward_ips + 1 / probe_ips)  # with our own decoder
    res = {
        "images": len(rest), "first": n_first, "batch": args.batch, "rounds": args.repeats,
        "ingest_images_per_s": {k: round(v, 1) for k, v in med.items()},
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "ratio_vs_forward_per_setting": {k: round(v, 3) for k, v in med_ratio.items()},
        "bare_forward_images_per_s": round(forward_ips, 1),
        "bare_forward_runs": [round(x, 1) for x in forwards],
        "embed_chunk": EMBED_CHUNK,
        "bare_forward_chunk_images_per_s": round(statistics.median(chunk_forwards), 1),
        "bare_forward_chunk_runs": [round(x, 1) for x in chunk_forwards],
        "ratio_vs_forward_chunk": round(med[default] / statistics.median(chunk_forwards), 3),
        "jpeg_full_decode_ips": round(dec["jpeg_full_ips"], 1),
        "jpeg_draft_decode_ips": round(dec["jpeg_draft_ips"], 1),
        "sha256_ips": round(sha_ips, 1),
        "decode_hash_limit_1core": round(full_1core, 1),
        "decode_draft_hash_limit_1core": round(draft_1core, 1),
        "decode_draft_hash_limit_all_cores": round(draft_1core * cores, 1),
        "forward_plus_decode_bound": round(shared, 1),
        "probe_file_ips_1core": round(probe_ips, 1),
        "forward_plus_probe_bound": round(shared_probe, 1),
        "ratio_vs_probe_bound": round(med[default] / shared_probe, 3),
        "default_setting": default,
        "ratio_vs_forward": round(med_ratio[default], 3),
        "ratio_vs_forward_best": round(max(med_ratio.values()), 3),
        "ratio_vs_decode_hash_all_cores": round(med[default] / (draft_1core * cores), 3),
        "ratio_vs_shared_bound": round(med[default] / shared, 3),
        "cores": cores, "torch_threads": torch.get_num_threads(),
        "load_during_rounds": [round(x, 1) for x in loads],
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(res, indent=2))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_write:
        write_section(res)
    return 0


def write_section(res: dict) -> None:
    from benchmarks.report import replace_section

    rows = "".join(
        f"| ingest into existing index, {k} | {v} | {res['ratio_vs_forward_per_setting'][k]} |\n"
        for k, v in res["ingest_images_per_s"].items())
    loads = ", ".join(str(x) for x in res["load_during_rounds"])
    body = (
        "`python benchmarks/ingest.py` — NEU-CLS: 600 images ingested and indexed first, then\n"
        f"{res['images']} more ingested into the existing index, timed end to end (worker\n"
        "start-up, model and index load, read + SHA-256 + decode in worker processes, catalog\n"
        "insert per batch, embed, index add, save). Each round runs every worker setting and\n"
        "then the bare `model.embed` forward on the same images already decoded and resized,\n"
        "so a ratio compares runs made under the same load; medians over "
        f"{res['rounds']} rounds, batch {res['batch']},\n"
        f"default AE at 64x64, {res['cores']} cores shared with other jobs (1-minute load "
        f"average after each round: {loads}). Decode and hash limits measured in the same\n"
        "run (Pillow, from bytes in memory, one core).\n\n"
        "| measure | images/s | ratio vs bare forward |\n|---|---|---|\n" + rows +
        f"| bare forward (decoded tensors, {res['torch_threads']} torch threads) | "
        f"{res['bare_forward_images_per_s']} | 1 |\n"
        f"| bare forward at batch {res['embed_chunk']} (what ingest embeds at), "
        f"{res['torch_threads']} torch threads | {res['bare_forward_chunk_images_per_s']} | "
        f"{round(res['bare_forward_chunk_images_per_s'] / res['bare_forward_images_per_s'], 3)}"
        " |\n"
        f"| limit: JPEG decode (full) + SHA-256, one core | {res['decode_hash_limit_1core']} | |\n"
        f"| limit: JPEG `Image.draft` decode (what ingest does at 64 px) + SHA-256, one core | "
        f"{res['decode_draft_hash_limit_1core']} | |\n"
        f"| limit: the same on all {res['cores']} cores | "
        f"{res['decode_draft_hash_limit_all_cores']} | |\n"
        f"| bound: forward and decode + hash sharing the {res['cores']} cores | "
        f"{res['forward_plus_decode_bound']} | |\n"
        f"| `probe_file` (a worker's whole work per file: checks, read, SHA-256, draft decode, "
        f"resize), one core | {res['probe_file_ips_1core']} | |\n"
        f"| bound: forward and `probe_file` sharing the {res['cores']} cores | "
        f"{res['forward_plus_probe_bound']} | "
        f"{round(res['forward_plus_probe_bound'] / res['bare_forward_images_per_s'], 3)} |\n"
        f"| **ratio vs bare forward, default setting** (target >= 0.6) | "
        f"**{res['ratio_vs_forward']}** | |\n"
        f"| ratio vs the shared bound | {res['ratio_vs_shared_bound']} | |\n"
        f"| ratio vs the forward + `probe_file` bound | {res['ratio_vs_probe_bound']} | |\n"
        f"| ratio vs the bare forward at batch {res['embed_chunk']} | "
        f"{res['ratio_vs_forward_chunk']} | |\n"
        "\nReading: decoding + hashing at the draft size is several times the forward per\n"
        "core, and the shared bound above is what the 2 cores allow (decode and forward\n"
        "share them). What made ingest faster than issue 2's 0.085: files go to the workers\n"
        "32 per task, the workers start while the model loads, JPEGs decode at the reduced\n"
        "size the model reads (`Image.draft`), a batch's catalog rows are one multi-row\n"
        "INSERT, and a thread embeds batch i while batch i is committed and batch i+1\n"
        "decoded.\n\n"
        "Where the rest goes (issue 16 profile on an AMD EPYC 2-core VM, one default ingest\n"
        "of these 1200 images at load 0.4, stage times from `time.perf_counter` around each\n"
        "call): the first decoded file arrives 0.18 s after the call (the worker's spawn and\n"
        "imports; the model and the lazy index load take 0.02 s beside it); after that the\n"
        "one decoding worker is the bottleneck, not the forward: each batch's forward took\n"
        "0.18-0.37 s and then waited for the next batch. Catalog inserts took 14-36 ms per\n"
        "batch, the index add, save and catalog record 20 ms, the pool's close 9 ms. Since\n"
        "then the forward starts on a batch's first 64 decoded files (EMBED_CHUNK) and runs\n"
        "on the cores the workers leave it. On the Intel Xeon VM (session 5, idle), per image\n"
        "in one process: `probe_file` 0.54 ms = the read 0.04 + `decode_bytes` at the draft\n"
        "size 0.31-0.35 + the resize to 64 px and array copies 0.05 + SHA-256 0.014 + file\n"
        "checks 0.007, against 0.25 ms for a bare Pillow open + draft + load + resize: about\n"
        "0.1 ms (30 %) of the decoder's time is Python-side work per file (format sniffing,\n"
        "EXIF orientation, mode conversion, two array conversions), the rest is libjpeg.\n"
        "The shared bound is cores / (cores + forward / decode) of the bare forward: 0.6 of\n"
        "the forward is above it whenever the forward runs over 1.33x one core's draft decode\n"
        "+ hash rate, and on the Intel VM (bound about 0.65 of the forward) it asks for 92 %\n"
        "of the bound, while `probe_file` decodes at about 1,850 files/s per core, half the\n"
        "limit row. 0 workers saves the worker's start-up and IPC but loses the isolation\n"
        "from hostile files.\n\n"
        "Session 10 (AMD EPYC VM): `probe_file` now resizes inside Pillow, before the image\n"
        "becomes an array (one copy instead of a round trip array -> Pillow -> array; the\n"
        "same pixels, tests/embedder/test_probe_fast_paths.py): decode + resize of a NEU JPEG\n"
        "from memory 0.284 -> 0.250 ms, against 0.217 ms for a bare Pillow open + draft +\n"
        "load + resize (one process, the three in rotation, medians of 5 rounds of 600\n"
        "files): half of the Python-side cost over Pillow is gone.\n"
        "The ingest ratio barely moved: 0.39-0.50 in four runs of three rounds, this table\n"
        "the last (the bare forward it is divided by ran at 2,600-5,100 images/s from one\n"
        "run to the next on this VM; before the change, 0.39). Where the time goes, by CPU\n"
        "accounting (getrusage) of three default ingests of these 1200 files: 0.81-0.93 s\n"
        "wall; the main process used 0.57-0.63 s of CPU (sorting, catalog, the forward on one\n"
        "torch thread), the worker 0.55-0.69 s, its start-up included (the first decoded\n"
        "file arrives about 0.18 s after the call). So the 2 cores are busy about 2/3 of the\n"
        "time; the rest is the worker's start-up, while the main process only loads the\n"
        "model, and the tail (the last batch's forward, commit and index save). A worker\n"
        "pool alone delivers 1,791 files/s against 1,994 for `probe_file` in one process (IPC\n"
        "and the per-file start notice: 10 %). A 2-thread forward, also with the worker at a\n"
        "lower priority (nice 10), gave 0.40-0.42, within the noise; 2 workers are slower\n"
        "(the main process then has no core of its own).\n"
        "The `probe_file` bound row above is what 2 cores allow with this decoder: 0.6 of\n"
        "the forward needs nearly all of it.\n"
    )
    replace_section("Ingest (issue 2)", body)


if __name__ == "__main__":
    raise SystemExit(main())
