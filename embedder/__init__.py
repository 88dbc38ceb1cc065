"""embedder: turns images into arrays, embeddings, reconstructions and scores."""

from latentsight.embedder.errors import DecodeError, LatentsightError, ModelError

__all__ = ["DecodeError", "LatentsightError", "ModelError"]
