"""torch (or numpy's BLAS) on one thread while small products are worked on from several threads.

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


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_limiter: object | None = None
_blas_controller: object | None = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS (OpenBLAS, or whichever threadpoolctl finds) on one thread inside the
    block, so that several Python threads can each run its products on a core of their own.

    Process-wide like `one_torch_thread`, and counted the same way: a product another
    thread runs meanwhile also runs on one thread (slower, never wrong).
    """
    global _blas_depth, _blas_limiter, _blas_controller
    with _blas_lock:
        if _blas_depth == 0:
            if _blas_controller is None:  # scanning the loaded libraries takes ~20 ms: once
                from threadpoolctl import ThreadpoolController

                _blas_controller = ThreadpoolController()
            _blas_limiter = _blas_controller.select(user_api="blas").limit(limits=1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None
