"""Scan throughput: `scan_paths` beside the default scorer's own in-process throughput.

    python benchmarks/scan.py [--data ../shared/datasets/neu-cls] [--images 60] [--rounds 3]
    python benchmarks/scan.py --data ../shared/datasets/elpv --images 120   # 300x300 cells

Protocol (native resolution, the default scorer):
1. A temp home gets 150 normal images ingested (NEU-CLS: `patches`, 200x200; ELPV:
   functional mono cells, 300x300); `train_scorer` fits the default scorer on them
   (1 epoch: the scorer's speed does not depend on the weights) and builds the
   index the scan's nearest-normal search uses.
2. The scan set: `--images` other images (half normal, half `scratches` / defective
   mono cells), symlinked into a folder.
3. Each round, under the same load: (a) the bare scorer: the images decoded
   beforehand, then `scorer.decision_function` over them in this process on one
   torch thread, on every core's torch threads, and one image per core at once on
   one torch thread each (what a scan does) -> images/s; (b) `scan_paths` over the
   folder end to end (decoding in the worker processes, tiling and scoring, the
   nearest normals, catalog writes, heatmaps of the flagged images), once without
   and once with a report folder. Ratio = scan / the fastest bare setting per
   round; medians over the rounds.
Results go to benchmarks/results/scan.json (scan-elpv.json) and the "Scan pipeline
(issue 16)" ("Scan pipeline, 300x300 ELPV cells (issues 13, 16)") section of
docs/benchmarks.md. The target is scan >= 0.5 of the bare scorer (issue 16) and, on
300x300 images, >= 20 images/s on 2 cores (issue 13).
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
# heavy imports inside the functions: the decoding workers re-import this script (spawn)
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "neu-cls"


def _files(data: Path, cls: str, lo: int, hi: int) -> list[Path]:
    files = sorted((data / cls).glob("*.jpg"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    return files[lo:hi]


def _elpv_mono(data: Path) -> tuple[list[Path], list[Path]]:
    """ELPV's mono cells: (functional, defective), in the labels file's order."""
    rows = [ln.split() for ln in (data / "labels.csv").read_text().splitlines() if ln.strip()]
    mono = [(data / r[0], float(r[1])) for r in rows if r[2] == "mono"]
    return [f for f, p in mono if p == 0.0], [f for f, p in mono if p > 0.0]


def is_elpv(data: Path) -> bool:
    return (data / "labels.csv").is_file()


def normal_files(data: Path) -> list[Path]:
    return _elpv_mono(data)[0][:150] if is_elpv(data) else _files(data, "patches", 0, 150)


def scan_files(data: Path, n: int) -> list[Path]:
    """`n` images not in the normal set: half normal, half defective."""
    half = n // 2
    if is_elpv(data):
        good, bad = _elpv_mono(data)
        return good[150 : 150 + half] + bad[: n - half]
    return _files(data, "patches", 150, 150 + half) + _files(data, "scratches", 0, n - half)


def make_home(data: Path, tmp: Path) -> object:
    """A home with a scorer fitted on 150 normal images and their index."""
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.training.anomaly import train_scorer
    from latentsight.training.train import TrainConfig

    normal = tmp / "normal"
    normal.mkdir()
    for f in normal_files(data):
        (normal / f.name).symlink_to(f.resolve())
    home = Home(tmp / "home")
    ingest_paths(home, [normal], label="patches", progress=False)
    cfg = TrainConfig(epochs=1, name="bench-scan", device="cpu")
    train_scorer(home, "patches", cfg, progress=False)
    return home


def loaded_scorer(home: object, files: list[Path]) -> tuple[object, list]:
    """The home's fitted scorer and the scan set decoded beforehand (once per run)."""
    from latentsight.embedder.images import decode_file
    from latentsight.index.manager import load_scorer

    encoder, scorer = load_scorer(home, home.catalog.model(), "cpu")
    return scorer, [decode_file(f, mode=encoder.mode).pixels for f in files]


def bare_scorer(scorer: object, px: list, threads: int) -> tuple[float, float]:
    """images/s of the fitted scorer's decision_function on pre-decoded images, and the mean,
    on `threads` torch threads (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scorer.decision_function(px[:2])  # warm-up
        t = time.perf_counter()
        scores = scorer.decision_function(px)
        return len(px) / (time.perf_counter() - t), float(scores.mean())
    finally:
        torch.set_num_threads(before)


def bare_per_core(scorer: object, px: list, cores: int) -> float:
    """images/s of the fitted scorer with one image per core at once, one torch thread each
    (threads: the torch work releases the GIL), as a scan scores."""
    from concurrent.futures import ThreadPoolExecutor

    from latentsight.index.threads import one_torch_thread

    with one_torch_thread(), ThreadPoolExecutor(cores) as pool:
        list(pool.map(scorer.score_and_map, px[:cores]))  # warm-up
        t = time.perf_counter()
        list(pool.map(scorer.score_and_map, px))
        return len(px) / (time.perf_counter() - t)


def timed_scan(home: object, folder: Path, report: Path | None) -> tuple[float, object]:
    from latentsight.index.scan import scan_paths

    t = time.perf_counter()
    summary = scan_paths(home, [folder], report_dir=report, device="cpu", progress=False)
    dt = time.perf_counter() - t
    assert not summary.failed, [r.error for r in summary.failed]
    return len(summary.results) / dt, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skip: no data set at {args.data}", file=sys.stderr)
        return 0
    import torch

    elpv = is_elpv(args.data)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        home = make_home(args.data, tmp)
        setup_s = time.perf_counter() - t0
        folder = tmp / "scan"
        folder.mkdir()
        files = scan_files(args.data, args.images)
        for f in files:
            (folder / f"{f.parent.name}_{f.name}").symlink_to(f.resolve())
        rounds: list[dict[str, float]] = []
        scorer, px = loaded_scorer(home, files)
        for r in range(args.rounds):
            bare1, mean_bare = bare_scorer(scorer, px, 1)
            bare2, _ = bare_scorer(scorer, px, cores)
            bare_pc = bare_per_core(scorer, px, cores)
            bare = max(bare1, bare2, bare_pc)  # the fastest setting is the bound
            plain, summary = timed_scan(home, folder, None)
            with_report, _ = timed_scan(home, folder, tmp / f"report{r}")
            mean_scan = float(statistics.mean(i.score for i in summary.results))
            assert abs(mean_scan - mean_bare) <= 1e-4 * max(1.0, abs(mean_bare)), (
                mean_scan, mean_bare)  # the scan scores what the scorer scores
            rounds.append({"bare": bare, "bare1": bare1, "bare_all": bare2,
                           "bare_per_core": bare_pc, "scan": plain,
                           "scan_report": with_report,
                           "flagged": summary.n_flagged, "load": os.getloadavg()[0]})
            print(f"round {r}: bare scorer {bare1:.1f} (1 thread) / {bare2:.1f} ({cores}) / "
                  f"{bare_pc:.1f} ({cores} images at once), "
                  f"scan {plain:.1f}, with report "
                  f"{with_report:.1f} images/s (load {rounds[-1]['load']:.1f})", file=sys.stderr)
        scorer_name = (home.catalog.model().metrics or {}).get("scoring", {}).get("name")
        home.close()

    def med(key: str) -> float:
        return float(statistics.median(x[key] for x in rounds))

    def med_ratio(key: str) -> float:
        return float(statistics.median(x[key] / x["bare"] for x in rounds))

    res = {
        "images": len(files), "rounds": args.rounds, "scorer": scorer_name,
        "setup_s": round(setup_s, 1), "flagged": rounds[-1]["flagged"],
        "bare_scorer_ips": round(med("bare"), 2), "bare1_ips": round(med("bare1"), 2),
        "bare_all_ips": round(med("bare_all"), 2),
        "bare_per_core_ips": round(med("bare_per_core"), 2), "scan_ips": round(med("scan"), 2),
        "scan_report_ips": round(med("scan_report"), 2),
        "ratio_scan": round(med_ratio("scan"), 3),
        "ratio_scan_report": round(med_ratio("scan_report"), 3),
        "runs": [{k: round(v, 2) for k, v in x.items()} for x in rounds],
        "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "machine": platform.processor() or platform.machine(),
        "data": "elpv" if elpv else "neu-cls",
        "size": "300x300" if elpv else "200x200",
    }
    print(json.dumps(res, indent=2))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / ("scan-elpv.json" if elpv else "scan.json")).write_text(json.dumps(res, indent=2)
                                                                 + "\n")
    if not args.no_write:
        write_section(res)
    return 0


def write_section(res: dict) -> None:
    from benchmarks.report import replace_section

    loads = ", ".join(f"{x['load']:.1f}" for x in res["runs"])
    elpv = res.get("data") == "elpv"
    what = ("ELPV mono cells at native resolution\n(300x300; half functional, the kind the "
            "scorer was fitted on, half defective),\n") if elpv else (
            "NEU-CLS images at native resolution\n(200x200; half `patches`, the class the "
            "scorer was fitted on, half `scratches`),\n")
    body = (
        f"`python benchmarks/scan.py{' --data ../shared/datasets/elpv' if elpv else ''}` — "
        f"`scan_paths` over {res['images']} " + what +
        f"default scorer (`{res['scorer']}`), beside the same fitted scorer's "
        "`decision_function` on the\n"
        "same images decoded beforehand, in the same process, in the same round (the\n"
        "scorer's own throughput: the bound of the scan). The scan adds decoding in the\n"
        "worker processes, the anomaly map, the nearest normals (embed + index search),\n"
        "catalog writes, and with a report folder the flagged images' heatmaps and the\n"
        "report. Scores are checked equal to the bare scorer's. Medians over "
        f"{res['rounds']} rounds;\n"
        f"{res['cores']} cores shared with other jobs, {res['torch_threads']} torch threads "
        f"(1-minute load average after each round: {loads}).\n\n"
        "| measure | images/s | ratio vs bare scorer |\n|---|---|---|\n"
        f"| bare scorer, `decision_function` on decoded arrays, 1 torch thread | "
        f"{res['bare1_ips']} | |\n"
        f"| bare scorer, the same on {res['cores']} torch threads (torch's default) | "
        f"{res['bare_all_ips']} | |\n"
        f"| bare scorer, {res['cores']} images at once on one torch thread each | "
        f"{res.get('bare_per_core_ips', '-')} | |\n"
        f"| **bare scorer, the fastest setting (the bound)** | {res['bare_scorer_ips']} | 1 |\n"
        f"| `scan_paths`, no report | {res['scan_ips']} | **{res['ratio_scan']}** |\n"
        f"| `scan_paths` with `--report` ({res['flagged']} flagged) | "
        f"{res['scan_report_ips']} | {res['ratio_scan_report']} |\n"
        "\nTarget: scan >= 0.5 of the bare scorer (per round, against the fastest bare\n"
        "setting; median of the rounds' ratios)"
        + (", and >= 20 images/s of 300x300 on 2 cores (issue 13)" if elpv else "")
        + ". How the scan keeps up: the decoding\n"
        "workers run ahead of the scorer (files go to them in chunks); images are scored\n"
        "one per core at once, each on one torch thread (the scorer's tensors are small:\n"
        "intra-op threads on them cost more than they give, most of all on a loaded\n"
        "machine, where one avg_pool2d of a 16-tile batch took 12 ms on 2 threads and\n"
        "0.3 ms on one); the nearest-normal search embeds and searches 8 images at once,\n"
        "one catalog transaction per 8 images, and heatmaps are written by a background\n"
        "thread while the next images are scored.\n"
    )
    replace_section("Scan pipeline, 300x300 ELPV cells (issues 13, 16)" if elpv
                    else "Scan pipeline (issue 16)", body)


if __name__ == "__main__":
    raise SystemExit(main())
