"""Probing files in worker processes, with a per-file time limit and survival of dead workers.

`probe_file` reads, hashes and fully decodes one file and never raises for a
bad one. `ProbePool` runs it in spawned worker processes so that a hostile
file cannot hang or kill the run:

- a file that takes longer than `timeout_s` is reported ("decoding took over
  30s; stopped") and its worker is killed and replaced. A file's clock starts
  when a worker starts on it (the worker says so through a pipe), not when it
  is queued, so files waiting behind a slow one are never blamed for it;
- a worker's address space may grow by at most `max_memory` bytes over what it
  used when it started (RLIMIT_AS), so a file that needs more is reported
  ("out of memory while decoding") instead of swapping the machine; like a
  crash, an out-of-memory file is retried alone in a fresh worker first;
- a file that kills its worker (a decoder crash, the OOM killer) breaks the
  pool; every file in flight is then retried alone in a fresh worker, so the
  one that kills it again is reported and the others are processed;
- workers exit on their own when the parent dies (even by SIGKILL).

The module imports only Pillow and numpy, so a worker starts in a fraction of
a second (no torch).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np
from latentsight.embedder import faults
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.images import (
    DECODE_TIMEOUT_S,
    MAX_DECODE_MEMORY,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    decode_bytes,
    looks_like_image,
    prepare,
    read_bytes,
)

CHUNK = 32  # files per worker task: the round trip to a worker is paid once per chunk


@dataclass
class Probe:
    """What a worker learned about one file: its facts, or the reason it failed."""

    path: str
    sha256: str = ""
    byte_size: int = 0
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    pixels: np.ndarray | None = None  # (C, S, S) uint8 when asked for; (H, W[, 3]) if S = 0
    error: str | None = None
    error_class: str | None = None
    skipped: bool = False  # not an image by name or content


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_FILE_BYTES
    max_pixels: int = MAX_PIXELS
    timeout_s: float = DECODE_TIMEOUT_S  # from the moment a worker starts on the file
    max_memory: int = MAX_DECODE_MEMORY  # bytes a worker may grow by (RLIMIT_AS); 0 = no limit


@dataclass(frozen=True)
class Upload:
    """Image bytes that are not a file (an upload): probed like a file, under `name`."""

    name: str
    data: bytes


def probe_file(
    path: str | Upload, want: tuple[int, ...] | None, limits: Limits = Limits()
) -> Probe:
    """Read, hash and fully decode one file; `want` = (image_size, channels) to preprocess
    (or (0, channels, side): native pixels, a JPEG reduced while both sides stay >= side).

    `image_size` 0 keeps the native resolution: `pixels` is then the decoded
    (H, W) or (H, W, 3) array (what a tiled anomaly scan needs). Never raises
    for a bad file: the reason is in `Probe.error`.
    """
    if isinstance(path, Upload):
        return _probe_upload(path, want, limits)
    try:
        faults.on_probe(path)
        if not os.path.lexists(path):
            raise DecodeError(path, "file not found (deleted after listing)")
        if os.path.islink(path) and not os.path.exists(path):
            raise DecodeError(path, _link_reason(path))
        if not looks_like_image(path) and os.path.isfile(path):
            return Probe(path=path, skipped=True)
        data = read_bytes(path, max_bytes=limits.max_bytes)
        return _decode(path, data, want, limits)
    except DecodeError as e:
        return Probe(path=path, error=e.reason, error_class="DecodeError")
    except MemoryError:
        return Probe(path=path, error=_OOM, error_class="MemoryError")
    except Exception as e:  # noqa: BLE001 - a hostile file must not end the batch
        return Probe(path=path, error=f"{type(e).__name__}: {e}", error_class=type(e).__name__)


_OOM = "out of memory while decoding (over the decoder's memory limit)"


def _decode(path: str, data: bytes, want: tuple[int, ...] | None, limits: Limits) -> Probe:
    mode = "L" if (want is None or want[1] == 1) else "RGB"
    # JPEG DCT scaling down to the model's input size; with no pixels wanted, to 1/8 (the
    # whole entropy-coded stream is still decoded, so a corrupt file is still found); a
    # third element (0, C, side) asks for "native" pixels whose sides stay >= side
    reduce_to = 1 if want is None else (want[2] if len(want) > 2 else want[0])
    size = 0 if want is None else want[0]  # resized inside Pillow (prepare then only reshapes)
    img = decode_bytes(data, path=path, mode=mode, max_pixels=limits.max_pixels,
                       max_bytes=limits.max_bytes, reduce_to=reduce_to, size=size)
    if want is None:
        pixels = None
    elif want[0] == 0:
        pixels = img.pixels  # native resolution, (H, W) or (H, W, 3)
    else:
        pixels = prepare(img.pixels, want[0], want[1])  # (C, S, S)
    return Probe(
        path=path, sha256=hashlib.sha256(data).hexdigest(), byte_size=len(data),
        width=img.width, height=img.height, mode=img.source_mode, format=img.format,
        pixels=pixels,
    )


def _probe_upload(up: Upload, want: tuple[int, ...] | None, limits: Limits) -> Probe:
    try:
        return _decode(up.name, up.data, want, limits)
    except DecodeError as e:
        return Probe(path=up.name, error=e.reason, error_class="DecodeError")
    except MemoryError:
        return Probe(path=up.name, error=_OOM, error_class="MemoryError")
    except Exception as e:  # noqa: BLE001 - a hostile upload must not end the server
        return Probe(path=up.name, error=f"{type(e).__name__}: {e}",
                     error_class=type(e).__name__)


_STARTED: Any = None  # in a worker: the pipe on which it says "starting file N"


def _run_task(token: int, items: Sequence[str | Upload], want: tuple[int, ...] | None,
              limits: Limits) -> list[Probe]:
    """A worker's task: a chunk of files, each announced (task, position, time) as it starts.

    The announcement is written synchronously before the file is touched, so
    the parent knows which file a hung or dead worker was on and when it
    began that very file.
    """
    out = []
    for j, item in enumerate(items):
        if _STARTED is not None:
            _STARTED.put((token, j, time.monotonic()))
        out.append(probe_file(item, want, limits))
    return out


def _init_worker(parent_pid: int, started: Any, max_memory: int) -> None:
    """Worker initializer: the start pipe, the memory limit, and the parent watch."""
    global _STARTED
    _STARTED = started
    _watch_parent(parent_pid)  # first: a thread's stack and malloc arena are address space too
    import PIL.Image

    PIL.Image.init()  # the format plugins, loaded before the limit is measured
    if max_memory > 0:
        _limit_memory(max_memory)


def _limit_memory(extra: int) -> None:
    """Let this process's address space grow by at most `extra` bytes from now on."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = vm + extra
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        if soft == resource.RLIM_INFINITY or want < soft:
            resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ImportError, OSError, ValueError):
        pass  # not Linux: no memory limit (the pixel limit still holds)


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent dies (even by SIGKILL), leaving no orphan.

    A pool worker holds both ends of its task pipe, so it would never see EOF
    and would wait forever for work from a dead parent.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _ready(delay: float) -> int:
    time.sleep(delay)  # long enough that each warm-up task lands in its own new worker
    return os.getpid()


def _reap(procs: list[Any]) -> None:
    """Wait for stopped workers; kill one that is still stuck on a file after 5 s."""
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _link_reason(path: str) -> str:
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
    return f"broken symbolic link (points to {os.readlink(path)!r}, which does not exist)"


@dataclass
class _Task:
    """A chunk of files given to one worker, and what it said about them."""

    idx: list[int]  # positions in the caller's list of paths
    token: int
    solo: bool  # a suspect retried alone: its failure is final
    current: int = -1  # position in `idx` of the file the worker announced last
    since: float | None = None  # when the worker started that file


class ProbePool:
    """Spawned worker processes probing files with a time limit per file.

    Use as a context manager; `probe(paths, want)` returns one Probe per path,
    in order. Files go to the workers in chunks (`chunk` files per task, fewer
    when there are few files), so the cost of a task's round trip is shared;
    the limits still hold per file. The workers start with the first use (or
    `start()`, which returns at once) and serve every later call until
    `close()`. With `workers=0` files are probed in this process (no isolation).
    """

    def __init__(self, workers: int, limits: Limits = Limits(), *, chunk: int = CHUNK) -> None:
        if workers < 0:
            msg = f"The 'workers' option must be >= 0. Got {workers} instead."
            raise ValueError(msg)
        if chunk < 1:
            msg = f"The 'chunk' option must be >= 1. Got {chunk} instead."
            raise ValueError(msg)
        self.workers = workers
        self.limits = limits
        self.chunk = chunk
        self._pool: ProcessPoolExecutor | None = None
        self._started: Any = None  # the current pool's start pipe (a new one per pool)
        self._tokens = itertools.count()
        self.restarts = 0  # pools replaced after a hang or a dead worker

    def __enter__(self) -> ProbePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> ProbePool:
        """Start the workers now, without waiting for them (they start while the caller works)."""
        if self.workers > 0:
            self._executor()
        return self

    def close(self) -> None:
        """Stop the workers and return: idle ones exit; one still stuck on a file is killed.

        The workers are waited for (and a stuck one killed after 5 s) by a
        background thread, so the caller does not wait for their exit.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API
        pool.shutdown(wait=False, cancel_futures=True)
        threading.Thread(target=_reap, args=(procs,), name="probe-reaper", daemon=True).start()

    def _executor(self) -> ProcessPoolExecutor:
        """The current pool; a new one spawns all its workers at once, without waiting."""
        if self._pool is None:
            ctx = get_context("spawn")
            # A fresh pipe per pool: a worker killed while writing to it cannot block the next.
            self._started = ctx.SimpleQueue()
            pool = ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(os.getpid(), self._started, self.limits.max_memory))
            for _ in range(self.workers):  # each submit spawns a worker while none is idle
                pool.submit(_ready, 0.0)
            self._pool = pool
        return self._pool

    def _drain_starts(self, inflight: dict[Future, _Task]) -> None:
        """Read the start pipe: which file each task is on, and since when."""
        q = self._started
        if q is None:
            return
        by_token = {t.token: t for t in inflight.values()}
        while not q.empty():
            token, j, t = q.get()
            task = by_token.get(token)
            if task is not None and j >= task.current:
                task.current, task.since = j, t

    def _kill(self) -> None:
        """Kill every worker of the current pool (a hung decoder ignores anything gentler)."""
        pool, self._pool = self._pool, None
        self._started = None  # the next pool gets a fresh start pipe
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API
        for p in procs:
            p.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)
        self.restarts += 1

    def probe_one(self, item: str | Upload, want: tuple[int, ...] | None) -> Probe:
        """Probe one file or upload (search by upload goes through here)."""
        return next(self.imap([item], want))

    def probe(self, paths: list[str], want: tuple[int, ...] | None) -> list[Probe]:
        """Probe every path; one Probe per path, in order."""
        return list(self.imap(paths, want))

    def imap(
        self, paths: Sequence[str | Upload], want: tuple[int, ...] | None, *,
        window: int | None = None,
    ) -> Iterator[Probe]:
        """Yield one Probe per path, in order, keeping up to `window` files in the workers.

        The workers go on decoding while the caller works on what was yielded
        (a pipeline); time limits are checked whenever the caller asks for more.
        """
        if self.workers == 0:
            for p in paths:
                yield probe_file(p, want, self.limits)
            return
        # native-resolution arrays can be large: fewer of them per task
        chunk = self.chunk if want is None or want[0] > 0 else max(1, self.chunk // 8)
        # few files: spread them over every worker rather than fill one chunk
        chunk = max(1, min(chunk, -(-len(paths) // (2 * self.workers))))
        window = max(2 * self.workers * chunk, window or 0)
        state = _Run(paths, want, chunk, window)
        nxt = 0
        while nxt < len(paths):
            while nxt in state.results:
                yield state.results.pop(nxt)
                nxt += 1
            if nxt >= len(paths):
                return
            self._step(state)

    def _submit(self, state: _Run, idx: list[int], solo: bool) -> None:
        token = next(self._tokens)
        f = self._executor().submit(_run_task, token, [state.paths[i] for i in idx], state.want,
                                    self.limits)
        state.inflight[f] = _Task(idx, token, solo)

    def _step(self, state: _Run) -> None:
        """Submit what fits, wait a little, collect results, handle dead and hung workers."""
        pending, suspects, inflight, results = (state.pending, state.suspects, state.inflight,
                                                state.results)
        if suspects:  # one suspect at a time, alone in its worker: its failure is its own
            if not inflight:
                self._submit(state, [suspects.popleft()], solo=True)
        else:
            while pending and state.files_in_flight() < state.window:
                n = min(state.chunk, len(pending))
                self._submit(state, [pending.popleft() for _ in range(n)], solo=False)
        done, _ = wait(list(inflight), timeout=0.05, return_when=FIRST_COMPLETED)
        self._drain_starts(inflight)
        now = time.monotonic()
        broken = recycle = False
        for f in done:
            task = inflight.pop(f)
            try:
                probes = f.result()
            except BrokenProcessPool:
                broken = True
                inflight[f] = task  # handled with the others below
                continue
            for i, pr in zip(task.idx, probes, strict=True):
                if pr.error_class == "MemoryError" and not task.solo:
                    # the worker may have been left short by an earlier file: retry this one
                    # alone in a fresh worker, as after a crash
                    suspects.append(i)
                    recycle = True
                else:
                    results[i] = pr
        if broken:
            self._drain_starts(inflight)
            for task in inflight.values():
                if task.current < 0:  # never started a file: retried alone, to be sure
                    suspects.extend(task.idx)
                    continue
                i = task.idx[task.current]  # the file its worker was on when a worker died
                if task.solo:
                    results[i] = Probe(path=_shown(state.paths[i]), error_class="WorkerDied",
                                       error=("the decoder process died while reading this "
                                              "file (crashed or killed); the file was skipped"))
                else:
                    suspects.append(i)
                # the chunk's other files (done but lost with the worker, or not begun) again
                pending.extendleft(reversed([k for k in task.idx if k != i]))
            inflight.clear()
            self._kill()
            return
        expired = [f for f, t in inflight.items()
                   if t.since is not None and now - t.since > self.limits.timeout_s]
        if expired or recycle:
            for f in expired:
                task = inflight[f]
                i = task.idx[task.current]
                results[i] = Probe(path=_shown(state.paths[i]), error_class="Timeout", error=(
                    f"decoding took over {self.limits.timeout_s:g}s; stopped"))
                task.idx = [k for k in task.idx if k != i]
            requeue = sorted(k for t in inflight.values() for k in t.idx)
            solo = any(t.solo for t in inflight.values())
            inflight.clear()
            self._kill()
            (suspects if solo else pending).extendleft(reversed(requeue))


class _Run:
    """The state of one `imap` call."""

    def __init__(self, paths: Sequence[str | Upload], want: tuple[int, ...] | None,
                 chunk: int, window: int) -> None:
        self.paths, self.want, self.chunk, self.window = paths, want, chunk, window
        self.results: dict[int, Probe] = {}
        self.pending: deque[int] = deque(range(len(paths)))
        self.suspects: deque[int] = deque()  # in flight when a worker died: retried alone
        self.inflight: dict[Future, _Task] = {}

    def files_in_flight(self) -> int:
        return sum(len(t.idx) for t in self.inflight.values())


def _shown(item: str | Upload) -> str:
    return item.name if isinstance(item, Upload) else item


__all__ = ["Limits", "Probe", "ProbePool", "Upload", "probe_file"]
