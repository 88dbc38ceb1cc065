"""The Ray engine against a real local Ray cluster (one node on loopback, its worker processes).

.ci/start-ray.sh starts it and exports LATENTSIGHT_TEST_RAY_ADDRESS; without it (and
outside CI) these tests skip. A Ray scan must give the local engine's scores and flags,
record the same catalog rows, and lose nothing when a worker is killed mid-scan.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from latentsight.cli import app
from tests.imagegen import normal_textures

ROOT = Path(__file__).resolve().parents[2]
ENV = "LATENTSIGHT_TEST_RAY_ADDRESS"
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_address() -> str:
    address = os.environ.get(ENV)
    how = f"{ENV} is not set (eval \"$(.ci/start-ray.sh)\" starts a local cluster)"
    if not address:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {how}")
        pytest.skip(how)
    try:
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Ray Data is not installed (pip install 'latentsight[ray]')")
    return address


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory, anomaly_home):
    """A copy of the session's calibrated home (scans and builds here leave it untouched)."""
    from latentsight.index.home import Home

    root = tmp_path_factory.mktemp("rayhome") / "home"
    shutil.copytree(anomaly_home.root, root)
    h = Home(root)
    yield h
    h.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rayscan")
    for i, img in enumerate(normal_textures(24, seed=90)):
        if i % 6 == 5:
            img = img.copy()
            img[4:12, 4:12] = 255  # a bright square: flagged
        Image.fromarray(img).save(d / f"{i:03d}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d


def _cli(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def _results(db: Path, scan_id: int) -> dict[str, tuple]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select path, score, anomalous, error, nearest_ids from scan_results "
                           "where scan_id=?", (scan_id,)).fetchall()
    finally:
        con.close()
    assert len(rows) == len({r[0] for r in rows}), "an image was recorded twice"
    return {r[0]: r[1:] for r in rows}


def _last_scan(db: Path) -> tuple[int, str]:
    con = sqlite3.connect(db)
    try:
        return con.execute("select id, status from scans order by id desc limit 1").fetchone()
    except sqlite3.OperationalError:  # no scans table yet
        return None
    finally:
        con.close()


def test_ray_scan_gives_the_local_scores_flags_and_records(ray_address, ray_home, folder):
    base = ["--home", str(ray_home.root), "--model", "scan-test", "--device", "cpu"]
    code_l, out_l, _ = _cli("scan", str(folder), "--json", *base)
    local_id, _ = _last_scan(ray_home.root / "catalog.db")
    code_r, out_r, err_r = _cli("scan", str(folder), "--json", "--engine", "ray",
                                "--ray-address", ray_address, *base)
    ray_id, status = _last_scan(ray_home.root / "catalog.db")
    assert code_r == code_l and code_l in (0, 1), err_r
    assert ray_id != local_id and status == "done"
    local = {r["path"]: r for r in json.loads(out_l)}
    remote = {r["path"]: r for r in json.loads(out_r)}
    assert set(remote) == set(local) and len(local) == 24
    for path, r in local.items():
        assert remote[path]["anomalous"] == r["anomalous"], path
        assert remote[path]["score"] == pytest.approx(r["score"], rel=1e-5, abs=1e-6), path
    assert sum(r["anomalous"] for r in local.values()) >= 1
    a, b = _results(ray_home.root / "catalog.db", local_id), _results(ray_home.root /
                                                                    "catalog.db", ray_id)
    assert set(a) == set(b) and len(a) == 25  # the broken file is recorded with its reason
    for path, (score, flag, error, nearest) in a.items():
        assert b[path][1:] == (flag, error, nearest), path
        assert (score is None) == (b[path][0] is None)


def test_killing_a_ray_worker_mid_scan_loses_nothing(ray_address, ray_home, tmp_path):
    """A SIGKILLed actor is restarted by Ray and its batch rerun: every image is recorded
    exactly once, with the score the local engine gives it."""
    many = tmp_path / "many"
    many.mkdir()
    for i, img in enumerate(normal_textures(160, seed=91)):
        Image.fromarray(img).save(many / f"{i:03d}.png")
    db = ray_home.root / "catalog.db"
    before = {(_last_scan(db) or (None,))[0]}
    cmd = [sys.executable, "-m", "latentsight", "scan", str(many), "--json", "--engine", "ray",
           "--ray-address", ray_address, "--home", str(ray_home.root), "--model", "scan-test",
           "--device", "cpu", "--neighbors", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "scan.log"
    with open(log, "w") as errf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errf,
                                text=True)
        killed = None
        try:
            deadline = time.monotonic() + 300
            while killed is None and time.monotonic() < deadline and proc.poll() is None:
                last = _last_scan(db)
                if last and last[0] not in before and len(_results(db, last[0])) >= 8:
                    killed = _kill_one_actor("_ScanActor")
                time.sleep(0.2)
            out, _ = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert killed is not None, "no Ray actor was found to kill\n" + log.read_text()[-2000:]
    assert proc.returncode in (0, 1), log.read_text()[-3000:]
    scan_id, status = _last_scan(db)
    rows = _results(db, scan_id)
    assert status == "done" and len(rows) == 160, out[:500]
    assert len(json.loads(out)) == 160, out[:800]
    assert all(r[2] is None for r in rows.values())  # none lost to an error
    code, out_l, _ = _cli("scan", str(many), "--json", "--neighbors", "0", "--home",
                          str(ray_home.root), "--model", "scan-test", "--device", "cpu")
    local = {r["path"]: r["score"] for r in json.loads(out_l)}
    assert local == pytest.approx({p: r[0] for p, r in rows.items()}, rel=1e-5, abs=1e-6)


def _kill_one_actor(marker: str) -> int | None:
    """SIGKILL one live Ray worker process serving `marker` (found by its process title)."""
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in title and title.startswith("ray::"):
            os.kill(pid, signal.SIGKILL)
            return pid
    return None


def test_ray_index_build_matches_the_local_one(ray_address, ray_home):
    from latentsight.index.manager import open_index

    base = ["--home", str(ray_home.root), "--model", "scan-test", "--device", "cpu"]
    code, out, err = _cli("index", "build", "--json", *base)
    assert code == 0, err
    store, _ = open_index(ray_home, ray_home.catalog.model("scan-test"))
    ids = store.ids()
    q = np.random.default_rng(5).normal(size=(4, store.dim)).astype(np.float32)
    want = store.search(q, 5)
    store.close()
    code, out, err = _cli("index", "build", "--json", "--engine", "ray", "--ray-address",
                          ray_address, *base)
    assert code == 0, err
    st = json.loads(out)
    assert st["missing"] == 0 and st["extra"] == 0 and st["ntotal"] == len(ids)
    store, _ = open_index(ray_home, ray_home.catalog.model("scan-test"))
    try:
        got = store.search(q, 5)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    finally:
        store.close()


def test_the_local_engine_never_imports_ray(anomaly_home, folder):
    code = ("import sys; from latentsight.cli import app\n"
            "try:\n"
            f"    app(['scan', {str(folder)!r}, '--home', {str(anomaly_home.root)!r}, "
            "'--device', 'cpu', '--neighbors', '0'], prog_name='latentsight')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('RAY' if 'ray' in sys.modules else 'NO-RAY')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.stdout.strip().endswith("NO-RAY"), out.stdout + out.stderr


def test_an_unknown_engine_is_one_line_exit_2(ray_home, folder):
    base = ["--home", str(ray_home.root), "--model", "scan-test", "--device", "cpu"]
    code, out, err = _cli("scan", str(folder), "--engine", "spark", *base)
    assert code == 2 and "'engine' option must be one of local, ray" in err


def test_a_killed_ray_driver_resumes_without_redoing_work(ray_address, ray_home, tmp_path):
    """SIGKILL the driver of a Ray scan once some batches are committed; `--resume` on Ray
    continues the same scan, scores only the rest, and records each image once."""
    import re

    many = tmp_path / "many"
    many.mkdir()
    for i, img in enumerate(normal_textures(96, seed=92)):
        Image.fromarray(img).save(many / f"{i:03d}.png")
    db = ray_home.root / "catalog.db"
    before = {(_last_scan(db) or (None,))[0]}
    args = ["scan", str(many), "--engine", "ray", "--ray-address", ray_address, "--home",
            str(ray_home.root), "--model", "scan-test", "--device", "cpu", "--neighbors", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "latentsight", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            last = _last_scan(db)
            if last and last[0] not in before:
                done = len(_results(db, last[0]))
                if done >= 8:
                    break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 8 <= done < 96, done
    code, out, err = _cli(*args, "--resume", "--json")
    assert code in (0, 1), err
    m = re.search(r"resuming scan (\d+): (\d+) image\(s\) already done", err)
    assert m and int(m.group(2)) >= done, err
    rows = _results(db, int(m.group(1)))
    assert len(rows) == 96 and len(json.loads(out)) == 96
    assert _last_scan(db) == (int(m.group(1)), "done")


def test_while_connected_driver_prints_go_to_stderr(ray_address, capsys):
    """Ray's driver thread prints a raylet's reports (a killed worker, ...) with print() on
    sys.stdout, whatever log_to_driver says; inside a session they land on stderr, so the
    results `scan --json` writes on stdout stay parseable."""
    from latentsight.index import ray_engine

    with ray_engine.session(ray_address) as ray:
        assert ray.is_initialized()
        print("(raylet) A worker died or was killed while executing a task")
    assert not ray.is_initialized()
    print('{"after": true}')  # stdout is stdout again
    out, err = capsys.readouterr()
    assert "A worker died" in err and "A worker died" not in out
    assert json.loads(out) == {"after": True}
