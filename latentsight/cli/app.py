"""The Typer app and its global options (-v/-q); the command modules register on it."""

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
