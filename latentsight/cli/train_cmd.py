"""Command: train an encoder (ae | vae | vit) with shared and model-specific options."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from latentsight.cli.app import app
from latentsight.cli.choices import Aux, ModelKind, Scorer, value
from latentsight.cli.common import Common, common_options, echo_json, err, handle_errors

# CLI option -> model config field. An option left out keeps the model's default;
# an option the chosen model has no field for is an error, not silently ignored.
MODEL_OPTIONS = {
    "--image-size": "image_size", "--channels": "channels", "--latent-dim": "latent_dim",
    "--width": "width", "--depth": "depth", "--beta": "beta",
    "--kl-warmup": "kl_warmup_epochs", "--free-bits": "free_bits",
    "--mask-ratio": "mask_ratio", "--patch-size": "patch_size", "--dim": "dim",
    "--heads": "heads", "--norm-pix-loss": "norm_pix_loss",
}


def _model_config(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    from latentsight.embedder.models import config_class

    fields = {f.name for f in dataclasses.fields(config_class(kind))}
    out = {}
    for opt, field in MODEL_OPTIONS.items():
        value = given.get(field)
        if value is None:
            continue
        if field not in fields:
            owners = _owners(field)
            msg = f"The {opt} option applies to {' and '.join(owners)} models. Got --model {kind}."
            raise ValueError(msg)
        out[field] = value
    return out


def _owners(field: str) -> list[str]:
    from latentsight.embedder.models import REGISTRY

    return [k for k, (_, c) in sorted(REGISTRY.items())
            if field in {f.name for f in dataclasses.fields(c)}]


@app.command()
@common_options()
@handle_errors
def train(
    model: Annotated[ModelKind | None, typer.Option(
        "--model", help="Model family: ae, vae or vit. Default: the benchmark's best "
        "(see docs/benchmarks.md).", show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="Train only on images of this label (repeatable).")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Maximum epochs (early stopping may end sooner).", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).",
                                             show_default=False)] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.",
                                                 show_default=False)] = None,
    seed: Annotated[int, typer.Option()] = 0,
    augment: Annotated[bool | None, typer.Option(
        "--augment/--no-augment", help="Random flips and 90-degree turns. Default: off "
        "(a 6 is not a 9); on for --normal-label.", show_default=False)] = None,
    crop_scale: Annotated[float | None, typer.Option(
        help="Random crops of side in [S, 1] x image, resized back; 0 = off. Default: 0.85; "
        "off for --normal-label.",
        show_default=False)] = None,
    rotate: Annotated[float | None, typer.Option(
        help="Small random rotations up to +/- DEG degrees; 0 = off. Default: 20; off for "
        "--normal-label.",
        show_default=False)] = None,
    jitter: Annotated[float | None, typer.Option(
        help="Random brightness and contrast changes up to this fraction, in [0, 1]; 0 = off. "
        "Default: 0.3; 0 for --normal-label.", show_default=False)] = None,
    noise: Annotated[float | None, typer.Option(
        help="Gaussian pixel noise of std up to this (pixels in [0, 1]); 0 = off. "
        "Default: 0.12; 0 for --normal-label.", show_default=False)] = None,
    aux: Annotated[Aux | None, typer.Option(
        help="Auxiliary objective on two augmented views: none or infonce.",
        show_default=False)] = None,
    aux_weight: Annotated[float | None, typer.Option(
        help="Weight of the auxiliary objective.", show_default=False)] = None,
    pixel_pca: Annotated[int | None, typer.Option(
        "--pixel-pca", help="Add N principal components of the input pixels (fitted on the "
        "training images, saved in the checkpoint) beside the learned embedding, each part "
        "unit length; 0 = off. Default: 64; 0 for --normal-label (tile crops). See "
        "docs/benchmarks.md, retrieval across protocols.", show_default=False)] = None,
    pixel_pca_standardize: Annotated[bool | None, typer.Option(
        "--pixel-pca-standardize/--no-pixel-pca-standardize", help="With --pixel-pca: the "
        "components of each image's pixels minus their mean, over their std (brightness and "
        "contrast left out). Default: on.", show_default=False)] = None,
    geometry: Annotated[str | None, typer.Option(
        "--geometry", help="auto: the input's aspect from the catalog images (short side = "
        "--image-size), images fitted aspect-preserving and padded; square: --image-size "
        "squared, images squashed (models before this option).", show_default=False)] = None,
    # model-specific options: left out = the model's default
    image_size: Annotated[int | None, typer.Option(help="all: Input side in pixels.")] = None,
    channels: Annotated[int | None, typer.Option(help="all: 1 = grayscale, 3 = RGB.")] = None,
    latent_dim: Annotated[int | None, typer.Option(help="ae/vae: Size of z.")] = None,
    width: Annotated[int | None, typer.Option(help="ae/vae: Channels of the first conv "
                                              "stage.")] = None,
    depth: Annotated[int | None, typer.Option(help="ae/vae: conv stages; vit: transformer "
                                              "blocks.")] = None,
    beta: Annotated[float | None, typer.Option(help="vae: Weight of the KL term.")] = None,
    kl_warmup: Annotated[float | None, typer.Option(
        help="vae: Epochs over which beta ramps up linearly from 0.")] = None,
    free_bits: Annotated[float | None, typer.Option(
        help="vae: Nats per latent dimension the KL may use for free.")] = None,
    mask_ratio: Annotated[float | None, typer.Option(
        help="vit: Fraction of patches masked in training.")] = None,
    patch_size: Annotated[int | None, typer.Option(help="vit: Patch side in pixels.")] = None,
    dim: Annotated[int | None, typer.Option(help="vit: Token width (= embedding size).")] = None,
    heads: Annotated[int | None, typer.Option(help="vit: Attention heads.")] = None,
    norm_pix_loss: Annotated[bool | None, typer.Option(
        "--norm-pix-loss/--no-norm-pix-loss", help="vit: Per-patch normalized targets.",
        show_default=False)] = None,
    name: Annotated[str | None, typer.Option(help="Model name. Default: KIND-TIMESTAMP.")] = None,
    normal_label: Annotated[str | None, typer.Option(
        "--normal-label", help="Train a scanning model on the images labeled L only (random "
        "tile crops) and calibrate its anomaly threshold on a held-out part of them. '*': on "
        "every image, a background model for search by defect kind (index build --anomaly "
        "NAME) when no label marks the normal images; its threshold is not for scans.",
        show_default=False)] = None,
    fpr: Annotated[float, typer.Option(help="With --normal-label: target false-positive rate "
                                       "on held-out normal images.")] = 0.01,
    contamination: Annotated[float | None, typer.Option(
        help="With --normal-label, instead of --fpr: the fraction of the 'normal' images "
        "expected to be anomalous; the threshold flags that fraction of the held-out ones.",
        show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        help="With --normal-label: a fixed threshold in score units (1.0 = the --fpr one).",
        show_default=False)] = None,
    scorer: Annotated[Scorer | None, typer.Option(
        help="With --normal-label: detector (default, chosen by its worst protocol in "
        "benchmarks/anomaly.py), texture, knn, mse, ssim, local-mse, local-ssim or combined "
        "(texture + knn); see docs/anomaly.md.",
        show_default=False)] = None,
    use_reviews: Annotated[bool, typer.Option(
        "--use-reviews", help="With --normal-label: train nothing; refit the threshold of the "
        "newest scanning model of label L (or --name) from the analysts' reviews of its "
        "scans (defect / false alarm / missed).")] = False,
    refit_normals: Annotated[bool, typer.Option(
        "--refit-normals", help="With --use-reviews: first change the normal set (images "
        "reviewed as false alarm join it, those reviewed as defect or missed leave it), fit "
        "the scorer again on it (same encoder, no training), score the reviewed images again "
        "and refit the threshold on those scores.")] = False,
    *,
    opts: Common,
) -> None:
    """Train an encoder on the catalog's images; the new model becomes the active one.

    Seeded, with a validation split, early stopping and the best checkpoint kept
    (safetensors + JSON in HOME/models/NAME).

    Default: ae + InfoNCE on photometric views + PCA-64 of standardized pixels, the only
    recipe that beats PCA-64 on every retrieval protocol (docs/benchmarks.md, issue 14).

    Examples:
      latentsight train
      latentsight train --augment --crop-scale 0.5 --rotate 10 --jitter 0 --noise 0 --pixel-pca 0
                                                  # the default before issue 14 (ae+infonce)
      latentsight train --normal-label good --fpr 0.01    # a model for anomaly scans
      latentsight train --normal-label good --scorer knn --contamination 0.02
      latentsight train --normal-label good --use-reviews --refit-normals
      latentsight train --normal-label '*' --name background   # then: models use RETRIEVAL,
                                                  # index build --anomaly background
      latentsight train --model vae --beta 0.5 --kl-warmup 5 --free-bits 0.1
      latentsight train --model vit --mask-ratio 0.75 --patch-size 8 --depth 4 --dim 128
      latentsight train --pixel-pca 0       # the learned embedding alone as the search vector
    """
    from latentsight.index.catalog import check_model_name
    from latentsight.training.train import TrainConfig

    if name is not None:
        check_model_name(name)  # refused before any training
    from latentsight.training.train import train as run_train

    model, aux, scorer = value(model), value(aux), value(scorer)
    defaults = TrainConfig()
    kind = model or defaults.model
    given = {"image_size": image_size, "channels": channels, "latent_dim": latent_dim,
             "width": width, "depth": depth, "beta": beta, "kl_warmup_epochs": kl_warmup,
             "free_bits": free_bits, "mask_ratio": mask_ratio, "patch_size": patch_size,
             "dim": dim, "heads": heads, "norm_pix_loss": norm_pix_loss}
    model_config = _model_config(kind, given)
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience,
                 "crop_scale": crop_scale, "rotate_deg": rotate, "jitter": jitter,
                 "noise": noise, "augment": augment, "aux": aux,
                 "aux_weight": aux_weight, "pixel_pca": pixel_pca, "geometry": geometry,
                 "pixel_pca_standardize": pixel_pca_standardize}
    cfg = dataclasses.replace(
        defaults, model=kind, seed=seed, labels=list(label or []), name=name,
        device=opts.device, model_config=model_config,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    h = opts.open_home()
    if refit_normals and not use_reviews:
        raise ValueError("--refit-normals only applies with --use-reviews.")
    if use_reviews:
        _refit_from_reviews(h, normal_label, name, opts.json, refit_normals=refit_normals)
        return
    if normal_label is not None:
        _train_scanner(h, cfg, normal_label, opts.json, scorer=scorer, fpr=fpr,
                       contamination=contamination, threshold=threshold)
        return
    scan_only = {"--scorer": scorer, "--contamination": contamination, "--threshold": threshold}
    given_scan = [k for k, v in scan_only.items() if v is not None]
    if given_scan:
        raise ValueError(f"{', '.join(given_scan)} only apply with --normal-label.")
    res = run_train(h, cfg)
    m = {k: v for k, v in res.metrics.items() if k != "history"}
    if opts.json:
        echo_json({"name": res.name, "kind": res.kind, "checkpoint": res.checkpoint, **m})
    else:
        typer.echo(f"trained {res.name} ({res.kind}): val_loss {m['val_loss']:.5f} after "
                   f"{m['epochs_run']} epochs in {m['train_seconds']:.1f}s; now the active model")
        g = m.get("input_geometry")
        if g:
            typer.echo(f"input {g['width']}x{g['height']} ({g['resize']}), from the median "
                       f"aspect {g['median_aspect']:g} of {g['from_images']} images")
        typer.echo(f"next: latentsight index build --model {res.name}")


def _train_scanner(h: Any, cfg: Any, normal_label: str, json_out: bool, *, scorer: str | None,
                   fpr: float, contamination: float | None, threshold: float | None) -> None:
    from latentsight.embedder.scoring import DEFAULT_SCORER
    from latentsight.training.anomaly import ALL_IMAGES, train_scorer

    name = scorer or DEFAULT_SCORER  # a known name: checked when the command line was parsed
    res = train_scorer(h, normal_label, cfg, scorer=name, fpr=fpr, contamination=contamination,
                       threshold=threshold)
    if json_out:
        echo_json(res.as_dict())
    else:
        what = "images" if normal_label == ALL_IMAGES else f"images labeled {normal_label!r}"
        typer.echo(f"trained {res.name} on {res.n_train} {what}; "
                   f"{res.scorer} threshold calibrated on {res.n_calib} held-out ones "
                   f"({_calibration_text(fpr, contamination, threshold)}); now the active model")
        g = res.geometry
        if g:
            grid = f", global grid {g['grid'][0]}x{g['grid'][1]}" if g.get("grid") else ""
            typer.echo(f"geometry (from the training images, median {g['median_size'][0]}x"
                       f"{g['median_size'][1]} px): scale {g['scale']:g}, tiles {g['tile']} px"
                       f"{grid}")
        c = res.calibration
        if c:
            typer.echo(f"threshold {c['threshold']:.3f}; held-out normal scores: min "
                       f"{c['min']:.3f}, median {c['median']:.3f}, 90% {c['p90']:.3f}, max "
                       f"{c['max']:.3f}")
            from latentsight.training.anomaly import fpr_note

            note = fpr_note(c["n"], contamination if contamination is not None else fpr)
            if note:
                err(f"warning: {note}")
        if normal_label == ALL_IMAGES:
            err(f"note: {res.name} learned every image, defective ones too: its threshold does "
                "not separate defects. Use it for search by defect kind: latentsight models "
                f"use RETRIEVAL_MODEL, then latentsight index build --anomaly {res.name}")
            return
        typer.echo("next: latentsight scan FOLDER --report report/")


def _calibration_text(fpr: float, contamination: float | None, threshold: float | None) -> str:
    if threshold is not None:
        return f"fixed threshold {threshold}"
    return f"contamination {contamination}" if contamination is not None else f"FPR {fpr}"


def _refit_from_reviews(h: Any, normal_label: str | None, name: str | None,
                        json_out: bool, *, refit_normals: bool = False) -> None:
    from latentsight.index.review import refit_threshold

    if normal_label is None and name is None:
        raise ValueError("--use-reviews needs --normal-label L (or --name MODEL).")
    res = refit_threshold(h, normal_label=normal_label, model=name,
                          refit_normals=refit_normals)
    if json_out:
        echo_json(res.as_dict())
    else:
        if res.refit_normals:
            typer.echo(f"{res.model}: normal set refitted: {res.normals_added} false alarm(s) "
                       f"joined, {res.normals_removed} image(s) reviewed as defect/missed left; "
                       f"the scorer learned from {res.normal_set} images")
        typer.echo(f"{res.model}: threshold {res.old_threshold:.5f} -> {res.new_threshold:.5f} "
                   f"from {res.defects} defect, {res.false_alarms} false alarm and {res.missed} "
                   f"missed review(s); errors on them {res.errors_before} -> {res.errors_after}")
