"""Crash safety: ingest and index build killed with SIGKILL at many points, then re-run.

After every kill: no duplicate sha256, every batch the run acknowledged is in
the catalog, and the index the catalog points at loads whole (a partial file
is never served). After every re-run: the index matches the catalog and no
temp file is left. At the end `latentsight index verify` passes and the
catalog holds each source image exactly once: nothing lost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from latentsight.index.catalog import ImageRow
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.manager import build_index, status
from latentsight.index.store import FaissStore
from sqlalchemy import func, select

from tests.imagegen import write_folder
from tests.index.crashkit import (
    acknowledged_ids,
    copy_model_home,
    leftover_processes,
    run_killed,
    run_python_m,
)

# (command, kill point): each is a separate run killed there, then re-run
INGEST_POINTS = [
    "ingest.before_commit#1", "ingest.before_commit#2", "ingest.before_commit#3",
    "ingest.after_commit#1", "ingest.after_commit#2", "ingest.after_commit#3",
    "ingest.before_index", "sync.before_save", "atomic.before_rename#1", "sync.after_save",
]
BUILD_POINTS = ["build.before_save", "atomic.before_rename#1", "build.after_save"]
RANDOM_KILLS = 4


@pytest.fixture(scope="module")
def crash_home(tmp_path_factory, trained_home, texture_dir):
    """A home with the session model (copied), 12 images ingested and an index built."""
    root = tmp_path_factory.mktemp("crash")
    copy_model_home(trained_home, root / "home", texture_dir / "checker")
    return root


def _sha_of_files(folders: list[Path]) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in f.rglob("*.png")}


def _check_after_kill(root: Path, acked: list[int]) -> None:
    home = Home(root / "home")
    try:
        with home.catalog.session() as s:
            dups = s.execute(select(ImageRow.sha256, func.count()).group_by(ImageRow.sha256)
                             .having(func.count() > 1)).all()
        assert dups == []
        ids = set(home.catalog.image_ids())
        assert set(acked) <= ids, f"acknowledged ids lost: {sorted(set(acked) - ids)}"
        row = home.catalog.index_for(home.catalog.model().id)
        store = FaissStore.load(home.resolve(row.path), spec=row.spec)  # whole, or this raises
        assert set(store.ids().tolist()) <= ids
        assert not Path(row.path).name.endswith(".tmp")
    finally:
        home.close()


def _rerun_and_check(root: Path, folder: Path | None, build: bool = False) -> None:
    home = Home(root / "home")
    try:
        if folder is not None:
            ingest_paths(home, [folder], labels_from_folders=True, progress=False, workers=0)
        if build:
            build_index(home, home.catalog.model(), device="cpu", progress=False, workers=0)
        st = status(home, home.catalog.model())
        assert st.ok, st
        assert list((root / "home" / "indexes").glob(".*.tmp")) == []
    finally:
        home.close()


def test_kill_anywhere_then_rerun_loses_nothing(crash_home, texture_dir, tmp_path):
    root = crash_home
    folders = [texture_dir / "checker"]
    survived = 0
    ingest_args = ["--labels-from-folders", "--batch-size", "4", "--log-commits",
                   "--home", str(root / "home")]
    for i, point in enumerate(INGEST_POINTS * 2):
        folder = write_folder(tmp_path / f"in{i}", per_label=3, seed=100 + i)  # 12 new images
        folders.append(folder)
        workers = "1" if i % 4 == 1 else "0"  # some runs with decode workers, to orphan
        code, out = run_killed(["ingest", str(folder), "--workers", workers, *ingest_args],
                               faults=f"kill:{point},tag:run{i}", log_path=tmp_path / f"log{i}")
        assert code == -9, (point, code, out)
        assert leftover_processes(f"run{i}") == []
        _check_after_kill(root, acknowledged_ids(out))
        _rerun_and_check(root, folder)
        survived += 1

    for j, point in enumerate(BUILD_POINTS):
        folder = write_folder(tmp_path / f"b{j}", per_label=2, seed=200 + j)
        folders.append(folder)
        home = Home(root / "home")
        ingest_paths(home, [folder], update_index=False, progress=False, workers=0)
        home.close()
        code, out = run_killed(["index", "build", "--workers", "0", "--home", str(root / "home")],
                               faults=f"kill:{point}", log_path=tmp_path / f"blog{j}")
        assert code == -9, (point, code, out)
        _check_after_kill(root, [])
        _rerun_and_check(root, None, build=True)
        survived += 1

    rng = np.random.default_rng(7)
    for r in range(RANDOM_KILLS):
        folder = write_folder(tmp_path / f"r{r}", per_label=4, seed=300 + r)
        folders.append(folder)
        delay = float(rng.uniform(0.05, 1.5))
        code, out = run_killed(["ingest", str(folder), "--workers", "0", *ingest_args],
                               log_path=tmp_path / f"rlog{r}", kill_after=delay)
        _check_after_kill(root, acknowledged_ids(out))
        _rerun_and_check(root, folder)
        survived += code == -9

    # the real entry point, killed twice: mid-ingest and mid-build
    folder = write_folder(tmp_path / "py", per_label=3, seed=400)
    folders.append(folder)
    res = run_python_m(["ingest", str(folder), "--workers", "1", *ingest_args],
                       faults="kill:ingest.after_commit#2,tag:py")
    assert res.returncode == -9, res.stderr
    assert leftover_processes("py") == []
    _check_after_kill(root, acknowledged_ids(res.stderr))
    assert len(acknowledged_ids(res.stderr)) == 8
    res = run_python_m(["index", "build", "--workers", "0", "--home", str(root / "home")],
                       faults="kill:atomic.before_rename#1")
    assert res.returncode == -9, res.stderr
    _rerun_and_check(root, folder, build=True)
    survived += 2

    verify = run_python_m(["index", "verify", "--json", "--home", str(root / "home")])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
    home = Home(root / "home")
    stored = {r.sha256 for r in home.catalog.images()}
    assert len(stored) == home.catalog.count_images()  # no duplicates
    assert stored == _sha_of_files(folders)  # nothing lost, nothing extra
    home.close()
    assert survived >= 20
    print(f"\nkill points survived: {survived} ({len(INGEST_POINTS) * 2} ingest, "
          f"{len(BUILD_POINTS)} build, {RANDOM_KILLS} random-time, 2 python -m); "
          f"images: {len(stored)}")
