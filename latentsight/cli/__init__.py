"""The `latentsight` command line: a thin layer over the Python API of each component.

Results go to stdout (a table for people, `--json` for scripts); progress bars
and logs go to stderr. Exit status: 0 success, 1 "found something" where that
means something (a scan flagged images, verify found a mismatch), 2 error.
"""

from __future__ import annotations

from typing import Annotated

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



@app.callback()
def _global_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print debug lines.")]
    = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only warnings and errors on stderr; no progress bars.")] = False,
) -> None:
    """Learned image embeddings: ingest folders, train encoders, search similar images."""
    from latentsight.cli.output import configure

    try:
        configure(verbose=verbose, quiet=quiet)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


# Each module registers its commands on `app` (or a sub-app) when imported.
from latentsight.cli import (  # noqa: E402, F401
    core,
    dashboard_cmd,
    delete_cmd,
    gan_cmd,
    index_cmd,
    scan_cmd,
    train_cmd,
)


def main() -> None:
    app()
