"""torch on one intra-op thread while small tensors are worked on from several threads.

    with one_torch_thread():
        ...  # several Python threads each run torch ops; each op uses one core

torch's intra-op pool on small tensors (a scan's tiles, a search's row chunk)
costs more than it gives, most of all on a loaded machine, where a 2-thread op
waits for the thread another job holds (docs/benchmarks.md, "Scan pipeline" and
"Exact search at the limit"). The setting is process-wide: nested and
concurrent blocks count, and the last one to leave restores the thread count
the first one found.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_before = 1


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch.set_num_threads(1) inside the block; restored when the last block leaves."""
    import torch

    global _depth, _before
    with _lock:
        if _depth == 0:
            _before = torch.get_num_threads()
            torch.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_num_threads(_before)
