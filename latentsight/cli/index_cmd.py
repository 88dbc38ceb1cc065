"""Commands: index build, info, verify, rebuild, compact."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from latentsight.cli.app import app
from latentsight.cli.choices import Backend, Metric, value
from latentsight.cli.common import (
    EXIT_FOUND,
    Common,
    ModelOpt,
    common_options,
    echo_json,
    handle_errors,
    show,
)
from latentsight.cli.scan_cmd import EngineOpt, RayAddressOpt, check_engine

index_app = typer.Typer(help="Build and check the vector index of a model.", no_args_is_help=True)
app.add_typer(index_app, name="index")

SpecOpt = Annotated[str, typer.Option(
    "--spec", help="faiss: an index_factory string (Flat, IVF256,Flat, IVF1024,PQ32, HNSW32) "
    "or auto (chosen by collection size, said on stderr); milvus: an index type with "
    "parameters (FLAT, IVF_FLAT:nlist=1024,nprobe=32, HNSW:M=16,ef=64) or auto.")]
BackendOpt = Annotated[Backend | None, typer.Option(
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
MetricOpt = Annotated[Metric, typer.Option(
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
@common_options()
@handle_errors
def build(
    model: ModelOpt = None,
    spec: SpecOpt = "Flat",
    backend: BackendOpt = None,
    uri: UriOpt = None,
    params: ParamsOpt = None,
    metric: MetricOpt = Metric("cosine"),
    local: Annotated[bool | None, typer.Option(
        "--local/--no-local", help="Also index multi-scale tile vectors of every image, for "
        "search by region (latentsight search QUERY --box X,Y,W,H). Default: keep them when "
        "the model has them.", show_default=False)] = None,
    anomaly: Annotated[str | None, typer.Option(
        "--anomaly", help="SCAN_MODEL: also index each image's anomaly-weighted vector (its "
        "most anomalous square under this scanning model's map), which latentsight search "
        "QUERY --anomaly SCAN_MODEL then compares, so defect images meet by defect kind.",
        show_default=False)] = None,
    workers: WorkersOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    *,
    opts: Common,
) -> None:
    """Embed every catalog image with the model and write its index.

    Examples: latentsight index build --spec auto;
    latentsight index build --spec IVF4096,PQ16,RFlat --params nprobe=32,k_factor_rf=16;
    latentsight index build --backend milvus --uri http://localhost:19530 --metric l2
    """
    from latentsight.index.manager import build_index
    from latentsight.index.store import check_metric

    backend, metric = value(backend), value(metric)
    check_metric(metric)  # before the catalog is opened or any image embedded
    check_engine(engine)
    h = opts.open_home()
    m = h.catalog.model(model)
    be, uri = _backend(backend, uri)
    embed = None
    if engine == "ray":  # imported only when asked for: Ray is an optional extra
        from latentsight.index.ray_engine import ray_embedder

        embed = ray_embedder(h, m, address=ray_address, workers=workers)
    st = build_index(h, m, spec=spec, backend=be, uri=uri, params=params, metric=metric,
                     device=opts.device, workers=workers, embed=embed, local=local)
    weighted = 0
    if anomaly:
        from latentsight.index.local import build_anomaly
        from latentsight.index.locks import write_lock
        from latentsight.index.manager import load_encoder

        with write_lock(h, "index build --anomaly"):
            weighted = build_anomaly(h, m, load_encoder(h, m, opts.device), anomaly).store.ntotal
    if opts.json:
        if anomaly:
            echo_json({**st.__dict__, "anomaly_ntotal": weighted, "anomaly_model": anomaly})
            return
        echo_json(st.__dict__)
    else:
        typer.echo(f"{st.backend} index of {st.model}: {st.ntotal} vectors ({st.spec}), "
                   f"generation {st.generation}, {st.path}")
        if st.local:
            typer.echo(f"local (region) vectors: {st.local_ntotal} tiles")
        if anomaly:
            typer.echo(f"anomaly-weighted vectors under {anomaly}: {weighted} images")


@index_app.command("rebuild")
@common_options(json=False)
@handle_errors
def rebuild(
    model: ModelOpt = None,
    spec: Annotated[str | None, typer.Option(help="New spec; default: keep the current one.")]
    = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    metric: Annotated[Metric | None, typer.Option(
        "--metric", help="cosine, ip or l2; default: keep the current one.",
        show_default=False)] = None,
    workers: WorkersOpt = None,
    *,
    opts: Common,
) -> None:
    """Rebuild a model's index from the catalog (the source of truth).

    Keeps the backend, spec, metric and URI of its latest index unless told
    otherwise. On Milvus a new collection is filled, then switched to, then
    the old one dropped: until the switch the old collection keeps serving.
    """
    from latentsight.index.manager import rebuild_index

    backend, metric = value(backend), value(metric)
    h = opts.open_home()
    m = h.catalog.model(model)
    row = h.catalog.index_for(m.id, backend)
    be = backend or (row.backend if row else _backend(None, uri)[0])
    if be == "milvus" and uri is None and (row is None or row.backend != "milvus"):
        uri = _backend(be, None)[1]
    st = rebuild_index(h, m, row, backend=be, spec=spec, metric=metric, uri=uri, device=opts.device,
                       workers=workers)
    typer.echo(f"rebuilt {st.backend} index of {st.model}: {st.ntotal} vectors ({st.spec}), "
               f"generation {st.generation}")


@index_app.command("info")
@common_options(device=False)
@handle_errors
def info(*, opts: Common) -> None:
    """List the indexes in the catalog: model, backend, spec, vectors, generation."""
    h = opts.open_home()
    names = {m.id: m.name for m in h.catalog.models()}
    rows = [
        {"model": names.get(r.model_id), "backend": r.backend, "spec": r.spec,
         "metric": r.metric or "cosine", "ntotal": r.ntotal, "generation": r.generation,
         "built_at": r.built_at, "path": r.path, "collection": r.collection,
         "model_sha256": r.model_sha256}
        for r in h.catalog.indexes()
    ]
    show(rows, ["model", "backend", "spec", "metric", "ntotal", "generation", "path"],
         as_json=opts.json, empty="no indexes yet; run: latentsight index build")


@index_app.command("verify")
@common_options(device=False)
@handle_errors
def verify(
    model: ModelOpt = None, backend: BackendOpt = None,
    *,
    opts: Common,
) -> None:
    """Compare the catalog with the index: missing, extra ids, stale model. Exit 1 on a mismatch.

    A damaged index (a truncated file, a dropped collection) is reported and
    exits 1 too; verify only reads, it never repairs (that is `index rebuild`).
    """
    from latentsight.index.manager import IndexDamagedError, status

    backend = value(backend)
    h = opts.open_home()
    m = h.catalog.model(model)
    try:
        st = status(h, m, backend)
    except IndexDamagedError as e:
        if opts.json:
            echo_json({"model": m.name, "ok": False, "damaged": e.reason,
                       "fix": f"latentsight index rebuild --model {m.name}"})
        else:
            typer.echo(f"DAMAGED: {e}")
        raise typer.Exit(EXIT_FOUND) from None
    if opts.json:
        echo_json({**st.__dict__, "ok": st.ok})
    else:
        verdict = "ok" if st.ok else "MISMATCH"
        typer.echo(f"{verdict}: {st.backend} index of {st.model} holds {st.ntotal} vectors; "
                   f"catalog has {st.catalog_images} images; missing {st.missing}, "
                   f"extra {st.extra}, stale model: {st.stale_model or 'no'}"
                   + (f"; {st.delta} in the delta file" if st.delta else ""))
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


@index_app.command("compact")
@common_options(device=False)
@handle_errors
def compact(model: ModelOpt = None, *, opts: Common) -> None:
    """Merge the delta file (vectors added since the last full write) into the faiss index.

    Ingest writes new vectors to a small delta file beside the index; it is
    merged by itself once it passes 5% of the index, or now with this command.
    Search results are the same before and after.
    """
    from latentsight.index.manager import compact_index

    h = opts.open_home()
    st = compact_index(h, h.catalog.model(model))
    if opts.json:
        echo_json({**st.__dict__, "ok": st.ok})
    else:
        typer.echo(f"compacted: faiss index of {st.model} holds {st.ntotal} vectors, "
                   f"delta {st.delta}, generation {st.generation}")
