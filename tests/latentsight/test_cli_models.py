"""Several models in one home: train options per model, models list/use, per-model indexes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentsight.cli import app
from tests.cli import run, runner

TINY_VIT = ["--model", "vit", "--image-size", "32", "--patch-size", "8", "--dim", "32",
            "--depth", "1", "--heads", "2", "--mask-ratio", "0.5"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, texture_dir) -> Path:
    """A home with an AE (indexed) and a ViT (trained last, so active; no index)."""
    home = str(tmp_path_factory.mktemp("twomodels"))
    run("ingest", str(texture_dir), "--labels-from-folders", "--home", home)
    run("train", "--model", "ae", "--epochs", "2", "--image-size", "32", "--depth", "3",
        "--width", "8", "--latent-dim", "16", "--batch-size", "16", "--name", "m-ae",
        "--device", "cpu", "--home", home)
    run("index", "build", "--model", "m-ae", "--home", home, "--device", "cpu")
    out = run("train", *TINY_VIT, "--epochs", "1", "--batch-size", "16", "--name", "m-vit",
              "--aux", "none", "--device", "cpu", "--json", "--home", home)
    assert json.loads(out)["kind"] == "vit"
    return Path(home)


def test_models_list_shows_kind_and_the_active_one(two_models):
    rows = json.loads(run("models", "list", "--json", "--home", str(two_models)))
    assert [(r["name"], r["kind"], r["active"]) for r in rows] == [
        ("m-ae", "ae", False), ("m-vit", "vit", True)]
    assert all(r["val_loss"] > 0 and r["created"] for r in rows)
    from latentsight.index.home import Home

    history = Home(two_models).catalog.model("m-ae").metrics["history"]
    val = [h["val_loss"] for h in history]
    assert len(val) == 2 and val[-1] < val[0], val  # the AE's validation loss fell
    assert rows[0]["val_loss"] == pytest.approx(min(val))
    cfg = json.loads((two_models / "models" / "m-vit" / "config.json").read_text())
    assert cfg["config"]["mask_ratio"] == 0.5 and cfg["config"]["patch_size"] == 8


def test_train_default_and_the_view_options_reach_the_config(two_models, tmp_path):
    """m-ae was trained with train's defaults: the pixel PCA-64 of standardized pixels and
    photometric views (issue 14). --jitter/--noise/--augment/--pixel-pca reach the
    checkpoint's record, and they give the recipe before issue 14 back."""
    cfg = json.loads((two_models / "models" / "m-ae" / "config.json").read_text())
    assert cfg["config"]["pixel_pca"] == 64 and cfg["config"]["pixel_pca_standardize"]
    assert (cfg["train"]["augment"], cfg["train"]["jitter"], cfg["train"]["noise"]) == (
        False, 0.3, 0.12)
    import shutil

    home = tmp_path / "h"
    shutil.copytree(two_models, home)
    out = json.loads(run("train", "--epochs", "1", "--image-size", "16", "--depth", "2",
                         "--width", "8", "--latent-dim", "8", "--batch-size", "16", "--augment",
                         "--crop-scale", "0.5", "--rotate", "10", "--jitter", "0.1", "--noise",
                         "0.05", "--pixel-pca", "0", "--name", "m-old", "--device", "cpu",
                         "--json", "--home", str(home)))
    assert out["name"] == "m-old"
    cfg = json.loads((home / "models" / "m-old" / "config.json").read_text())
    t = cfg["train"]
    assert (t["augment"], t["crop_scale"], t["rotate_deg"], t["jitter"], t["noise"]) == (
        True, 0.5, 10.0, 0.1, 0.05)
    assert cfg["config"]["pixel_pca"] == 0 and t["pixel_pca"] == 0
    res = runner.invoke(app, ["train", "--jitter", "2", "--home", str(home)])
    assert res.exit_code == 2 and "jitter" in res.output


def test_train_help_says_the_default_and_why():
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "PCA-64 of standardized pixels" in text and "docs/benchmarks.md" in text
    assert "--jitter" in text and "--noise" in text


def test_search_with_an_unindexed_model_names_the_fix(two_models):
    res = runner.invoke(app, ["search", "1", "--home", str(two_models)])
    assert res.exit_code == 2
    assert "m-vit" in res.output and "latentsight index build --model m-vit" in res.output
    hits = json.loads(run("search", "1", "--model", "m-ae", "--json", "--home", str(two_models)))
    assert hits[0]["id"] == 1


def test_models_use_switches_and_hints(two_models, tmp_path):
    import shutil

    home = tmp_path / "h"
    shutil.copytree(two_models, home)
    out = run("models", "use", "m-ae", "--home", str(home))
    assert "active model: m-ae" in out and "index build" not in out
    hits = json.loads(run("search", "2", "--json", "--home", str(home)))  # active = m-ae now
    assert hits[0]["id"] == 2
    out = run("models", "use", "m-vit", "--home", str(home))
    assert "latentsight index build --model m-vit" in out
    res = runner.invoke(app, ["models", "use", "nope", "--home", str(home)])
    assert res.exit_code == 2 and "nope" in res.output


def test_eval_retrieval_per_model(two_models):
    for name in ("m-ae", "m-vit"):
        res = json.loads(run("eval", "retrieval", "--model", name, "--k", "5", "--json",
                             "--home", str(two_models), "--device", "cpu"))
        assert res["model"] == name and res["k"] == 5
        assert set(res) >= {"precision_at_k", "map", "per_label", "baseline_raw_pixels"}
        assert len(res["per_label"]) == 4


@pytest.mark.parametrize("args,needle", [
    (["--model", "ae", "--beta", "1"], "--beta option applies to vae"),
    (["--model", "vae", "--mask-ratio", "0.5"], "--mask-ratio option applies to vit"),
    (["--model", "gan"], "Invalid value for '--model'"),  # refused when parsed
    (["--model", "vit", "--aux", "simclr"], "aux"),
])
def test_train_rejects_options_of_another_model(two_models, args, needle):
    res = runner.invoke(app, ["train", *args, "--home", str(two_models)])
    assert res.exit_code == 2 and needle in res.output
