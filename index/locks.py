"""One writer at a time per home: an advisory lock on HOME/.write.lock.

Ingest, index build/rebuild and image deletion take the lock; searches never
do (they read an index file that writers only ever replace by an atomic
rename). A second writer fails at once with a message naming the holder:

    another latentsight writer holds /home/me/.latentsight/.write.lock
    (pid 4242, ingest, since 2026-11-21T18:40:02Z); wait for it to finish or stop it

The lock is `fcntl.flock` on an open file (on Windows, `msvcrt.locking` of one
byte far past the file's text), so the operating system releases it when the
holder exits for any reason, SIGKILL included: a crashed writer never leaves a
stale lock behind. It is re-entrant within a process (ingest calls the index
sync). It protects one machine: with a PostgreSQL catalog shared by several
machines, run writers on one of them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from latentsight.index.errors import CatalogError
from latentsight.index.home import Home

LOCK_FILE = ".write.lock"
RETRY_S = 1.0  # a writer waits this long before it reports the lock as held

LOCK_OFFSET = 1 << 30  # Windows: the byte locked, past the text, so readers can read the holder

_held: dict[str, int] = {}  # lock path -> depth, for this process
_guard = threading.Lock()


class WriteLockedError(CatalogError):
    """Another process (or thread) is writing to this home."""


def _try_lock(fd: int, *, shared: bool = False) -> bool:
    """Take the lock on `fd` without waiting; False when another process holds it.

    POSIX: flock, shared or exclusive. Windows has no shared mode, so a probe
    takes the exclusive lock and gives it back at once (`_unlock`).
    """
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    """Give the lock back early (closing `fd` also releases it, on both systems)."""
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_text(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    if text:
        os.lseek(fd, 0, os.SEEK_SET)  # os.pwrite does not exist on Windows
        os.write(fd, text.encode())


def lock_path(home: Home) -> Path:
    return home.root / LOCK_FILE


def holder(home: Home) -> dict[str, object] | None:
    """What the lock file says about its last holder (pid, command, since), or None."""
    try:
        text = lock_path(home).read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def writer_active(home: Home) -> bool:
    """True while some process holds the write lock of `home` (this one included)."""
    path = lock_path(home)
    if str(path) in _held:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if not _try_lock(fd, shared=True):
            return True
        if os.name == "nt":
            _unlock(fd)
    finally:
        os.close(fd)
    return False


@contextmanager
def write_lock(home: Home, command: str) -> Iterator[None]:
    """Hold the home's write lock for the block; WriteLockedError if another writer has it."""
    path = lock_path(home)
    key = str(path)
    with _guard:
        if key in _held:
            if _held[key] > 0 and threading.current_thread() is not _owner.get(key):
                raise WriteLockedError(_busy_message(home, path))
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + RETRY_S  # rides out a reader's brief `writer_active` probe
    while not _try_lock(fd):
        if time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        os.close(fd)
        raise WriteLockedError(_busy_message(home, path))
    try:
        with _guard:
            if key in _held:  # another thread of this process won the race
                raise WriteLockedError(_busy_message(home, path))
            _held[key], _owner[key] = 1, threading.current_thread()
        info = {"pid": os.getpid(), "command": command,
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        try:  # who holds the lock, for messages only: a full disk must not fail here
            _write_text(fd, json.dumps(info))
        except OSError:
            pass
        _sweep_temp_files(home)
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
                _owner.pop(key, None)
            _write_text(fd, "")
    finally:
        os.close(fd)  # releases the lock


_owner: dict[str, threading.Thread] = {}


def _busy_message(home: Home, path: Path) -> str:
    h = holder(home) or {}
    who = ", ".join(str(h[k]) for k in ("command", "since") if k in h)
    pid = f"pid {h['pid']}" if "pid" in h else "pid unknown"
    return (f"another latentsight writer holds {path} ({pid}{', ' + who if who else ''}); "
            "wait for it to finish or stop it, then run this again")


def _sweep_temp_files(home: Home) -> None:
    """Remove temp files that a killed writer left (`.NAME.*.tmp`); only a lock holder may."""
    d = home.root / "indexes"
    if d.is_dir():
        for tmp in d.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


__all__ = ["LOCK_FILE", "WriteLockedError", "holder", "lock_path", "write_lock", "writer_active"]
