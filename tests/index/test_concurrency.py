"""Concurrent use: one writer at a time, and searches that never fail while a writer works.

Readers run in threads of this process and in a separate process; the writer
is a real `latentsight ingest` / `index rebuild` process. Readers must see no
failure, only whole indexes, and must pick up the new index generations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.locks import WriteLockedError, write_lock, writer_active
from typer.testing import CliRunner

from latentsight.cli import app
from tests.imagegen import write_folder
from tests.index.crashkit import ROOT, copy_model_home, run_killed
from tests.index.search_reader import search_loop

HOLD = """
import sys, time
from latentsight.index.home import Home
from latentsight.index.locks import write_lock
with write_lock(Home(sys.argv[1]), "holder-test"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture()
def holder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "h")], env=env,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def test_second_writer_gets_a_clear_message_naming_the_holder(tmp_path, holder, texture_dir):
    home = Home(tmp_path / "h")
    assert writer_active(home)
    with pytest.raises(WriteLockedError, match=rf"pid {holder.pid}, holder-test"):
        ingest_paths(home, [texture_dir / "blobs"], progress=False, workers=0)
    res = CliRunner().invoke(app, ["ingest", str(texture_dir / "blobs"), "--home",
                                   str(tmp_path / "h")])
    assert res.exit_code == 2
    assert f"another latentsight writer holds {home.root / '.write.lock'}" in res.output
    assert f"pid {holder.pid}" in res.output
    # a writer killed with SIGKILL leaves no stale lock: the kernel drops it
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert not writer_active(home)
    rep = ingest_paths(home, [texture_dir / "blobs"], progress=False, workers=0)
    assert rep.added == 12


def test_threads_take_turns(tmp_path):
    home = Home(tmp_path / "h")
    inside, leave, seen = threading.Event(), threading.Event(), []

    def first() -> None:
        with write_lock(home, "first"):
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=first)
    t.start()
    inside.wait(30)
    with pytest.raises(WriteLockedError, match="first"):
        with write_lock(home, "second"):
            seen.append("entered")
    leave.set()
    t.join()
    with write_lock(home, "second"), write_lock(home, "nested"):  # re-entrant in one thread
        seen.append("entered")
    assert seen == ["entered"] and not writer_active(home)


def test_searches_during_ingest_never_fail_and_follow_new_generations(
    tmp_path, trained_home, texture_dir
):
    root = tmp_path / "home"
    copy_model_home(trained_home, root, texture_dir / "checker")
    queries = [str(sorted((texture_dir / lab).glob("*.png"))[0])
               for lab in ("checker", "blobs", "stripes_h")]
    gen0 = Home(root).catalog.indexes()[0].generation

    # one reader process, two reader threads
    ready_file, stop_file, out_file = tmp_path / "ready", tmp_path / "stop", tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.index.search_reader", str(root),
                             str(ready_file), str(stop_file), str(out_file), *queries], env=env,
                            cwd=ROOT)
    stop = threading.Event()
    results: list[dict] = []
    readies = [threading.Event() for _ in range(2)]
    threads = [threading.Thread(target=lambda r=r: results.append(
        search_loop(str(root), queries, stop, r))) for r in readies]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    while not (ready_file.exists() and all(r.is_set() for r in readies)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)

    # the writer: several ingests (each adds vectors and bumps the generation) and a rebuild
    writes = 0
    for i in range(3):
        folder = write_folder(tmp_path / f"in{i}", per_label=4, seed=500 + i)
        code, out = run_killed(["ingest", str(folder), "--workers", "0", "--batch-size", "4",
                                "--home", str(root)], log_path=tmp_path / f"w{i}")
        assert code == 0, out
        writes += 1
    code, out = run_killed(["index", "rebuild", "--workers", "0", "--home", str(root)],
                           log_path=tmp_path / "rebuild")
    assert code == 0, out
    writes += 1

    stop.set()
    stop_file.write_text("stop")
    for t in threads:
        t.join(120)
    assert proc.wait(120) == 0
    results.append(json.loads(out_file.read_text()))
    final_gen = Home(root).catalog.indexes()[0].generation
    assert final_gen == gen0 + writes
    for r in results:
        assert r["failures"] == [], r["failures"][:3]
        assert r["foreign_hits"] == 0
        assert r["generations"][-1] == final_gen  # picked up the last index
        assert r["generations"] == sorted(r["generations"])
    total = sum(r["searches"] for r in results)
    print(f"\nconcurrent readers: 2 threads + 1 process, {total} searches, 0 failures, "
          f"{writes} writes, generations {gen0} -> {final_gen}")
