"""Command: delete images from the catalog and their vectors from every index."""

from __future__ import annotations

from typing import Annotated

import typer

from latentsight.cli import app
from latentsight.cli.common import DbUrlOpt, HomeOpt, JsonOpt, echo_json, handle_errors, open_home


@app.command("delete")
@handle_errors
def delete(
    ids: Annotated[list[int], typer.Argument(help="Catalog ids of the images to delete.")],
    json_out: JsonOpt = False,
    home: HomeOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Delete images from the catalog (the files stay on disk) and their vectors from every index.

    Example: latentsight delete 12 13 40
    """
    from latentsight.index.manager import delete_images

    h = open_home(home, db_url)
    out = delete_images(h, ids)
    if json_out:
        echo_json(out)
    else:
        typer.echo(f"deleted {out['deleted']} image(s) from the catalog; removed "
                   f"{out['vectors_removed']} vector(s); rebuilt {out['indexes_rebuilt']} "
                   "index(es)")
