"""Command: dashboard (the Streamlit app over a home)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from latentsight.cli.app import app
from latentsight.cli.common import DbUrlOpt, DeviceOpt, HomeOpt, err, handle_errors
from latentsight.settings import ENV_DB_URL, ENV_DEVICE, ENV_HOME, Settings

_DASHBOARD = importlib.util.find_spec("latentsight.dashboard")
APP = Path(_DASHBOARD.submodule_search_locations[0]) / "app.py"


def streamlit_command(host: str, port: int) -> list[str]:
    """The `streamlit run` command line: headless, no usage stats, no file watcher."""
    from latentsight.dashboard.core import MAX_UPLOAD_MB

    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--server.maxUploadSize", str(MAX_UPLOAD_MB),
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]


@app.command()
@handle_errors
def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every "
                                           "interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
    home: HomeOpt = None,
    db_url: DbUrlOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Open the dashboard: search, anomaly review, latent map, classes, status.

    Listens on 127.0.0.1 unless told otherwise; any other address needs
    LATENTSIGHT_DASHBOARD_TOKEN (asked for before any page renders). Visitors
    may ingest and scan only under LATENTSIGHT_DATA_ROOTS (default: HOME/data).
    Runs until interrupted; Ctrl-C, SIGTERM and SIGHUP stop the server too.
    Example: latentsight dashboard --home demo-home
    """
    from latentsight.dashboard.access import TOKEN_ENV, needs_token

    if not 1 <= port <= 65535:
        msg = f"The 'port' option must be in 1..65535. Got {port} instead."
        raise ValueError(msg)
    if needs_token(host):
        msg = (f"--host {host!r} is reachable from other machines; set {TOKEN_ENV} to a secret "
               "the dashboard asks for, or listen on 127.0.0.1.")
        raise ValueError(msg)
    if not APP.is_file():
        msg = f"The dashboard app is missing at {APP}; reinstall latentsight."
        raise FileNotFoundError(msg)
    settings = Settings.resolve(home, db_url, device)
    env = dict(os.environ)
    env[ENV_HOME] = str(settings.home.resolve())
    env[ENV_DEVICE] = settings.device
    if settings.db_url:
        env[ENV_DB_URL] = settings.db_url
    else:
        env.pop(ENV_DB_URL, None)
    err(f"dashboard on http://{host}:{port}  (home {settings.home}; Ctrl-C to stop)")
    raise typer.Exit(run_until_stopped(streamlit_command(host, port), env))


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived (docker stop, systemd, kill)."""


def run_until_stopped(cmd: list[str], env: dict[str, str], grace: float = 10.0) -> int:
    """Run the server; on Ctrl-C, SIGTERM or SIGHUP stop it (SIGKILL after `grace` s).

    Returns the server's exit status, 0 when we stopped it.
    """
    def stop(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    handled = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
               if s is not None]
    previous = {s: signal.signal(s, stop) for s in handled}
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except (KeyboardInterrupt, _Stop):
        for s in handled:  # a second signal must not interrupt the shutdown below
            signal.signal(s, signal.SIG_IGN)
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
