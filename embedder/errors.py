"""Error hierarchy shared by every component: the base class and the embedder's errors.

The CLI turns each into one clear line and an exit status; batch jobs record
them per file and go on. The index's own errors, `CatalogError` and
`StoreError`, live in `latentsight.index.errors`.
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


class ModelError(LatentsightError):
    """A model or checkpoint is missing, invalid or does not match the catalog."""


def __getattr__(name: str) -> type:
    """`CatalogError` / `StoreError` moved to `latentsight.index.errors`; old imports still work.

    Resolved on first use only, so importing this module never imports the index.
    """
    if name in ("CatalogError", "StoreError"):
        import warnings
        from importlib import import_module

        warnings.warn(f"latentsight.embedder.errors.{name} moved to latentsight.index.errors",
                      DeprecationWarning, stacklevel=2)
        return getattr(import_module("latentsight.index.errors"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
