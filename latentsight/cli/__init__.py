"""The `latentsight` command line: a thin layer over the Python API of each component.

Results go to stdout (a table for people, `--json` for scripts); progress bars
and logs go to stderr. Exit status: 0 success, 1 "found something" where that
means something (a scan flagged images, verify found a mismatch), 2 error.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="latentsight",
    help="Learned image embeddings: ingest folders, train encoders, search similar images.\n\n"
    "Start with `latentsight demo`, or: ingest PATH --labels-from-folders, train, "
    "index build, search IMAGE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module registers its commands on `app` (or a sub-app) when imported.
from latentsight.cli import core, index_cmd, train_cmd  # noqa: E402, F401


def main() -> None:
    app()
