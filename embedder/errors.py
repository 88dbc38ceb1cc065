"""Error hierarchy shared by every component.

The CLI turns each into one clear line and an exit status; batch jobs record
them per file and go on.
"""

from __future__ import annotations


class LatentsightError(Exception):
    """Base class of every error latentsight raises on purpose."""


class DecodeError(LatentsightError):
    """A file could not be decoded as an image. Carries the path and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CatalogError(LatentsightError):
    """The catalog is missing something the caller asked for, or is inconsistent."""


class StoreError(LatentsightError):
    """A vector store could not do what was asked (missing, stale, unsupported)."""


class ModelError(LatentsightError):
    """A model or checkpoint is missing, invalid or does not match the catalog."""
