"""The vector-store backends a model's index can live in, defined once.

Light on purpose (no faiss or pymilvus import), so settings and the CLI can
check a name before anything heavy loads.
"""

from __future__ import annotations

from latentsight.index.errors import StoreError

BACKENDS = ("faiss", "milvus")
DEFAULT_BACKEND = "faiss"


def check_backend(backend: str) -> str:
    """Return `backend` when it is one of BACKENDS; a StoreError naming them otherwise."""
    if backend not in BACKENDS:
        msg = f"The 'backend' must be one of {', '.join(BACKENDS)}. Got {backend!r} instead."
        raise StoreError(msg)
    return backend
