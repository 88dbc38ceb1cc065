"""Command: delete images from the catalog and their vectors from every index."""

from __future__ import annotations

from typing import Annotated

import typer

from latentsight.cli.app import app
from latentsight.cli.common import Common, common_options, echo_json, handle_errors


@app.command("delete")
@common_options(device=False)
@handle_errors
def delete(
    ids: Annotated[list[int], typer.Argument(help="Catalog ids of the images to delete.")],
    *,
    opts: Common,
) -> None:
    """Delete images from the catalog (the files stay on disk) and their vectors from every index.

    Example: latentsight delete 12 13 40
    """
    from latentsight.index.manager import delete_images

    h = opts.open_home()
    out = delete_images(h, ids)
    if opts.json:
        echo_json(out)
    else:
        typer.echo(f"deleted {out['deleted']} image(s) from the catalog; removed "
                   f"{out['vectors_removed']} vector(s); rebuilt {out['indexes_rebuilt']} "
                   "index(es)")
