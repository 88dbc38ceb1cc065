"""Label counts and sparse labels: one rule for the CLI's `classes` and the dashboard."""

from __future__ import annotations

import json

from latentsight.index.classes import class_table
from latentsight.index.home import Home

from tests.cli import run

COUNTS = {"a": (10, 0), "b": (8, 0), "c": (2, 5), "d": (6, 0), "e": (0, 3)}  # real, synthetic


def _home(tmp_path) -> Home:
    home = Home(tmp_path / "home")
    rows, n = [], 0
    for label, (real, syn) in COUNTS.items():
        for synthetic, count in ((False, real), (True, syn)):
            for _ in range(count):
                n += 1
                rows.append({"sha256": f"{n:064x}", "path": f"/x/{n}.png", "byte_size": 1,
                             "width": 8, "height": 8, "mode": "L", "format": "PNG",
                             "label": label, "synthetic": synthetic,
                             "source": "synthetic" if synthetic else "ingest"})
    home.catalog.add_images(rows)
    return home


def test_sparse_is_below_a_fraction_of_the_median_real_count(tmp_path):
    t = class_table(_home(tmp_path).catalog)
    assert t.median_real == 7  # median of 10, 8, 2, 6 (labels with real images)
    assert t.sparse_below == 3.5
    assert {r["label"]: (r["real"], r["synthetic"]) for r in t.rows} == COUNTS
    assert t.sparse == ["c", "e"]
    assert class_table(_home(tmp_path / "2").catalog, sparse_below=7).sparse == ["c", "d", "e"]


def test_cli_classes_shows_the_library_table(tmp_path):
    home = _home(tmp_path)
    out = json.loads(run("classes", "--json", "--home", str(home.root)))
    t = class_table(home.catalog)
    assert out["labels"] == t.rows and out["median_real"] == t.median_real
