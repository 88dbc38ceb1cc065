"""`latentsight dashboard`: the streamlit command line and option checks (the server itself is
started by tests/dashboard/test_browser.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from latentsight.cli import app
from latentsight.cli.dashboard_cmd import APP, streamlit_command


def test_streamlit_runs_headless_without_usage_stats():
    cmd = streamlit_command("127.0.0.1", 8600)
    assert APP.is_file() and str(APP) in cmd
    pairs = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert pairs["--server.headless"] == "true"
    assert pairs["--browser.gatherUsageStats"] == "false"
    assert pairs["--server.address"] == "127.0.0.1" and pairs["--server.port"] == "8600"


def test_a_bad_port_is_refused_with_exit_2(tmp_path):
    res = CliRunner().invoke(app, ["dashboard", "--port", "70000", "--home", str(tmp_path)])
    assert res.exit_code == 2
    assert "'port' option must be in 1..65535. Got 70000" in res.output
