"""Model files are data, never code: safetensors + validated JSON, sha256 checked, no pickle."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
from latentsight.embedder.errors import ModelError
from latentsight.embedder.models import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    create,
    load_checkpoint,
    save_checkpoint,
)
from typer.testing import CliRunner

from latentsight.cli import app

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("embedder", "index", "training", "latentsight", "dashboard", "benchmarks")
# calls that can run code from a file: unpickling in any of its disguises
FORBIDDEN = re.compile(
    r"torch\.load\s*\(|(?<![\w.])pickle\.loads?\s*\(|\bimport\s+(c?pickle|dill|joblib)\b|"
    r"from\s+(c?pickle|dill|joblib)\s+import|joblib\.load|allow_pickle\s*=\s*True|"
    r"torch\.jit\.load|pd\.read_pickle|marshal\.loads?\s*\("
)


def test_no_source_file_unpickles_anything():
    offenders = []
    scanned = 0
    for d in SOURCE_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            scanned += 1
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if FORBIDDEN.search(line) and "never" not in line.lower():
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert scanned > 20
    assert offenders == []


def test_the_pattern_catches_what_it_should():
    for bad in ("m = torch.load(path)", "import pickle", "x = pickle.loads(b)",
                "np.load(p, allow_pickle=True)", "from joblib import load"):
        assert FORBIDDEN.search(bad), bad
    assert not FORBIDDEN.search("state = load_file(str(w_path))")


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    model = create("ae", image_size=16, depth=2, latent_dim=8, width=4)
    d = tmp_path / "ckpt"
    save_checkpoint(model, d, {"note": "test"})
    return d


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def test_a_pickle_posing_as_weights_is_refused_and_never_run(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    (checkpoint / WEIGHTS_FILE).write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ModelError, match=WEIGHTS_FILE):
        load_checkpoint(checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: {**d, "config": {**d["config"], "latent_dim": "8"}}, "'latent_dim' must be int"),
    (lambda d: {**d, "config": {**d["config"], "pooled_embedding": 1}},
     "'pooled_embedding' must be bool"),
    (lambda d: {**d, "config": {**d["config"], "depth": True}}, "'depth' must be int"),
    (lambda d: {**d, "config": {**d["config"], "evil": "__import__('os')"}}, "unknown ae config"),
    (lambda d: {**d, "kind": "pickle"}, "unknown model kind"),
    (lambda d: {**d, "config": [1, 2]}, "expected an object"),
    (lambda d: {**d, "config": {**d["config"], "image_size": 10}}, "invalid ae config"),
])
def test_json_configs_are_validated(checkpoint, edit, message):
    doc = json.loads((checkpoint / CONFIG_FILE).read_text())
    (checkpoint / CONFIG_FILE).write_text(json.dumps(edit(doc)))
    with pytest.raises(ModelError, match=message):
        load_checkpoint(checkpoint)


def test_broken_and_huge_configs_are_refused(checkpoint):
    (checkpoint / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="invalid JSON"):
        load_checkpoint(checkpoint)
    (checkpoint / CONFIG_FILE).write_text(" " * (2 << 20) + "{}")
    with pytest.raises(ModelError, match="byte limit"):
        load_checkpoint(checkpoint)


def test_changed_weights_are_refused_through_the_cli(tmp_path, trained_home, texture_dir):
    """Weights whose sha256 differs from the catalog's: search, build and ingest refuse them."""
    home = tmp_path / "home"
    shutil.copytree(trained_home.root, home)
    weights = home / "models" / "test-ae" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit in the last tensor: still a valid safetensors file
    weights.write_bytes(bytes(data))
    load_checkpoint(weights.parent)  # loads fine when nobody checks the sha256 ...
    query = str(sorted((texture_dir / "blobs").glob("*.png"))[0])
    runner = CliRunner()
    for args in (["search", query], ["index", "build"], ["ingest", str(texture_dir)]):
        model = ["--model", "test-ae"] if args[0] != "ingest" else []
        res = runner.invoke(app, [*args, "--home", str(home), *model])
        assert res.exit_code == 2, (args, res.output)
        assert "differs from the catalog's" in res.output and "refusing to load" in res.output
        assert WEIGHTS_FILE in res.output


def _edit_config(directory: Path, **fields) -> None:
    doc = json.loads((directory / CONFIG_FILE).read_text())
    doc["config"].update(fields)
    (directory / CONFIG_FILE).write_text(json.dumps(doc))


@pytest.mark.parametrize(("fields", "message"), [
    ({"pooled_embedding": False}, "config.json was changed"),  # same shapes: only the hash
    ({"width": 1024}, "config.json was changed"),
    ({"width": 100000}, "config.json was changed"),
])
def test_a_tampered_config_is_refused_by_the_integrity_hash(checkpoint, fields, message):
    from latentsight.embedder.models import sha256_file

    digest = json.loads((checkpoint / CONFIG_FILE).read_text())["checkpoint_sha256"]
    load_checkpoint(checkpoint, expected_sha256=digest)
    _edit_config(checkpoint, **fields)
    with pytest.raises(ModelError, match=message):
        load_checkpoint(checkpoint, expected_sha256=digest)
    # an older catalog that recorded the weights' sha256 alone still loads (with a warning)
    _edit_config(checkpoint, pooled_embedding=True, width=4)
    load_checkpoint(checkpoint, expected_sha256=sha256_file(checkpoint / WEIGHTS_FILE))


@pytest.mark.parametrize(("fields", "message"), [
    ({"width": 1024}, "does not match the weights file"),  # refused before 9 GB are allocated
    ({"width": 100000}, r"must be in \[0, 65536\]"),
    ({"latent_dim": -1}, r"must be in \[0, 65536\]"),
    ({"latent_dim": 16}, "does not match the weights file"),
])
def test_configs_are_bounded_and_checked_against_the_weights_before_allocating(
        checkpoint, fields, message):
    _edit_config(checkpoint, **fields)
    with pytest.raises(ModelError, match=message):
        load_checkpoint(checkpoint)  # no hash given: the bounds and the shape check hold alone


def test_a_deeply_nested_config_is_a_clear_error(checkpoint):
    (checkpoint / CONFIG_FILE).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelError, match="nested too deeply"):
        load_checkpoint(checkpoint)


def test_search_and_verify_refuse_a_changed_config(tmp_path, trained_home):
    """pooled_embedding: false made search crash with AssertionError while verify said ok."""
    home = tmp_path / "home"
    shutil.copytree(trained_home.root, home)
    _edit_config(home / "models" / "test-ae", pooled_embedding=False)
    runner = CliRunner()
    res = runner.invoke(app, ["search", "1", "--home", str(home), "--device", "cpu"])
    assert res.exit_code == 2 and "config.json was changed" in res.output, res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["index", "verify", "--home", str(home)])
    assert res.exit_code == 1 and "config.json was changed" in res.output, res.output
