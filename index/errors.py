"""Errors of the index component: the catalog and the vector stores.

Both derive from `latentsight.embedder.errors.LatentsightError`, so the CLI
turns them into one clear line and exit status 2.
"""

from __future__ import annotations

from latentsight.embedder.errors import LatentsightError


class CatalogError(LatentsightError):
    """The catalog is missing something the caller asked for, or is inconsistent."""


class StoreError(LatentsightError):
    """A vector store could not do what was asked (missing, stale, unsupported)."""


__all__ = ["CatalogError", "StoreError"]
