"""Commands: index build, info, verify, rebuild."""

from __future__ import annotations

from typing import Annotated

import typer

from latentsight.cli import app
from latentsight.cli.common import (
    EXIT_FOUND,
    DbUrlOpt,
    DeviceOpt,
    HomeOpt,
    JsonOpt,
    ModelOpt,
    echo_json,
    handle_errors,
    open_home,
    table,
)

index_app = typer.Typer(help="Build and check the vector index of a model.", no_args_is_help=True)
app.add_typer(index_app, name="index")

SpecOpt = Annotated[str, typer.Option(
    "--spec", help="faiss index_factory string: Flat, IVF256,Flat, IVF1024,PQ32, HNSW32 ...")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Decoding worker processes (0 = in this process). Default: CPUs - 1, "
    "at most 4.", show_default=False)]


@index_app.command("build")
@handle_errors
def build(
    model: ModelOpt = None,
    spec: SpecOpt = "Flat",
    json_out: JsonOpt = False,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    home: HomeOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Embed every catalog image with the model and write its index (atomically).

    Example: latentsight index build --spec Flat
    """
    from index.manager import build_index

    h = open_home(home, db_url)
    m = h.catalog.model(model)
    st = build_index(h, m, spec=spec, device=device, workers=workers)
    if json_out:
        echo_json(st.__dict__)
    else:
        typer.echo(f"index of {st.model}: {st.ntotal} vectors ({st.spec}), generation "
                   f"{st.generation}, {st.path}")


@index_app.command("rebuild")
@handle_errors
def rebuild(
    model: ModelOpt = None,
    spec: Annotated[str | None, typer.Option(help="New spec; default: keep the current one.")]
    = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    home: HomeOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Rebuild a model's index from the catalog (the source of truth)."""
    from index.manager import build_index

    h = open_home(home, db_url)
    m = h.catalog.model(model)
    row = h.catalog.index_for(m.id)
    st = build_index(h, m, spec=spec or (row.spec if row else "Flat"), device=device,
                     workers=workers)
    typer.echo(f"rebuilt index of {st.model}: {st.ntotal} vectors, generation {st.generation}")


@index_app.command("info")
@handle_errors
def info(json_out: JsonOpt = False, home: HomeOpt = None, db_url: DbUrlOpt = None) -> None:
    """List the indexes in the catalog: model, backend, spec, vectors, generation."""
    h = open_home(home, db_url)
    names = {m.id: m.name for m in h.catalog.models()}
    rows = [
        {"model": names.get(r.model_id), "backend": r.backend, "spec": r.spec,
         "ntotal": r.ntotal, "generation": r.generation, "built_at": r.built_at, "path": r.path}
        for r in h.catalog.indexes()
    ]
    if json_out:
        echo_json(rows)
    elif not rows:
        typer.echo("no indexes yet; run: latentsight index build")
    else:
        typer.echo(table(rows, ["model", "backend", "spec", "ntotal", "generation", "path"]))


@index_app.command("verify")
@handle_errors
def verify(
    model: ModelOpt = None, json_out: JsonOpt = False, home: HomeOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Compare the catalog with the index: missing and extra ids. Exit 1 on a mismatch."""
    from index.manager import status

    h = open_home(home, db_url)
    st = status(h, h.catalog.model(model))
    if json_out:
        echo_json({**st.__dict__, "ok": st.ok})
    else:
        verdict = "ok" if st.ok else "MISMATCH"
        typer.echo(f"{verdict}: index of {st.model} holds {st.ntotal} vectors; catalog has "
                   f"{st.catalog_images} images; missing {st.missing}, extra {st.extra}")
        if not st.ok:
            typer.echo(f"fix: latentsight index rebuild --model {st.model}")
    if not st.ok:
        raise typer.Exit(EXIT_FOUND)
