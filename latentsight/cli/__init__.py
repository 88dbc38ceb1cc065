"""The `latentsight` command line: a thin layer over the Python API of each component.

Results go to stdout (a table for people, `--json` for scripts); progress bars
and logs go to stderr. Exit status: 0 success, 1 "found something" where that
means something (a scan flagged images, verify found a mismatch), 2 error.
"""

from __future__ import annotations

# Each module registers its commands on `app` (or a sub-app) when imported.
from latentsight.cli import (  # noqa: F401
    core,
    dashboard_cmd,
    delete_cmd,
    gan_cmd,
    index_cmd,
    scan_cmd,
    train_cmd,
)
from latentsight.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
