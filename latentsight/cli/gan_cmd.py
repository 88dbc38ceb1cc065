"""Commands: gan train, synth, classes, eval gan, eval augment."""

from __future__ import annotations

from typing import Annotated

import typer

from latentsight.cli.app import app
from latentsight.cli.choices import GanLoss, value
from latentsight.cli.common import (
    Common,
    ModelOpt,
    common_options,
    echo_json,
    err,
    handle_errors,
    table,
)
from latentsight.cli.core import eval_app

gan_app = typer.Typer(help="Train the class-conditional GAN used to synthesize sparse classes.",
                      no_args_is_help=True)
app.add_typer(gan_app, name="gan")

GanOpt = Annotated[str | None, typer.Option(
    "--gan", help="GAN model name. Default: the newest GAN.", show_default=False)]


@gan_app.command("train")
@common_options()
@handle_errors
def gan_train(
    labels: Annotated[list[str] | None, typer.Option(
        "--labels", "--label", help="Train on these labels only (repeatable). Default: every "
        "label; sparse classes borrow structure from the rich ones.")] = None,
    steps: Annotated[int, typer.Option(help="Generator updates.")] = 2000,
    loss: Annotated[GanLoss, typer.Option(help="The GAN objective.")] = GanLoss("hinge"),
    image_size: Annotated[int, typer.Option(help="32 or 64.")] = 32,
    channels: Annotated[int, typer.Option(help="1 = grayscale, 3 = RGB.")] = 1,
    batch_size: Annotated[int, typer.Option()] = 32,
    g_width: Annotated[int, typer.Option(help="Generator channels at full resolution.")] = 16,
    d_width: Annotated[int, typer.Option(help="Discriminator channels at full resolution.")]
    = 16,
    lr_g: Annotated[float, typer.Option()] = 2e-4,
    lr_d: Annotated[float, typer.Option()] = 2e-4,
    diffaug: Annotated[bool, typer.Option(help="DiffAugment: translation, cutout, brightness.")]
    = True,
    holdout: Annotated[float, typer.Option(help="Fraction of each class kept out of training "
                                           "for `eval augment` (0 = use everything).")] = 0.0,
    sample_every: Annotated[int, typer.Option(help="Save a sample grid every N steps.")] = 500,
    seed: Annotated[int, typer.Option()] = 0,
    name: Annotated[str | None, typer.Option(help="Model name. Default: gan-TIMESTAMP.")] = None,
    *,
    opts: Common,
) -> None:
    """Train the conditional GAN on the catalog's real labeled images.

    Saved as safetensors + JSON in HOME/models/NAME, with sample grids in
    HOME/models/NAME/samples; registered as a generator (never the active encoder).
    Failure signatures (discriminator collapse, climbing generator loss, samples of
    one label all alike) are reported at the end.

    Example: latentsight gan train --steps 2000 --image-size 32
    """
    from latentsight.training.gan.diffaug import POLICIES
    from latentsight.training.gan.model import GANConfig
    from latentsight.training.gan.train import GANTrainConfig, train_gan_on_catalog

    h = opts.open_home()
    cfg = GANTrainConfig(steps=steps, batch_size=batch_size, loss=value(loss), lr_g=lr_g, lr_d=lr_d,
                         diffaug=list(POLICIES) if diffaug else [], sample_every=sample_every,
                         seed=seed, device=opts.device)
    gcfg = GANConfig(image_size=image_size, channels=channels, g_width=g_width, d_width=d_width)
    res = train_gan_on_catalog(h, cfg, gan=gcfg, labels=list(labels or []) or None, name=name,
                               holdout=holdout)
    diag = res.diagnostics
    out = {"name": res.name, "checkpoint": res.checkpoint, "seconds": round(res.seconds, 1),
           "classes": res.model.config.classes, "diagnostics": diag,
           "last": res.history[-1] if res.history else None, "grids": res.grids}
    if opts.json:
        echo_json(out)
        return
    typer.echo(f"trained GAN {res.name} on {len(res.model.config.classes)} classes in "
               f"{res.seconds:.0f}s; sample grids in {res.checkpoint}/samples")
    verdict = "no failure signature found" if not diag["warnings"] else \
        f"{len(diag['warnings'])} warning(s) (see above)"
    typer.echo(f"diagnostics: {verdict}; sample diversity vs real: " +
               ", ".join(f"{k} {v:.2f}" for k, v in diag["diversity"].items()))
    typer.echo(f"next: latentsight synth --label LABEL --n 50 --gan {res.name}")


@app.command()
@common_options()
@handle_errors
def synth(
    label: Annotated[str, typer.Option("--label", help="Class to synthesize.")],
    n: Annotated[int, typer.Option("--n", help="How many images to add.")] = 50,
    gan: GanOpt = None,
    min_distance: Annotated[float | None, typer.Option(
        help="Reject samples closer than this to a real image of the label (active encoder's "
        "embeddings, in units of their spread). Default: half the real images' median "
        "nearest-neighbour distance.",
        show_default=False)] = None,
    plausibility: Annotated[bool, typer.Option(
        help="Reject samples the anomaly scorer flags, when one exists.")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    *,
    opts: Common,
) -> None:
    """Generate N gated images of LABEL into the home and the catalog (source=synthetic).

    Near-copies of real images (memorization) and, when a scorer exists,
    implausible samples are rejected. Synthetic images stay out of search unless
    asked for (`latentsight search --include-synthetic`).

    Example: latentsight synth --label scratches --n 100
    """
    from latentsight.training.gan.synth import synthesize
    from latentsight.training.gan.train import load_generator

    h = opts.open_home()
    model, row = load_generator(h, gan)
    rep = synthesize(h, model, row, label, n, min_distance=min_distance,
                     plausibility="auto" if plausibility else None, seed=seed, device=opts.device,
                     notify=err)
    if opts.json:
        echo_json(rep.as_dict())
        return
    typer.echo(f"{rep.accepted} synthetic {label!r} images added from {rep.gan} (generated "
               f"{rep.generated}: {rep.rejected_memorized} near-copies rejected at distance "
               f"<= {rep.min_distance:.4f}, {rep.rejected_implausible} implausible, "
               f"plausibility gate {rep.plausibility}); added to index {rep.indexed}")
    if rep.accepted < rep.requested:
        typer.echo(f"only {rep.accepted} of {rep.requested} passed the gates")


@app.command()
@common_options(device=False)
@handle_errors
def classes(
    sparse_frac: Annotated[float, typer.Option(
        help="A label is sparse below this fraction of the median real count.")] = 0.5,
    *,
    opts: Common,
) -> None:
    """List label counts (real and synthetic) and flag the sparse labels."""
    from latentsight.index.classes import class_table

    t = class_table(opts.open_home().catalog, sparse_frac=sparse_frac)
    med, rows = t.median_real, t.rows
    if opts.json:
        echo_json({"median_real": med, "sparse_frac": sparse_frac, "labels": rows})
        return
    if not rows:
        typer.echo("no labeled images; run: latentsight ingest PATH --labels-from-folders")
        return
    typer.echo(table(rows, ["label", "real", "synthetic", "sparse"]))
    typer.echo(f"median real count {med}; sparse (< {sparse_frac:g} x median): "
               f"{', '.join(t.sparse) or 'none'}")


@eval_app.command("gan")
@common_options()
@handle_errors
def eval_gan(
    gan: GanOpt = None,
    n: Annotated[int, typer.Option("--n", help="Generated samples per class.")] = 200,
    model: ModelOpt = None,
    inception: Annotated[str | None, typer.Option(
        help="A local inception_v3 .safetensors checkpoint to use as feature extractor "
        "instead of the latentsight encoder.", show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", help="Neighbours for precision/recall.")] = 3,
    *,
    opts: Common,
) -> None:
    """FID and k-NN precision/recall per class between real and generated images."""
    from latentsight.training.gan.evaluate import evaluate_gan

    h = opts.open_home()
    res = evaluate_gan(h, gan=gan, n=n, encoder_model=model, inception=inception, k=k,
                       device=opts.device)
    if opts.json:
        echo_json(res)
        return
    typer.echo(f"GAN {res['gan']}; features: {res['feature_extractor']}; real set: "
               f"{res['real_set']}")
    rows = [{"label": lab, **v} for lab, v in res["per_class"].items()]
    typer.echo(table(rows, ["label", "fid", "precision", "recall", "n_real", "n_fake"]))


@eval_app.command("augment")
@common_options(device_default="cpu")
@handle_errors
def eval_augment(
    label: Annotated[str, typer.Option("--label", help="The sparse class to augment.")],
    gan: GanOpt = None,
    n_synth: Annotated[int | None, typer.Option(
        help="Synthetic images added. Default: up to the median class count.",
        show_default=False)] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per condition.")] = 3,
    classic: Annotated[bool, typer.Option(help="Also run classic augmentation arms.")] = False,
    steps: Annotated[int, typer.Option(help="Classifier optimizer steps.")] = 600,
    *,
    opts: Common,
) -> None:
    """Small CNN on real vs real + synthetic LABEL images; per-class P/R/F1 on real test images."""
    from latentsight.training.gan.evaluate import augment_study_on_catalog

    h = opts.open_home()
    res = augment_study_on_catalog(h, label, gan=gan, n_synth=n_synth,
                                   seeds=tuple(range(seeds)), classic=classic, steps=steps,
                                   device="cpu" if opts.device == "auto" else opts.device)
    if opts.json:
        echo_json(res)
        return
    typer.echo(f"GAN {res['gan']}, sparse label {label!r}: {res['n_synthetic']} synthetic "
               f"added; {res['n_test_real']} real test images; {res['test_set']}")
    rows = []
    for cond, r in res["conditions"].items():
        for lab, v in r["per_class"].items():
            rows.append({"condition": cond, "label": lab,
                         "precision": f"{v['precision_mean']:.3f} +- {v['precision_std']:.3f}",
                         "recall": f"{v['recall_mean']:.3f} +- {v['recall_std']:.3f}",
                         "f1": f"{v['f1_mean']:.3f} +- {v['f1_std']:.3f}",
                         "support": v["support"]})
    typer.echo(table(rows, ["condition", "label", "precision", "recall", "f1", "support"]))
