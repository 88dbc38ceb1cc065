"""latentsight: learned image embeddings for similarity search, anomaly scans and sparse classes.

This package wires the components together (CLI and settings). The work happens in
`latentsight.embedder` (images -> vectors), `latentsight.index` (catalog, vector stores,
ingest, search), `latentsight.training` (encoders, GAN, evaluation) and
`latentsight.dashboard`.

In the repository the components are top-level folders (`embedder/`, `index/`, `training/`,
`dashboard/`) beside this one; the wheel installs them inside this package
(`pyproject.toml`'s `package-dir`). So that a checkout imports its own folders, and not those
of another install, the checkout's root joins this package's search path when the component
folders are not already inside it.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

COMPONENTS = ("embedder", "index", "training", "dashboard")

_here = _Path(__file__).resolve().parent
if not (_here / "embedder").is_dir() and (_here.parent / "embedder" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - a package's __path__ is a list
