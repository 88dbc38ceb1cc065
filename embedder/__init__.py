"""embedder: turns images into arrays, embeddings, reconstructions and scores."""

from latentsight.embedder.errors import (
    CatalogError,
    DecodeError,
    LatentsightError,
    ModelError,
    StoreError,
)

__all__ = ["CatalogError", "DecodeError", "LatentsightError", "ModelError", "StoreError"]
