"""Run a latentsight command in a child process and kill it with SIGKILL at a chosen point.

Children come from a forkserver that has imported the CLI and torch once, so
each start costs milliseconds instead of seconds; every child is still a real
process, killed by a real SIGKILL (from `embedder.faults` at a named point, or
from the parent after a delay). `run_python_m` does the same through
`python -m latentsight` for the entry point itself.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = ["torch", "latentsight.cli", "latentsight.index.ingest", "latentsight.index.manager",
           "latentsight.index.search"]
_ctx = None


def _context() -> mp.context.BaseContext:
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)
    return _ctx


def _child(args: list[str], faults: str, log_path: str, env: dict[str, str]) -> None:
    os.environ.update(env)
    if faults:
        os.environ["LATENTSIGHT_FAULTS"] = faults
    else:
        os.environ.pop("LATENTSIGHT_FAULTS", None)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    torch.set_num_threads(1)
    from latentsight.cli import app

    code = 0
    try:
        app(args, prog_name="latentsight")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_killed(
    args: list[str], *, faults: str = "", log_path: Path, kill_after: float | None = None,
    timeout: float = 300, env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run `latentsight ARGS` in a child (with `env` added); returns (exit code, -9 when
    killed; its output)."""
    p = _context().Process(target=_child, args=(args, faults, str(log_path), env or {}))
    p.start()
    if kill_after is not None:
        p.join(kill_after)
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
    p.join(timeout)
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        msg = f"latentsight {' '.join(args)} did not end within {timeout}s"
        raise TimeoutError(msg)
    log = Path(log_path)  # a kill early enough comes before the child opened its log
    return p.exitcode, log.read_text(errors="replace") if log.exists() else ""


def run_python_m(args: list[str], *, faults: str = "", timeout: float = 300):
    """`python -m latentsight ARGS` with LATENTSIGHT_FAULTS set; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSIGHT_FAULTS": faults}
    if not faults:
        env.pop("LATENTSIGHT_FAULTS")
    return subprocess.run([sys.executable, "-m", "latentsight", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def acknowledged_ids(output: str) -> list[int]:
    """Catalog ids that an ingest run with --log-commits reported as committed."""
    ids: list[int] = []
    for line in output.splitlines():
        if line.startswith("committed: ids "):
            ids.extend(int(x) for x in line.split()[2:])
    return ids


def copy_model_home(trained_home, root: Path, seed_folder: Path):
    """A new home at ROOT with the session model copied in, SEED_FOLDER ingested, index built."""
    import shutil

    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.manager import build_index

    home = Home(root)
    m = trained_home.catalog.model("test-ae")
    src = Path(m.checkpoint_path)
    src = src if src.is_absolute() else trained_home.root / src
    shutil.copytree(src, home.models_dir / m.name)
    home.catalog.add_model(name=m.name, kind=m.kind, config=m.config,
                           checkpoint_path=str(home.models_dir / m.name),
                           checkpoint_sha256=m.checkpoint_sha256, metrics={})
    ingest_paths(home, [seed_folder], progress=False, workers=0)
    build_index(home, home.catalog.model(), device="cpu", progress=False, workers=0)
    home.close()
    return root


def leftover_processes(tag: str, wait_s: float = 15.0) -> list[int]:
    """Pids of processes whose LATENTSIGHT_FAULTS holds `tag`, after waiting up to wait_s.

    Used to prove that a killed run leaves no orphan worker behind (Linux /proc).
    """
    import time

    if not Path("/proc").is_dir():
        return []
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if f"tag:{tag}".encode() in env:
                found.append(int(d.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
