"""Score every combination of the detector's parts offline from `anomaly.py --dump-raw` files.

    python benchmarks/anomaly_combos.py A.npz B.npz [--json A.json,B.json] [--top 25]
        [--require pca,gauss,texture,nn]

Each dump holds, per protocol split, the raw part scores of the calibration
normals, the test normals and the test anomalies. A combination is scored as
the detector does (each part standardized on the calibration normals: median
and q90 - median; L2 norm of the positive parts); AUROC per split, mean over
NEU classes and digits as the suite reports. Ranked by the worst protocol
(then the next-worst); the baselines from the runs' JSON files alongside.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def load(files: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{split key: {"parts", "cal", "normal", "anomalous"}} from the dumps."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for f in files:
        with np.load(f) as d:
            for k in d.files:
                split, what = k.rsplit("|", 1)
                out.setdefault(split, {})[what] = d[k]
    return out


def l2_auroc(split: dict[str, np.ndarray], parts: tuple[str, ...]) -> float:
    names = [str(p) for p in split["parts"]]
    idx = [names.index(p) for p in parts]
    cal = split["cal"][:, idx]
    loc = np.median(cal, axis=0)
    sp = np.quantile(cal, 0.9, axis=0) - loc
    sp = np.maximum(sp, 1e-6 * np.maximum(np.abs(loc), 1e-6))

    def score(raw: np.ndarray) -> np.ndarray:
        return np.sqrt(np.square(np.maximum((raw[:, idx] - loc) / sp, 0)).sum(1))

    n, a = score(split["normal"]), score(split["anomalous"])
    return float(roc_auc_score(np.r_[np.zeros(len(n)), np.ones(len(a))], np.r_[n, a]))


def protocol_aurocs(data, parts: tuple[str, ...]) -> dict[str, float]:
    """AUROC per protocol (mean over a protocol's classes / digits)."""
    per: dict[str, list[float]] = {}
    for key, split in data.items():
        per.setdefault(key.split("/")[0], []).append(l2_auroc(split, parts))
    return {p: float(np.mean(v)) for p, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--json", default="", help="the runs' --json-out files, for the baselines")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--require", default="", help="only combinations with these parts")
    args = ap.parse_args()
    data = load(args.dumps)
    parts = [str(p) for p in next(iter(data.values()))["parts"]]
    need = set(filter(None, args.require.split(",")))
    rows = []
    for r in range(1, len(parts) + 1):
        for combo in itertools.combinations(parts, r):
            if need <= set(combo):
                au = protocol_aurocs(data, combo)
                rows.append((sorted(au.values()), "+".join(combo), au))
    rows.sort(key=lambda t: t[0], reverse=True)
    protos = list(rows[0][2])
    print("| parts (l2, q90) | " + " | ".join(protos) + " | worst |")
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
