"""latentsight: learned image embeddings for similarity search, anomaly scans and sparse classes.

This package only wires the components together (CLI and settings). The work
happens in `embedder/` (images -> vectors), `index/` (catalog, vector stores,
ingest, search), `training/` (encoders, GAN, evaluation) and `dashboard/`.
"""

__version__ = "0.1.0"
