"""`latentsight dashboard` as a service manager runs it: SIGTERM must stop the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from latentsight.dashboard import shoot


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_the_streamlit_server(tmp_path):
    port = shoot.free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(shoot.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "latentsight", "dashboard", "--home", str(tmp_path / "home"),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"the dashboard exited early ({proc.returncode})"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the dashboard never answered"
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)  # the CLI process only, as `docker stop` or systemd
        assert proc.wait(timeout=60) == 0
        assert not listening(port), "the Streamlit server outlived `latentsight dashboard`"
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
        except ProcessLookupError:
            pass
