"""Fault injection for the reliability tests: real kills, hangs and vanishing files on demand.

Inert unless the environment variable `LATENTSIGHT_FAULTS` is set (the tests
set it for one subprocess at a time). Its value is a comma-separated list of
`action:arg` items:

| item               | effect                                                          |
|--------------------|-----------------------------------------------------------------|
| `kill:POINT`       | SIGKILL this process the first time it reaches `point(POINT)`   |
| `kill:POINT#N`     | ... the N-th time                                               |
| `hang:TEXT`        | a decode worker probing a file whose name contains TEXT hangs   |
| `die:TEXT`         | ... kills its own worker process (as a decoder crash would)     |
| `unlink:TEXT`      | a listed file whose name contains TEXT is deleted before probing|

The code paths they exercise are the real ones: the kill is a real SIGKILL,
the hang a real sleep the timeout must end, the file really disappears.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "LATENTSIGHT_FAULTS"
_hits: dict[str, int] = {}


def _items(action: str) -> list[str]:
    spec = os.environ.get(ENV, "")
    if not spec:
        return []
    out = []
    for item in spec.split(","):
        act, _, arg = item.strip().partition(":")
        if act == action and arg:
            out.append(arg)
    return out


def point(name: str) -> None:
    """A named kill point: SIGKILL the process here when `kill:NAME[#N]` is asked for."""
    if ENV not in os.environ:
        return
    _hits[name] = _hits.get(name, 0) + 1
    for arg in _items("kill"):
        target, _, nth = arg.partition("#")
        if target == name and _hits[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def on_probe(path: str) -> None:
    """Called by a decode worker before it reads `path`: hang or die when asked to."""
    if ENV not in os.environ:
        return
    base = os.path.basename(path)
    if any(t in base for t in _items("die")):
        os.kill(os.getpid(), signal.SIGKILL)
    if any(t in base for t in _items("hang")):
        time.sleep(3600)


def on_listed(paths: list[str]) -> None:
    """Called once the files to ingest are listed: delete those named by `unlink:TEXT`."""
    if ENV not in os.environ:
        return
    texts = _items("unlink")
    for p in paths:
        if any(t in os.path.basename(p) for t in texts):
            os.unlink(p)
