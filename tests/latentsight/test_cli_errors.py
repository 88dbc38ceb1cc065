"""Errors a user can cause end in one line naming the file or value and the reason, exit 2.

Disk full (SQLite commit, faiss write_index) on a small tmpfs (skipped where this
machine cannot mount one), over-long labels on SQLite and PostgreSQL alike,
model names that would leave the home, file names with newlines and escapes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from latentsight.index.catalog import MAX_TEXT_CHARS, Catalog
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from PIL import Image
from typer.testing import CliRunner

from latentsight.cli import app

runner = CliRunner()


def _one_error_line(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    out = res.output.strip()
    assert "Traceback" not in out and "[parameters:" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                         capture_output=True, timeout=30, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=30, check=False)


def _fill(mnt: Path, leave: int = 0) -> None:
    """Fill the file system, leaving about `leave` bytes."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
        except OSError:
            pass


def _pngs(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_disk_full_in_the_sqlite_commit(small_tmpfs, tmp_path):
    home = small_tmpfs / "home"
    first = runner.invoke(app, ["ingest", str(_pngs(tmp_path / "a", 2)), "--home", str(home),
                                "--workers", "0"])
    assert first.exit_code == 0, first.output
    _fill(small_tmpfs)
    res = runner.invoke(app, ["ingest", str(_pngs(tmp_path / "b", 300, seed=1)), "--home",
                              str(home), "--workers", "0"])
    line = _one_error_line(res, "full")
    assert "catalog" in line or str(small_tmpfs) in line


def test_disk_full_in_faiss_write_index(small_tmpfs, trained_home, tmp_path):
    # The catalog lives off the small disk: how much of it a full disk lets through
    # depends on its size (which tests ran before in this process), the index's does not.
    home = small_tmpfs / "home"
    trained_home.catalog.engine.dispose()
    shutil.copytree(trained_home.root, home, ignore=shutil.ignore_patterns("*.faiss",
                                                                          "catalog.db*"))
    for f in trained_home.root.glob("catalog.db*"):
        shutil.copy(f, tmp_path / f.name)
    (home / "indexes").mkdir(exist_ok=True)
    _fill(small_tmpfs, leave=8192)
    res = runner.invoke(app, ["index", "build", "--model", "test-ae", "--home", str(home),
                              "--db-url", f"sqlite:///{tmp_path / 'catalog.db'}",
                              "--device", "cpu", "--workers", "0"])
    _one_error_line(res, "test-ae.faiss", "disk full")
    assert not list((home / "indexes").glob("*.tmp"))  # no half-written file left


def test_an_sqlite_io_error_on_a_full_disk_says_the_disk_is_full(small_tmpfs):
    # SQLite reports some full-disk failures (its WAL index) as "disk I/O error"
    import sqlite3

    from latentsight.index.catalog import _db_failure

    url = f"sqlite:///{small_tmpfs / 'catalog.db'}"
    err = sqlite3.OperationalError("disk I/O error")
    err.sqlite_errorname = "SQLITE_IOERR_SHMSIZE"
    assert "disk is full" not in str(_db_failure(err, url))
    _fill(small_tmpfs)
    msg = str(_db_failure(err, url))
    assert "disk I/O error [SQLITE_IOERR_SHMSIZE]" in msg and "disk is full" in msg, msg


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_a_300_character_label_is_refused_alike_on_sqlite_and_postgresql(db_url, tmp_path):
    from sqlalchemy.engine import make_url

    if make_url(db_url).get_backend_name() == "postgresql":
        # the database itself refuses it with a one-line error, parameters not dumped
        cat = Catalog(db_url)
        with pytest.raises(CatalogError) as ei:
            with cat.session() as s:
                from sqlalchemy import text

                s.execute(text("INSERT INTO images (sha256, path, byte_size, width, height, "
                               "mode, format, label, source, synthetic, ingested_at) VALUES "
                               "(:h, '/secret/path.png', 1, 1, 1, 'L', 'PNG', :lab, 'x', false, "
                               "now())"), {"h": "a" * 64, "lab": "x" * 300})
        msg = str(ei.value)
        assert "too long" in msg and "255 characters" in msg and "/secret/path" not in msg
        cat.close()
    folder = _pngs(tmp_path / "imgs", 2)
    res = runner.invoke(app, ["ingest", str(folder), "--label", "x" * 300, "--db-url", db_url,
                              "--home", str(tmp_path / "h"), "--workers", "0"])
    _one_error_line(res, f"at most {MAX_TEXT_CHARS} characters", "Got 300")
    ok = runner.invoke(app, ["ingest", str(folder), "--label", "y" * 255, "--db-url", db_url,
                             "--home", str(tmp_path / "h"), "--workers", "0"])
    assert ok.exit_code == 0, ok.output
    assert {r.label for r in Catalog(db_url).images()} == {"y" * 255}


def test_a_folder_label_over_the_limit_fails_that_file_only(tmp_path):
    """A non-UTF-8 folder name escapes to up to 4 characters per byte: over 255."""
    root = tmp_path / "in"
    root.mkdir()
    bad = os.path.join(os.fsencode(root), b"\xff" * 100)
    os.mkdir(bad)
    Image.new("L", (16, 16), 7).save(os.fsdecode(os.path.join(bad, b"a.png")))
    _pngs(root / "ok", 1)
    rep = ingest_paths(Home(tmp_path / "h"), [root], labels_from_folders=True, progress=False,
                       workers=0)
    assert rep.added == 1 and len(rep.failed) == 1
    assert "400-character label, over the 255-character limit" in rep.failed[0].error


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ".hidden", "x" * 101])
def test_model_names_that_leave_the_home_are_refused_before_training(tmp_path, name):
    res = runner.invoke(app, ["train", "--name", name, "--home", str(tmp_path / "h")])
    _one_error_line(res, "model name", repr(name)[:20])
    assert not (tmp_path / "x").exists() and not Path("/tmp/abs").exists()


def test_file_names_with_newlines_and_escapes_print_as_one_inert_line(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    evil = folder / "a.png\nfailed: etc-passwd: forged\x1b[2J.png"
    evil.write_bytes(b"not a png")
    res = runner.invoke(app, ["ingest", str(folder), "--home", str(tmp_path / "h"),
                              "--workers", "0"])
    assert res.exit_code == 0, res.output
    failed = [ln for ln in res.stdout.splitlines() if "failed:" in ln]
    assert len(failed) == 1 and "\x1b" not in res.stdout
    assert "a.png\\nfailed: etc-passwd: forged\\x1b[2J.png" in failed[0]
