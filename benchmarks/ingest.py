"""Ingest throughput into an existing index, beside the bare model forward pass.

    python benchmarks/ingest.py [--data ../shared/datasets/neu-cls] [--batch 256]

Protocol (NEU-CLS, 64x64 grayscale default AE):
1. A temp home gets the first 100 images of each class ingested, a default
   AE registered and its Flat index built (the weights do not matter for speed).
2. `ingest_paths` adds the other 1200 images: read, SHA-256, decode in worker
   processes, catalog insert per batch, embed from the decoded arrays, index add,
   atomic index save. Timed end to end -> images/s.
3. The same 1200 images, already decoded and resized to tensors, go through
   `model.embed` at the same batch size -> images/s ("bare forward").
The ratio (2)/(3) is the figure; target >= 0.6 on 2 cores. Results go to
benchmarks/results/ingest.json and the "Ingest (issue 2)" section of docs/benchmarks.md.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's

from latentsight.embedder.encoder import to_batch  # noqa: E402
from latentsight.embedder.images import decode_file  # noqa: E402
from latentsight.embedder.models import create, save_checkpoint  # noqa: E402
from latentsight.index.home import Home  # noqa: E402
from latentsight.index.ingest import ingest_paths  # noqa: E402
from latentsight.index.manager import build_index  # noqa: E402

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


def bare_forward(model: torch.nn.Module, files: list[Path], batch: int) -> float:
    px = [decode_file(f, mode="L").pixels for f in files]
    xs = [to_batch(px[i : i + batch], 64, 1) for i in range(0, len(px), batch)]
    with torch.no_grad():
        model.embed(xs[0])  # warm-up
        t = time.perf_counter()
        for x in xs:
            model.embed(x)
        dt = time.perf_counter() - t
    return len(files) / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skip: NEU-CLS not found at {args.data}", file=sys.stderr)
        return 0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = link_subset(args.data, tmp / "first", 0, 100)
        rest = link_subset(args.data, tmp / "rest", 100, 300)
        home = Home(tmp / "home")
        ingest_paths(home, [tmp / "first"], labels_from_folders=True, progress=False)
        model = create("ae").eval()
        sha = save_checkpoint(model, home.models_dir / "bench-ae", {"name": "bench-ae"})
        home.catalog.add_model(name="bench-ae", kind="ae", config=model.config.__dict__,
                               checkpoint_path=str(home.models_dir / "bench-ae"),
                               checkpoint_sha256=sha, metrics={})
        build_index(home, home.catalog.model(), device="cpu", progress=False)

        t = time.perf_counter()
        rep = ingest_paths(home, [tmp / "rest"], labels_from_folders=True,
                           batch_size=args.batch, progress=False)
        ingest_s = time.perf_counter() - t
        assert rep.added == rep.indexed and not rep.failed, rep.as_dict()  # NEU has 1 dup
        ingest_ips = len(rest) / ingest_s
        forward_ips = bare_forward(model, rest, args.batch)
    res = {
        "images": len(rest), "first": len(first), "batch": args.batch,
        "ingest_images_per_s": round(ingest_ips, 1), "ingest_seconds": round(ingest_s, 2),
        "bare_forward_images_per_s": round(forward_ips, 1),
        "ratio": round(ingest_ips / forward_ips, 3),
        "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
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

    body = (
        "`python benchmarks/ingest.py` — NEU-CLS: 600 images ingested and indexed first, then\n"
        f"{res['images']} more ingested into the existing index (decode in worker processes +\n"
        "SHA-256 + catalog insert + embed + index add + atomic save), beside the bare\n"
        f"`model.embed` forward on the same images already decoded, batch {res['batch']},\n"
        f"default AE at 64x64, {res['cores']} cores.\n\n"
        "| measure | images/s |\n|---|---|\n"
        f"| ingest into existing index | {res['ingest_images_per_s']} |\n"
        f"| bare forward (decoded tensors) | {res['bare_forward_images_per_s']} |\n"
        f"| **ratio** (target >= 0.6) | **{res['ratio']}** |\n"
        "\nReading: the default AE (width 16, chosen by the retrieval benchmark) embeds a\n"
        "64x64 tile far faster than a 200x200 JPEG is read, hashed, decoded and resized, so\n"
        "ingest is bound by decoding, not by the model. Decoding runs in worker processes\n"
        "(one per spare core, here 1) for isolation from hostile files; their start-up is\n"
        "part of the timed run. In a side measurement on the same machine, decoding in the\n"
        "ingest process itself (`--workers 0`) gave about 570 images/s against about 380\n"
        "with one worker, still short of 0.6 of this forward pass. The target is not met.\n"
    )
    replace_section("Ingest (issue 2)", body)


if __name__ == "__main__":
    raise SystemExit(main())
