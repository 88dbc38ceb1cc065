"""Run the `latentsight` CLI in-process for tests."""

from __future__ import annotations

from typer.testing import CliRunner

from latentsight.cli import app

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    """Invoke `latentsight ARGS`; assert its exit status; return its stdout."""
    res = runner.invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output + (res.stderr if res.stderr_bytes else "")
    return res.stdout
