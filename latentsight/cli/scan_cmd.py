"""Commands: scan (batch anomaly scan of folders), eval anomaly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentsight.cli.app import app
from latentsight.cli.common import (
    EXIT_ERROR,
    EXIT_FOUND,
    Common,
    ModelOpt,
    common_options,
    echo_json,
    err,
    handle_errors,
    table,
)
from latentsight.cli.core import eval_app

ENGINES = ("local", "ray")
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="local (this process) or ray (decode, embed and score on a Ray cluster; "
    "pip install 'latentsight[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="Ray head to join (HOST:PORT); default RAY_ADDRESS, else a Ray "
    "started in this process. Only with --engine ray.", show_default=False)]


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        msg = f"The 'engine' option must be one of {', '.join(ENGINES)}. Got {engine!r} instead."
        raise ValueError(msg)


@app.command()
@common_options()
@handle_errors
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (walked recursively); "
                                                "the images need not be in the catalog.")],
    model: ModelOpt = None,
    fpr: Annotated[float | None, typer.Option(
        "--fpr", help="Target false-positive rate; the threshold comes from the model's "
        "held-out normal scores. Default: the rate the model was calibrated for.",
        show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Explicit threshold in score units (1.0 = the calibrated one).",
        show_default=False)] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write scores.csv, heatmaps/ and report.html into DIR.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the last unfinished scan over the same paths.")] = False,
    neighbors: Annotated[int, typer.Option(
        "--neighbors", help="Nearest normal catalog images recorded per image.")] = 3,
    include_synthetic: Annotated[bool, typer.Option(
        "--include-synthetic", help="Allow synthetic catalog images as nearest normals.")]
    = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    *,
    opts: Common,
) -> None:
    """Score every image under PATHS; flag those above the threshold.

    Exit status: 0 nothing flagged, 1 something flagged, 2 error. Unreadable
    files are reported with a reason and the scan goes on.

    Example: latentsight scan incoming/ --fpr 0.01 --report scan-report/
    """
    from latentsight.index.scan import scan_paths

    check_engine(engine)
    if engine == "ray":  # imported only when asked for: Ray is an optional extra
        from latentsight.index.ray_engine import scan_paths_ray as scan_paths  # noqa: F811

    h = opts.open_home()
    from latentsight.training.anomaly import is_background

    row = h.catalog.model(model)
    if is_background(row):
        err(f"warning: {row.name} is a background model (trained with "
            "--normal-label '*', defective images too): its threshold does not separate "
            "defects. Train a scanning model on normal images: latentsight train "
            "--normal-label LABEL")
    extra = {"address": ray_address} if engine == "ray" else {}
    s = scan_paths(h, [str(p) for p in paths], model=model, fpr=fpr, threshold=threshold,
                   report_dir=report, resume=resume, k_neighbors=neighbors,
                   include_synthetic=include_synthetic, device=opts.device, **extra)
    for f in s.failed:
        err(f"failed: {f.path}: {f.error}")
    if opts.json:
        echo_json([r.as_json(s.threshold) for r in s.scored])
    else:
        flagged = sorted((r for r in s.scored if r.anomalous), key=lambda r: -(r.score or 0))
        if flagged:
            typer.echo(table([{"score": r.score, "path": r.path} for r in flagged],
                             ["score", "path"]))
        typer.echo(f"scan {s.scan_id} with {s.model}: {len(s.scored)} scored, {s.n_flagged} "
                   f"flagged (threshold {s.threshold:.4f}), {len(s.failed)} unreadable, "
                   f"{s.skipped} not images" + (f", {s.resumed} resumed" if s.resumed else ""))
        if report:
            typer.echo(f"report: {report / 'report.html'}")
    if s.n_flagged:
        raise typer.Exit(EXIT_FOUND)
    if not s.scored and s.failed:
        raise typer.Exit(EXIT_ERROR)


@eval_app.command("anomaly")
@common_options()
@handle_errors
def eval_anomaly(
    normal_label: Annotated[str | None, typer.Option(
        "--normal-label", help="The label of normal images; all other labels are anomalies. "
        "Default: the label the model was trained on.", show_default=False)] = None,
    model: ModelOpt = None,
    max_per_label: Annotated[int | None, typer.Option(
        help="Sample each label down to N images (seeded) for a quicker estimate.",
        show_default=False)] = None,
    *,
    opts: Common,
) -> None:
    """AUROC, AUPR, F1 at the calibrated threshold and the false-positive rate achieved.

    The model's own training images are left out. Example:
    latentsight eval anomaly --normal-label good
    """
    from latentsight.training.anomaly import evaluate_anomaly

    h = opts.open_home()
    res = evaluate_anomaly(h, normal_label=normal_label, model=model, device=opts.device,
                           max_per_label=max_per_label)
    if opts.json:
        echo_json(res)
        return
    typer.echo(f"model {res['model']} ({res['scorer']}), normal = {res['normal_label']!r}: "
               f"{res['n_normal']} normal, {res['n_anomalous']} anomalous images")
    typer.echo(f"AUROC {res['auroc']:.3f}  AUPR {res['aupr']:.3f}  F1 {res['f1']:.3f} at "
               f"threshold {res['threshold']:.3f}  (precision {res['precision']:.3f}, recall "
               f"{res['recall']:.3f}, false-positive rate {res['fpr']:.3f})")
    for rate, r in res.get("at_fpr", {}).items():
        typer.echo(f"at the calibrated threshold for FPR {rate} ({r['threshold']:.3f}): TPR "
                   f"{r['tpr']:.3f}, FPR {r['fpr']:.3f}")
        if r.get("note"):
            err(f"warning: {r['note']}")
    rows = [{"label": k, "auroc": v} for k, v in res["auroc_per_label"].items()]
    if rows:
        typer.echo(table(rows, ["label", "auroc"]))
