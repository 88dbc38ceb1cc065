"""Score every combination of the detector's parts offline from `anomaly.py --dump-raw` files.

    python benchmarks/anomaly_combos.py A.npz B.npz [--json A.json,B.json] [--top 25]
        [--require pca,gauss,texture,nn]

Each dump holds, per protocol split, the raw part scores of the calibration
normals, the test normals and the test anomalies. A combination is scored as
the detector does (each part standardized on the calibration normals by the
detector's `fit_standardization`, `--spread` logq90 as its default or q90;
L2 norm of the positive parts); AUROC per split, mean over
NEU classes and digits as the suite reports. Ranked by the worst protocol
(then the next-worst); the baselines from the runs' JSON files alongside.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentsight, not another install's

from latentsight.embedder.detector import (  # noqa: E402
    _combine_z,
    fit_standardization,
    standardize,
)


def load(files: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{split key: {"parts", "cal", "normal", "anomalous"}} from the dumps."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for f in files:
        with np.load(f) as d:
            for k in d.files:
                split, what = k.rsplit("|", 1)
                out.setdefault(split, {})[what] = d[k]
    return out


def l2_auroc(split: dict[str, np.ndarray], parts: tuple[str, ...],
             spread: str = "logq90") -> float:
    names = [str(p) for p in split["parts"]]
    idx = [names.index(p) for p in parts]
    loc, sp = fit_standardization(split["cal"][:, idx], spread)

    def score(raw: np.ndarray) -> np.ndarray:
        return _combine_z(standardize(raw[:, idx], loc, sp, spread), "l2", axis=1)

    n, a = score(split["normal"]), score(split["anomalous"])
    return float(roc_auc_score(np.r_[np.zeros(len(n)), np.ones(len(a))], np.r_[n, a]))


def protocol_aurocs(data, parts: tuple[str, ...], spread: str = "logq90") -> dict[str, float]:
    """AUROC per protocol (mean over a protocol's classes / digits)."""
    per: dict[str, list[float]] = {}
    for key, split in data.items():
        per.setdefault(key.split("/")[0], []).append(l2_auroc(split, parts, spread))
    return {p: float(np.mean(v)) for p, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--json", default="", help="the runs' --json-out files, for the baselines")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--require", default="", help="only combinations with these parts")
    ap.add_argument("--spread", default="logq90", choices=("logq90", "q90"),
                    help="the parts' standardization (the detector's default: logq90)")
    args = ap.parse_args()
    data = load(args.dumps)
    parts = [str(p) for p in next(iter(data.values()))["parts"]]
    need = set(filter(None, args.require.split(",")))
    rows = []
    for r in range(1, len(parts) + 1):
        for combo in itertools.combinations(parts, r):
            if need <= set(combo):
                au = protocol_aurocs(data, combo, args.spread)
                rows.append((sorted(au.values()), "+".join(combo), au))
    rows.sort(key=lambda t: t[0], reverse=True)
    protos = list(rows[0][2])
    print(f"| parts (l2, {args.spread}) | " + " | ".join(protos) + " | worst |")
    print("|---" * (len(protos) + 2) + "|")
    if args.json:
        res: dict[str, dict] = {}
        for f in args.json.split(","):
            res.update({k: v[0] for k, v in json.loads(Path(f).read_text())["results"].items()})
        for b in ("pca64", "1nn"):
            vals = [res[p][b]["auroc"] for p in protos]
            print(f"| baseline {b} | " + " | ".join(f"{v:.3f}" for v in vals)
                  + f" | {min(vals):.3f} |")
    for ranks, name, au in rows[: args.top]:
        print(f"| {name} | " + " | ".join(f"{au[p]:.3f}" for p in protos)
              + f" | {ranks[0]:.3f} |")


if __name__ == "__main__":
    main()
