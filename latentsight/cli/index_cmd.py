"""Commands: index build, info, verify, rebuild."""

from __future__ import annotations

import os
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
    "--spec", help="faiss: an index_factory string (Flat, IVF256,Flat, IVF1024,PQ32, HNSW32) "
    "or auto (chosen by collection size, said on stderr); milvus: an index type with "
    "parameters (FLAT, IVF_FLAT:nlist=1024,nprobe=32, HNSW:M=16,ef=64) or auto.")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="faiss (a file in the home) or milvus. Default: LATENTSIGHT_BACKEND, "
    "else faiss.", show_default=False)]
UriOpt = Annotated[str | None, typer.Option(
    "--uri", help="Milvus URI: a file path = Milvus Lite (default HOME/indexes/MODEL.milvus.db), "
    "http://host:19530 = a Milvus server (token in LATENTSIGHT_MILVUS_TOKEN). "
    "Default: LATENTSIGHT_MILVUS_URI.", show_default=False)]
ParamsOpt = Annotated[str | None, typer.Option(
    "--params", help="faiss search parameters saved with the index, e.g. nprobe=32, "
    "efSearch=128, or k_factor_rf=16 for a re-ranked PQ spec (IVF4096,PQ16,RFlat).",
    show_default=False)]
MetricOpt = Annotated[str, typer.Option(
    "--metric", help="How vectors are compared: cosine (normalized inner product), ip (raw "
    "inner product) or l2 (Euclidean distance). Higher scores are closer for all three.")]


def _backend(backend: str | None, uri: str | None) -> tuple[str, str | None]:
    from latentsight.settings import ENV_MILVUS_URI, Settings

    s = Settings.resolve(backend=backend, milvus_uri=uri)
    return s.backend, (uri or os.environ.get(ENV_MILVUS_URI)) if s.backend == "milvus" else None
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Decoding worker processes (0 = in this process). Default: CPUs - 1, "
    "at most 4.", show_default=False)]


@index_app.command("build")
@handle_errors
def build(
    model: ModelOpt = None,
    spec: SpecOpt = "Flat",
    backend: BackendOpt = None,
    uri: UriOpt = None,
    params: ParamsOpt = None,
    metric: MetricOpt = "cosine",
    local: Annotated[bool | None, typer.Option(
        "--local/--no-local", help="Also index multi-scale tile vectors of every image, for "
        "search by region (latentsight search QUERY --box X,Y,W,H). Default: keep them when "
        "the model has them.", show_default=False)] = None,
    json_out: JsonOpt = False,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    home: HomeOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Embed every catalog image with the model and write its index.

    Examples: latentsight index build --spec auto;
    latentsight index build --spec IVF4096,PQ16,RFlat --params nprobe=32,k_factor_rf=16;
    latentsight index build --backend milvus --uri http://localhost:19530 --metric l2
    """
    from latentsight.index.manager import build_index
    from latentsight.index.store import check_metric

    check_metric(metric)  # before the catalog is opened or any image embedded
    h = open_home(home, db_url)
    m = h.catalog.model(model)
    be, uri = _backend(backend, uri)
    st = build_index(h, m, spec=spec, backend=be, uri=uri, params=params, metric=metric,
                     device=device, workers=workers, local=local)
    if json_out:
        echo_json(st.__dict__)
    else:
        typer.echo(f"{st.backend} index of {st.model}: {st.ntotal} vectors ({st.spec}), "
                   f"generation {st.generation}, {st.path}")
        if st.local:
            typer.echo(f"local (region) vectors: {st.local_ntotal} tiles")


@index_app.command("rebuild")
@handle_errors
def rebuild(
    model: ModelOpt = None,
    spec: Annotated[str | None, typer.Option(help="New spec; default: keep the current one.")]
    = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    metric: Annotated[str | None, typer.Option(
        "--metric", help="cosine, ip or l2; default: keep the current one.",
        show_default=False)] = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    home: HomeOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Rebuild a model's index from the catalog (the source of truth).

    Keeps the backend, spec, metric and URI of its latest index unless told
    otherwise. On Milvus a new collection is filled, then switched to, then
    the old one dropped: until the switch the old collection keeps serving.
    """
    from latentsight.index.manager import build_index, location

    h = open_home(home, db_url)
    m = h.catalog.model(model)
    row = h.catalog.index_for(m.id, backend)
    be = backend or (row.backend if row else _backend(None, uri)[0])
    if be == "milvus" and uri is None:
        uri = (location(h, row) if row is not None and row.backend == "milvus"
               else _backend(be, None)[1])
    same = row is not None and row.backend == be
    keep = row.spec if same else "Flat"
    keep_metric = (row.metric if same else None) or "cosine"
    st = build_index(h, m, spec=spec or keep, backend=be, uri=uri, metric=metric or keep_metric,
                     device=device, workers=workers)
    typer.echo(f"rebuilt {st.backend} index of {st.model}: {st.ntotal} vectors ({st.spec}), "
               f"generation {st.generation}")


@index_app.command("info")
@handle_errors
def info(json_out: JsonOpt = False, home: HomeOpt = None, db_url: DbUrlOpt = None) -> None:
    """List the indexes in the catalog: model, backend, spec, vectors, generation."""
    h = open_home(home, db_url)
    names = {m.id: m.name for m in h.catalog.models()}
    rows = [
        {"model": names.get(r.model_id), "backend": r.backend, "spec": r.spec,
         "metric": r.metric or "cosine", "ntotal": r.ntotal, "generation": r.generation,
         "built_at": r.built_at, "path": r.path, "collection": r.collection,
         "model_sha256": r.model_sha256}
        for r in h.catalog.indexes()
    ]
    if json_out:
        echo_json(rows)
    elif not rows:
        typer.echo("no indexes yet; run: latentsight index build")
    else:
        typer.echo(table(rows, ["model", "backend", "spec", "metric", "ntotal", "generation",
                                "path"]))


@index_app.command("verify")
@handle_errors
def verify(
    model: ModelOpt = None, backend: BackendOpt = None, json_out: JsonOpt = False,
    home: HomeOpt = None, db_url: DbUrlOpt = None,
) -> None:
    """Compare the catalog with the index: missing, extra ids, stale model. Exit 1 on a mismatch."""
    from latentsight.index.manager import status

    h = open_home(home, db_url)
    st = status(h, h.catalog.model(model), backend)
    if json_out:
        echo_json({**st.__dict__, "ok": st.ok})
    else:
        verdict = "ok" if st.ok else "MISMATCH"
        typer.echo(f"{verdict}: {st.backend} index of {st.model} holds {st.ntotal} vectors; "
                   f"catalog has {st.catalog_images} images; missing {st.missing}, "
                   f"extra {st.extra}, stale model: {st.stale_model or 'no'}")
        if st.local:
            typer.echo(f"local vectors: {st.local_ntotal} tiles; images missing "
                       f"{st.local_missing}, extra {st.local_extra}, stale model: "
                       f"{'yes' if st.local_stale_model else 'no'}")
        else:
            typer.echo("local vectors: none (search by region needs them: "
                       "latentsight index build --local)")
        if not st.ok:
            typer.echo(f"fix: latentsight index rebuild --model {st.model}")
    if not st.ok:
        raise typer.Exit(EXIT_FOUND)
