"""Dashboard exposure: loopback by default, a token for anything else, typed folders under the
data roots, and the dashboard's ingest decoding in workers (FIFOs, non-UTF-8 folder names)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from latentsight.dashboard import access, core
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from PIL import Image
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from latentsight.cli import app

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def test_loopback_and_token_rules(monkeypatch):
    monkeypatch.delenv(access.TOKEN_ENV, raising=False)
    assert all(access.is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(access.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org"))
    assert access.needs_token("0.0.0.0") and not access.needs_token("127.0.0.1")
    monkeypatch.setenv(access.TOKEN_ENV, "s3cret")
    assert not access.needs_token("0.0.0.0")
    assert access.token_ok("s3cret") and not access.token_ok("s3cre") and not access.token_ok(None)


def test_cli_refuses_a_public_address_without_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv(access.TOKEN_ENV, raising=False)
    res = CliRunner().invoke(app, ["dashboard", "--host", "0.0.0.0", "--home", str(tmp_path)])
    assert res.exit_code == 2 and access.TOKEN_ENV in res.output
    assert "Traceback" not in res.output


def test_typed_folders_must_lie_under_the_data_roots(monkeypatch, tmp_path):
    home = Home(tmp_path / "h")
    monkeypatch.delenv(access.ROOTS_ENV, raising=False)
    inside = home.root / "data" / "a"
    inside.mkdir(parents=True)
    assert access.check_folder(home, inside) == inside.resolve()
    (inside / "out").symlink_to("/")
    for bad in ("/", "/root", str(home.root / "data" / ".." / ".."), str(inside / "out")):
        with pytest.raises(CatalogError, match="outside the data roots"):
            access.check_folder(home, bad)
    with pytest.raises(CatalogError, match="outside the data roots"):
        core.ingest_folder(home, "/")
    with pytest.raises(CatalogError, match="outside the data roots"):
        core.start_scan(home, "/root")
    monkeypatch.setenv(access.ROOTS_ENV, f"{tmp_path / 'x'}{os.pathsep}{tmp_path / 'y'}")
    (tmp_path / "y" / "z").mkdir(parents=True)
    assert access.check_folder(home, tmp_path / "y" / "z") == (tmp_path / "y" / "z").resolve()
    with pytest.raises(CatalogError):
        access.check_folder(home, inside)


def test_dashboard_ingest_of_a_fifo_and_a_non_utf8_subfolder(monkeypatch, tmp_path):
    """A FIFO hung the server thread; a non-UTF-8 sub-folder raised UnicodeEncodeError."""
    home = Home(tmp_path / "h")
    root = home.root / "data"
    sub = os.path.join(os.fsencode(root), b"caf\xe9")
    os.makedirs(sub)
    Image.new("L", (16, 16), 9).save(os.fsdecode(os.path.join(sub, b"a.png")))
    os.mkfifo(root / "pipe")  # no suffix: looks_like_image opened it blocking
    monkeypatch.delenv(access.ROOTS_ENV, raising=False)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "rep", core.ingest_folder(home, root, labels_from_folders=True)), daemon=True)
    t.start()
    t.join(90)
    assert not t.is_alive(), "the dashboard's ingest blocked"
    rep = out["rep"]
    assert rep["added"] == 1 and [f["error"] for f in rep["failed"]] == [
        "not a regular file (a FIFO)"]
    assert {r.label for r in home.catalog.images()} == {"caf\\xe9"}


def _app(monkeypatch, home: Home) -> AppTest:
    monkeypatch.setenv("LATENTSIGHT_HOME", str(home.root))
    monkeypatch.delenv("LATENTSIGHT_DB_URL", raising=False)
    return AppTest.from_file(APP, default_timeout=120)


def test_with_a_token_no_page_renders_before_it_is_given(monkeypatch, empty_home):
    monkeypatch.setenv(access.TOKEN_ENV, "open-sesame")
    at = _app(monkeypatch, empty_home).run()
    assert not at.exception
    assert at.text_input(key="_latentsight_token")
    assert "latentsight ingest" not in "\n".join(m.value for m in at.info)  # no page content
    at.text_input(key="_latentsight_token").set_value("wrong").run()
    assert at.error and "Wrong token" in at.error[0].value
    at.text_input(key="_latentsight_token").set_value("open-sesame").run()
    assert not at.exception and not at.error
    assert "latentsight ingest" in "\n".join(e.value for kind in ("info", "warning", "markdown")
                                            for e in getattr(at, kind))


def test_without_a_token_pages_render_as_before(monkeypatch, empty_home):
    monkeypatch.delenv(access.TOKEN_ENV, raising=False)
    at = _app(monkeypatch, empty_home).run()
    assert not at.exception
    assert not [w for w in at.text_input if w.key == "_latentsight_token"]
