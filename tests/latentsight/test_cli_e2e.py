"""End to end through the CLI: ingest -> train -> index build -> search, on a real SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from latentsight.cli import app
from tests.cli import run, runner


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory, texture_dir) -> Path:
    home = tmp_path_factory.mktemp("clihome")
    out = run("ingest", str(texture_dir), "--labels-from-folders", "--json", "--home", str(home))
    assert json.loads(out)["added"] == 48
    run("train", "--epochs", "2", "--image-size", "32", "--latent-dim", "32", "--batch-size",
        "16", "--name", "cli-ae", "--device", "cpu", "--home", str(home))
    run("index", "build", "--home", str(home), "--device", "cpu")
    return home


def test_catalog_is_a_real_sqlite_file(cli_home):
    assert (cli_home / "catalog.db").is_file()
    assert (cli_home / "models" / "cli-ae" / "model.safetensors").is_file()
    cfg = json.loads((cli_home / "models" / "cli-ae" / "config.json").read_text())
    assert cfg["kind"] == "ae" and cfg["config"]["image_size"] == 32


def test_search_returns_query_first_and_same_label_above_chance(cli_home, texture_dir):
    same, total = 0, 0
    for label in ("stripes_h", "stripes_v", "checker", "blobs"):
        for q in sorted((texture_dir / label).glob("*.png"))[:3]:
            hits = json.loads(run("search", str(q), "--k", "6", "--json", "--home", str(cli_home),
                                  "--device", "cpu"))
            assert Path(hits[0]["path"]).resolve() == q.resolve()
            assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
            assert set(hits[0]) == {"id", "path", "label", "source", "score", "synthetic"}
            same += sum(h["label"] == label for h in hits[1:])
            total += len(hits[1:])
    assert same / total > 0.25 + 0.15  # chance is 11/47 ~ 0.23 for 4 balanced labels


def test_search_by_catalog_id(cli_home):
    hits = json.loads(run("search", "5", "--k", "3", "--json", "--home", str(cli_home)))
    assert hits[0]["id"] == 5


def test_label_filter_returns_k_of_that_label(cli_home, texture_dir):
    q = sorted((texture_dir / "stripes_h").glob("*.png"))[0]
    hits = json.loads(run("search", str(q), "--k", "10", "--label", "blobs", "--json",
                          "--home", str(cli_home)))
    assert len(hits) == 10 and {h["label"] for h in hits} == {"blobs"}


def test_reingest_adds_nothing(cli_home, texture_dir):
    out = json.loads(run("ingest", str(texture_dir), "--json", "--home", str(cli_home)))
    assert out["added"] == 0 and out["duplicates"] == 48 and out["failed"] == []


def test_models_list_and_verify(cli_home):
    rows = json.loads(run("models", "list", "--json", "--home", str(cli_home)))
    assert [r["name"] for r in rows] == ["cli-ae"] and rows[0]["active"] is True
    ver = json.loads(run("index", "verify", "--json", "--home", str(cli_home)))
    assert ver["ok"] and ver["ntotal"] == 48


def test_eval_retrieval_json(cli_home):
    res = json.loads(run("eval", "retrieval", "--k", "5", "--json", "--home", str(cli_home)))
    assert set(res) >= {"precision_at_k", "map", "k", "per_label", "baseline_raw_pixels"}
    assert res["k"] == 5 and set(res["per_label"]) == {"stripes_h", "stripes_v", "checker",
                                                        "blobs"}
    assert 0.0 <= res["precision_at_k"] <= 1.0


def test_errors_exit_2_with_one_clear_line(tmp_path, cli_home):
    res = runner.invoke(app, ["search", str(tmp_path / "missing.png"), "--home", str(cli_home)])
    assert res.exit_code == 2 and "neither an existing image file nor a catalog id" in res.output
    empty = tmp_path / "empty"
    res = runner.invoke(app, ["search", "1", "--home", str(empty)])
    assert res.exit_code == 2 and "latentsight train" in res.output
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    res = runner.invoke(app, ["search", str(bad), "--home", str(cli_home)])
    assert res.exit_code == 2 and "bad.jpg" in res.output and "not an image" in res.output


def test_stale_index_names_the_fix(tmp_path, cli_home, texture_dir):
    import shutil

    home = tmp_path / "stale"
    shutil.copytree(cli_home, home)
    from latentsight.index.home import Home

    h = Home(home)
    h.catalog.add_images([{"sha256": "f" * 64, "path": str(texture_dir / "blobs" / "000.png"),
                           "byte_size": 1, "width": 32, "height": 32, "mode": "L",
                           "format": "PNG", "label": None, "source": "x"}])
    res = runner.invoke(app, ["search", "1", "--home", str(home)])
    assert res.exit_code == 2 and "stale" in res.output and "index build" in res.output


def test_console_script_help_teaches():
    out = subprocess.run([sys.executable, "-m", "latentsight", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("ingest", "train", "search", "index", "models", "eval", "demo"):
        assert cmd in out


# ---- the same path on a Milvus server, with the catalog on PostgreSQL where CI has one ---------


@pytest.fixture(scope="module")
def server_home(tmp_path_factory, texture_dir):
    """ingest -> train -> index build on a Milvus 2.3 server; the catalog on PostgreSQL when
    LATENTSIGHT_TEST_PG_URL is set (CI), else SQLite. Yields (home, db_url, uri)."""
    import os
    import shutil
    import uuid

    from tests.milvus_server import clean, server_uri

    uri = server_uri()
    clean(uri)
    root = tmp_path_factory.mktemp("serverhome")
    data = root / "data"
    shutil.copytree(texture_dir, data / "textures")
    odd = data / "odd"  # a multi-line, quoted label the filters must match exactly
    odd.mkdir()
    from PIL import Image

    for n, f in enumerate(sorted((texture_dir / "blobs").glob("*.png"))[:3]):
        img = Image.open(f)
        img.putpixel((0, 0), (img.getpixel((0, 0)) + 97 + n) % 256)  # new bytes: not a duplicate
        img.save(odd / f"odd-{f.name}")
    admin, name = os.environ.get("LATENTSIGHT_TEST_PG_URL"), None
    if admin:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"lt_e2e_{uuid.uuid4().hex[:10]}"
        with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        db = make_url(admin).set(database=name).render_as_string(hide_password=False)
    else:
        db = f"sqlite:///{root / 'catalog.db'}"
    base = ["--home", str(root / "home"), "--db-url", db]
    run("ingest", str(data / "textures"), "--labels-from-folders", *base)
    run("train", "--epochs", "2", "--image-size", "32", "--latent-dim", "32", "--batch-size",
        "16", "--name", "srv-ae", "--device", "cpu", *base)
    out = run("index", "build", "--backend", "milvus", "--uri", uri, "--device", "cpu", *base)
    assert "48 vectors" in out, out
    run("ingest", str(odd), "--label", ODD_LABEL, *base)  # synced into the server's collection
    yield root / "home", db, uri
    clean(uri)
    if name:
        from sqlalchemy import create_engine, text

        with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


ODD_LABEL = 'line one\nline "two"\\ ' + "x" * 230  # within the catalog's 255 characters


def test_server_index_verify_search_and_filter(server_home, texture_dir):
    home, db, uri = server_home
    base = ["--home", str(home), "--db-url", db]
    ver = json.loads(run("index", "verify", "--json", *base))
    assert ver["ok"] and ver["ntotal"] == 51 and ver["backend"] == "milvus" and ver["path"] == uri
    q = sorted((texture_dir / "stripes_h").glob("*.png"))[0]
    hits = json.loads(run("search", str(q), "--k", "6", "--json", "--device", "cpu", *base))
    assert Path(hits[0]["path"]).name == q.name and hits[0]["score"] == pytest.approx(1, abs=1e-4)
    hits = json.loads(run("search", str(q), "--k", "5", "--label", "blobs", "--json", *base))
    assert len(hits) == 5 and {h["label"] for h in hits} == {"blobs"}
    hits = json.loads(run("search", str(q), "--k", "5", "--label", ODD_LABEL, "--json", *base))
    assert len(hits) == 3 and {h["label"] for h in hits} == {ODD_LABEL}


def test_server_delete_rebuild_and_verify_across_catalog_and_server(server_home):
    home, db, uri = server_home
    base = ["--home", str(home), "--db-url", db]
    out = json.loads(run("delete", "1", "2", "--json", *base))
    assert out["deleted"] == 2 and out["vectors_removed"] == 2
    before = json.loads(run("index", "verify", "--json", *base))
    assert before["ok"] and before["ntotal"] == 49
    out = run("index", "rebuild", *base)
    assert "rebuilt milvus index" in out and f"generation {before['generation'] + 1}" in out
    ver = json.loads(run("index", "verify", "--json", *base))
    assert ver["ok"] and ver["ntotal"] == 49 and ver["generation"] == before["generation"] + 1


def test_server_down_or_refusing_is_one_line_and_exit_2(server_home, monkeypatch):
    """A closed port, a wrong token, a mute server: one line naming the URI, the reason and
    what to check; never a traceback, never the token."""
    import socket

    home, db, uri = server_home
    base = ["--home", str(home), "--db-url", db]
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(1)  # accepts, never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    monkeypatch.setenv("LATENTSIGHT_MILVUS_TIMEOUT", "3")
    try:
        cases = [
            (f"http://127.0.0.1:{closed.getsockname()[1]}", None, "connection refused"),
            (f"http://127.0.0.1:{mute.getsockname()[1]}", None, "did not answer within 3s"),
            (uri, "root:WrongSecret42", "refused the connection"),
        ]
        for where, token, reason in cases:
            if token:
                monkeypatch.setenv("LATENTSIGHT_MILVUS_TOKEN", token)
            res = runner.invoke(app, ["index", "build", "--backend", "milvus", "--uri", where,
                                      "--device", "cpu", *base])
            text = res.output  # stdout and stderr
            lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
            assert res.exit_code == 2 and len(lines) == 1, text
            assert where in lines[0] and reason in lines[0], lines[0]
            assert "LATENTSIGHT_MILVUS_TOKEN" in lines[0] and "Traceback" not in text
            assert "WrongSecret42" not in text
    finally:
        mute.close()
        closed.close()
