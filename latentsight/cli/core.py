"""Commands: ingest, search, models, eval, demo (train is in train_cmd.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentsight.cli.app import app
from latentsight.cli.common import (
    Common,
    ModelOpt,
    common_options,
    echo_json,
    handle_errors,
    safe_text,
    show,
    table,
)
from latentsight.embedder.images import DECODE_TIMEOUT_S

models_app = typer.Typer(help="List trained models and choose the active one.",
                         no_args_is_help=True)
eval_app = typer.Typer(help="Measure models on the labeled catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")


@app.command()
@common_options(device=False)
@handle_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (walked recursively).")],
    labels_from_folders: Annotated[bool, typer.Option(
        "--labels-from-folders", help="Label each image with its parent folder's name.")] = False,
    label: Annotated[str | None, typer.Option(help="Label every ingested image with TEXT.")] = None,
    source: Annotated[str, typer.Option(help="Source tag stored with each image.")] = "ingest",
    workers: Annotated[int | None, typer.Option(
        help="Decoding worker processes (0 = decode in this process, no time limit). "
        "Default: CPUs - 1, at most 4, at least 1.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(
        help="Files per catalog transaction.", min=1)] = 256,
    decode_timeout: Annotated[float, typer.Option(
        help="Seconds one file may take to decode before it is reported and skipped.",
        min=0.1)] = DECODE_TIMEOUT_S,
    log_commits: Annotated[bool, typer.Option(
        "--log-commits", hidden=True, help="One stderr line per committed batch (its ids).")]
    = False,
    *,
    opts: Common,
) -> None:
    """Add images to the catalog (and to the active model's index, when it has one).

    Images are recognized by content, deduplicated by SHA-256 (re-ingesting a
    folder adds nothing) and bad files are reported with a reason without
    stopping the run. Exit status: 0 when everything readable was ingested (bad
    files are listed with their reasons, in --json under "failed"), 2 when the run
    could not happen (a path that does not exist, another writer holds the home).

    Example: latentsight ingest data/ --labels-from-folders
    """
    from latentsight.embedder.probe import Limits
    from latentsight.index.ingest import ingest_paths

    h = opts.open_home()
    rep = ingest_paths(h, [str(p) for p in paths], label=label,
                       labels_from_folders=labels_from_folders, source=source, workers=workers,
                       batch_size=batch_size, limits=Limits(timeout_s=decode_timeout),
                       log=log_commits)
    if opts.json:
        d = rep.as_dict()
        echo_json({"added": d["added"], "duplicates": d["duplicates"], "failed": d["failed"],
                   "skipped": d["skipped"], "indexed": d["indexed"]})
    else:
        typer.echo(f"added {rep.added}, duplicates {rep.duplicates}, failed {len(rep.failed)}, "
                   f"skipped (not images) {rep.skipped}, added to index {rep.indexed}")
        for f in rep.failed:
            typer.echo(f"  failed: {safe_text(f.path)}: {safe_text(f.error)}")


@app.command()
@common_options()
@handle_errors
def search(
    query: Annotated[str, typer.Argument(help="An image file (need not be in the catalog) or a "
                                         "catalog id.")],
    k: Annotated[int, typer.Option("--k", "-k", help="How many results.")] = 10,
    label: Annotated[str | None, typer.Option(help="Only return images of this label.")] = None,
    include_synthetic: Annotated[bool, typer.Option(
        "--include-synthetic", help="Also return GAN-made images (left out by default).")]
    = False,
    box: Annotated[str | None, typer.Option(
        "--box", help="X,Y,W,H: search with this region of QUERY (pixels); each result gives "
        "where in it the match lies. Needs local vectors: latentsight index build --local.",
        show_default=False)] = None,
    anomaly: Annotated[str | None, typer.Option(
        "--anomaly", help="SCAN_MODEL: search with QUERY's most anomalous square under this "
        "scanning model (latentsight train --normal-label), like --box; finds the same kind "
        "of defect rather than the same background. Uses the anomaly-weighted vectors when "
        "they were built under SCAN_MODEL (latentsight index build --anomaly SCAN_MODEL), "
        "else the local vectors.",
        show_default=False)] = None,
    weighted: Annotated[bool | None, typer.Option(
        "--weighted/--no-weighted", help="With --anomaly: require (or never use) the "
        "anomaly-weighted vectors. Default: use them when built under SCAN_MODEL.",
        show_default=False)] = None,
    model: ModelOpt = None,
    *,
    opts: Common,
) -> None:
    """Find the catalog images most similar to QUERY, best first.

    Examples: latentsight search photo.png --k 5 --label scratches;
    latentsight search photo.png --box 120,40,64,64 --json;
    latentsight search photo.png --anomaly scan-good
    """
    from latentsight.index.search import search as run_search

    region = parse_box(box) if box is not None else None
    h = opts.open_home()
    hits = run_search(h, query, k=k, label=label, model=model, device=opts.device,
                      include_synthetic=include_synthetic, box=region, anomaly=anomaly,
                      weighted=weighted)
    if opts.json:
        echo_json([hit.as_dict() for hit in hits])
    else:
        found = region or anomaly
        cols = ["id", "score", "label", "source", "synthetic"] + (["box"] if found else [])
        typer.echo(table([hit.as_dict() for hit in hits], [*cols, "path"]))


def parse_box(text: str) -> tuple[int, int, int, int]:
    """"X,Y,W,H" -> four integers; a ValueError naming the value otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        msg = f"The '--box' option must be X,Y,W,H (four integers). Got {text!r} instead."
        raise ValueError(msg) from None
    if w < 1 or h < 1 or x < 0 or y < 0:
        msg = f"The '--box' option needs x, y >= 0 and w, h >= 1. Got {text!r} instead."
        raise ValueError(msg)
    return x, y, w, h


@models_app.command("list")
@common_options(device=False)
@handle_errors
def models_list(*, opts: Common) -> None:
    """List trained models: name, kind, created, validation loss, active."""
    h = opts.open_home()
    rows = [
        {"name": m.name, "kind": m.kind, "created": m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
         "val_loss": (m.metrics or {}).get("val_loss"), "active": m.active}
        for m in h.catalog.models()
    ]
    show(rows, ["name", "kind", "created", "val_loss", "active"], as_json=opts.json,
         empty="no models yet; run: latentsight train")


@models_app.command("use")
@common_options(json=False, device=False)
@handle_errors
def models_use(
    name: Annotated[str, typer.Argument(help="Model to make active.")],
    *,
    opts: Common,
) -> None:
    """Make NAME the active model (used by search, ingest and scans by default)."""
    h = opts.open_home()
    m = h.catalog.set_active(name)
    typer.echo(f"active model: {m.name}")
    if h.catalog.index_for(m.id) is None:
        typer.echo(f"it has no index yet; run: latentsight index build --model {m.name}")


@eval_app.command("retrieval")
@common_options()
@handle_errors
def eval_retrieval(
    model: ModelOpt = None,
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    anomaly: Annotated[str | None, typer.Option(
        "--anomaly", help="SCAN_MODEL: also measure the anomaly-weighted vectors under this "
        "scanning model (what search --anomaly compares: each image's most anomalous "
        "square), read from the index when built with index build --anomaly SCAN_MODEL, "
        "else computed here (slower).", show_default=False)] = None,
    *,
    opts: Common,
) -> None:
    """Leave-one-out precision@k and mAP, micro and macro (mean over labels), per label,
    beside the raw-pixel and PCA-64 baselines measured on the same images.

    Examples:

      latentsight eval retrieval
      latentsight eval retrieval --model ae-1 --k 5 --json
      latentsight eval retrieval --anomaly scan-good   # defect kinds: by the defect
    """
    from latentsight.training.evaluate import evaluate_retrieval

    h = opts.open_home()
    res = evaluate_retrieval(h, model=model, k=k, device=opts.device, anomaly=anomaly)
    if opts.json:
        echo_json(res)
        return
    kk = res["k"]
    methods = [("model " + res["model"], res)]
    if "anomaly" in res:
        methods.append((f"model {res['model']}, anomaly-weighted under {anomaly}",
                        res["anomaly"]))
    rows = [{"method": name, f"P@{kk} micro": r["precision_at_k"],
             f"P@{kk} macro": r["macro_precision_at_k"], "mAP micro": r["map"],
             "mAP macro": r["macro_map"]}
            for name, r in (*methods,
                            ("raw pixels", res["baseline_raw_pixels"]),
                            ("PCA-64", res["baseline_pca64"]))]
    g = res["input"]
    pca = f", pixel PCA-{res['pixel_pca']} + learned" if res.get("pixel_pca") else ""
    typer.echo(f"{res['n']} labeled images, leave-one-out, k={kk}; model input "
               f"{g['width']}x{g['height']} ({g['resize']}){pca}")
    typer.echo(table(rows, list(rows[0])))
    if "anomaly" in res:
        src = res["anomaly"]["vectors"]
        typer.echo(f"anomaly-weighted vectors of {res['anomaly']['n']} images: "
                   + ("read from the index" if src == "index" else
                      f"computed now (store them: latentsight index build --anomaly {anomaly})"))
    weighted = res.get("anomaly", {}).get("per_label", {})
    per = [{"label": lab, "n": v["n"], f"P@{kk} model": v["precision_at_k"],
            **({f"P@{kk} anomaly-weighted": weighted.get(lab, {}).get("precision_at_k")}
               if "anomaly" in res else {}),
            f"P@{kk} raw": res["baseline_raw_pixels"]["per_label"].get(lab, {}).get(
                "precision_at_k"),
            f"P@{kk} PCA-64": res["baseline_pca64"]["per_label"].get(lab, {}).get(
                "precision_at_k"),
            "mAP model": v["map"]}
           for lab, v in res["per_label"].items()]
    typer.echo(table(per, list(per[0])) if per else "")


@app.command()
@common_options(json=False)
@handle_errors
def demo(
    epochs: Annotated[int, typer.Option(help="Training epochs for the demo model.")] = 8,
    *,
    opts: Common,
) -> None:
    """Run the whole pipeline on scikit-learn's bundled digits (no download needed).

    Exports the 1797 digits as 32x32 PNGs into HOME/demo-data, ingests them with
    labels, trains an autoencoder briefly, builds the index, runs a few
    searches and prints precision@10 beside the raw-pixel baseline.
    """
    from latentsight.demo import run_demo

    h = opts.open_home()
    code = run_demo(h, epochs=epochs, device=opts.device)
    if code:
        raise typer.Exit(code)

