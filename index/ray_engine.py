"""Batch work on a Ray cluster: anomaly scans and index builds with Ray Data.

    latentsight scan incoming/ --engine ray --ray-address 10.0.0.5:6379
    latentsight index build --engine ray

Installed with the optional extra (`pip install 'latentsight[ray]'`); nothing
imports Ray unless `--engine ray` is asked for. The address comes from
`--ray-address`, else RAY_ADDRESS, else a Ray started inside this process.

Who does what: the workers (Ray Data `map_batches` over a pool of actors, each
holding the model once; one GPU per actor when the cluster has GPUs) read the
files, decode, embed and score. The driver (this process) alone writes: it
opens the scan, commits results to the catalog every `COMMIT_EVERY` images as
they stream back, looks up nearest neighbours in the vector store, and writes
the index. So `--resume`, the write lock and the crash-safety of the local
engine hold unchanged: a killed driver loses at most one uncommitted batch, and
a killed worker loses nothing (Ray restarts the actor and reruns its batch;
results reach the driver only once a batch is complete).

Workers must see the same paths as the driver (images, checkpoints, the report
folder): on a cluster, a shared filesystem mounted at the same place on every
node, and the same latentsight installed in every node's Python.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from latentsight.embedder.errors import LatentsightError, ModelError
from latentsight.index.home import Home

log = logging.getLogger(__name__)

ENV_ADDRESS = "RAY_ADDRESS"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": every Ray process on loopback
ACTOR_RETRIES = 3  # a batch whose actor died is rerun this often, then the job fails


class RayError(LatentsightError):
    pass


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        msg = "--engine ray needs Ray Data: pip install 'latentsight[ray]'"
        raise RayError(msg) from e
    return ray


def _loopback(address: str | None) -> bool:
    """True for a Ray started in this process or one at a loopback address (127.x, localhost)."""
    if address is None or address == "local":
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def connect(address: str | None = None) -> Any:
    """Join the Ray cluster at `address` (or RAY_ADDRESS, or start one in this process)."""
    address = address or os.environ.get(ENV_ADDRESS) or None
    if _loopback(address):
        # Ray's single-machine mode: without it Ray swaps 127.0.0.1 for the machine's external
        # address. Read when Ray is imported, so set first; .ci/start-ray.sh sets it too.
        os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    ray = _ray()
    if ray.is_initialized():
        return ray
    import latentsight

    # the folder holding this `latentsight` package (a checkout or site-packages), for workers
    root = str(Path(latentsight.__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                 include_dashboard=False if address is None else None,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths),
                                           "OMP_NUM_THREADS": os.environ.get(
                                               "OMP_NUM_THREADS", "1")}})
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        where = address or "a local Ray in this process"
        msg = (f"Cannot connect to Ray at {where}: {' '.join(str(e).split())[:300]}. Check that "
               "the head is up (ray status --address ADDR) and reachable from here.")
        raise RayError(msg) from e
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False
    return ray


def disconnect(ray: Any) -> None:
    """Leave the cluster once a job is done: Ray's driver threads print the cluster's late
    worker notices on stdout, where --json output goes (the cluster itself keeps running)."""
    with contextlib.redirect_stdout(sys.stderr):
        ray.shutdown()


@contextlib.contextmanager
def session(address: str | None = None):
    """Connected to the cluster for the block (`connect`, then `disconnect`). Inside it,
    stdout is stderr: Ray's driver thread prints a raylet's reports ("A worker died or was
    killed ...") on stdout whatever `log_to_driver` says, and stdout is where `scan --json`
    writes its results."""
    ray = connect(address)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield ray
    finally:
        disconnect(ray)


def _pool(ray: Any, workers: int | None) -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per CPU of the cluster by default, a GPU each if any."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    n = workers if workers else (gpus or max(1, int(res.get("CPU", 1))))
    if n < 1:
        msg = f"The 'workers' option must be >= 1 with --engine ray. Got {n} instead."
        raise ValueError(msg)
    return n, (1.0 if gpus else 0.0)


def _batches(ds: Any):
    """The dataset's output batches as they complete. Ray prints the cluster's worker
    errors ("(raylet) A worker died ...") on stdout, where --json output goes: they are
    sent to stderr while the job runs."""
    it = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    while True:
        with contextlib.redirect_stdout(sys.stderr):
            batch = next(it, None)
        if batch is None:
            return
        yield batch


def _items(paths: Sequence[str]) -> list[dict[str, Any]]:
    # paths travel as bytes: a file name that is not UTF-8 survives Arrow unchanged
    return [{"i": i, "path": os.fsencode(p)} for i, p in enumerate(paths)]


# ---- scans --------------------------------------------------------------------------------


class _ScanActor:
    """Holds the encoder and the fitted scorer; scores a batch of files per call."""

    def __init__(self, checkpoint: str, sha256: str, state: dict, arrays_path: str | None,
                 threshold: float, heat_dir: str | None, device: str) -> None:
        import torch
        from latentsight.embedder.encoder import Encoder
        from latentsight.embedder.scoring import scorer_from_state

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.encoder = Encoder.from_checkpoint(checkpoint, device=device, expected_sha256=sha256)
        arrays: dict[str, np.ndarray] = {}
        if arrays_path:
            from latentsight.embedder.models import sha256_file
            from safetensors.numpy import load_file

            if sha256_file(arrays_path) != state.get("arrays_sha256"):
                raise ModelError(f"{arrays_path}: sha256 differs from the catalog's")
            arrays = load_file(arrays_path)
        self.scorer = scorer_from_state(self.encoder, state, arrays)
        self.threshold = threshold
        self.heat_dir = Path(heat_dir) if heat_dir else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from latentsight.embedder import faults
        from latentsight.embedder.probe import ProbePool
        from latentsight.index.scan import SCAN_LIMITS, _score_one

        if getattr(self, "pool", None) is None:  # the local scan's decoding path and limits
            self.pool = ProbePool(1, SCAN_LIMITS)

        out: dict[str, list] = {k: [] for k in ("i", "sha256", "score", "anomalous", "error",
                                                "vec")}
        dim = self.encoder.embed_dim
        for i, raw in zip(batch["i"], batch["path"], strict=True):
            faults.point("ray.score")
            vec: list[np.ndarray] = []

            def capture(pixels: np.ndarray, vec: list = vec) -> None:
                vec.append(self.encoder.embed_pixels([pixels])[0])

            path = os.fsdecode(bytes(raw))
            pr = self.pool.probe_one(path, (0, self.encoder.channels))  # native resolution
            if pr.skipped:
                pr.error = pr.error or "not an image"
            item = _score_one(path, pr, self.scorer, self.threshold, capture, self.heat_dir)
            out["i"].append(int(i))
            out["sha256"].append(item.sha256 or "")
            out["score"].append(np.nan if item.score is None else float(item.score))
            out["anomalous"].append(-1 if item.anomalous is None else int(item.anomalous))
            out["error"].append(item.error or "")
            out["vec"].append(vec[0] if vec else np.full(dim, np.nan, np.float32))
        return {"i": np.asarray(out["i"], np.int64),
                "sha256": np.asarray(out["sha256"], dtype=object),
                "score": np.asarray(out["score"], np.float64),
                "anomalous": np.asarray(out["anomalous"], np.int8),
                "error": np.asarray(out["error"], dtype=object),
                "vec": np.stack(out["vec"]).astype(np.float32)}  # (B, D)


def scan_paths_ray(
    home: Home,
    paths: Sequence[str | os.PathLike[str]],
    *,
    address: str | None = None,
    workers: int | None = None,
    model: str | None = None,
    fpr: float | None = None,
    threshold: float | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    k_neighbors: int = 3,
    include_synthetic: bool = False,
    device: str = "auto",
    progress: bool = True,
):
    """`scan.scan_paths` with decoding and scoring on a Ray cluster; same catalog records.

    Scores, flags, resume and the report are those of the local engine; the
    results are committed by this process as the workers' batches arrive.
    """
    from latentsight.index import scan as local
    from latentsight.index.ingest import iter_files
    from latentsight.index.paths import to_catalog
    from tqdm import tqdm

    for p in paths:
        if not os.path.lexists(p):
            raise local.CatalogError(f"{p}: no such file or folder")
    row = home.catalog.model(model)
    encoder, scorer = local.load_scorer(home, row, "cpu")
    norm = local.normalize_paths(paths)
    scan, done = local._open_scan(home, row, [to_catalog(p) for p in norm], resume=resume,
                                  fpr=fpr, threshold=local.resolve_threshold(
                                      scorer, fpr=fpr, threshold=threshold))
    thr = float(scan.threshold)
    neighbors = local._Neighbors(home, row, encoder, scorer, k=k_neighbors,
                                 include_synthetic=include_synthetic)
    heat_dir = Path(report_dir).resolve() / "heatmaps" if report_dir else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    summary = local.ScanSummary(scan_id=scan.id, model=row.name, threshold=thr,
                                report_dir=str(report_dir) if report_dir else None)
    todo: list[str] = []
    for f in (os.path.abspath(f) for f, _root in iter_files(norm)):
        if to_catalog(f) in done:
            summary.results.append(done[to_catalog(f)])
            summary.resumed += 1
        elif local.looks_like_image(f) or not os.path.exists(f):
            todo.append(f)
        else:
            summary.skipped += 1

    if todo:
        with session(address) as ray:
            n, gpus = _pool(ray, workers)
            state = (row.metrics or {}).get("scoring") or {}
            arrays = home.resolve(row.checkpoint_path) / local.SCORER_FILE
            ds = ray.data.from_items(_items(todo), override_num_blocks=max(1, len(todo) //
                                                                           local.COMMIT_EVERY))
            ds = ds.map_batches(
                _ScanActor, batch_size=local.COMMIT_EVERY, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n), num_cpus=1, num_gpus=gpus,
                max_task_retries=ACTOR_RETRIES,
                fn_constructor_kwargs={
                    "checkpoint": str(home.resolve(row.checkpoint_path)),
                    "sha256": row.checkpoint_sha256, "state": state,
                    "arrays_path": str(arrays) if state.get("arrays_sha256") else None,
                    "threshold": thr, "heat_dir": str(heat_dir) if heat_dir else None,
                    "device": "cuda" if gpus else "cpu"})
            log.info("scan %d on Ray: %d file(s), %d actor(s)", scan.id, len(todo), n)
            bar = tqdm(total=len(todo), desc=f"scan {row.name} (ray x{n})", unit="img",
                       file=sys.stderr, disable=not progress or None)
            new: dict[int, local.ScanItem] = {}
            try:
                for batch in _batches(ds):
                    items = []
                    for j in range(len(batch["i"])):
                        i = int(batch["i"][j])
                        item = _item(to_catalog(todo[i]), batch, j)
                        if item.error is None:
                            item.nearest_ids = _nearest(neighbors, batch["vec"][j])
                        new[i] = item
                        items.append(item)
                    local._commit(home, scan.id, items)
                    bar.update(len(items))
            except LatentsightError:
                raise
            except Exception as e:  # noqa: BLE001 - a Ray failure: one line, committed work stays
                msg = (f"the Ray scan {scan.id} stopped: {' '.join(str(e).split())[:300]}; "
                       f"{len(new)} image(s) are committed, re-run with --resume to continue")
                raise RayError(msg) from e
            finally:
                bar.close()
        summary.results.extend(new[i] for i in sorted(new))
    local._finish(home, scan.id, summary)
    if report_dir:
        from latentsight.index.report import write_report

        write_report(home, summary, Path(report_dir), encoder=encoder, scorer=scorer,
                     neighbors=neighbors)
    return summary


def _item(shown: str, batch: dict[str, np.ndarray], j: int):
    from latentsight.index.scan import ScanItem

    if batch["error"][j]:
        return ScanItem(path=shown, error=str(batch["error"][j]))
    return ScanItem(path=shown, sha256=str(batch["sha256"][j]), score=float(batch["score"][j]),
                    anomalous=bool(batch["anomalous"][j] == 1))


def _nearest(neighbors: Any, vec: np.ndarray) -> list[int] | None:
    """What `scan._Neighbors` gives for an image, from the embedding a worker computed."""
    if neighbors.store is None or neighbors.allowed is None or not len(neighbors.allowed):
        return None
    _, ids = neighbors.store.search(vec[None, :], neighbors.k, allowed_ids=neighbors.allowed)
    return [int(i) for i in ids[0] if i >= 0]


# ---- index builds -------------------------------------------------------------------------


class _EmbedActor:
    """Holds the encoder; decodes a batch of catalog files (isolated, limited) and embeds it."""

    def __init__(self, checkpoint: str, sha256: str, device: str) -> None:
        import torch
        from latentsight.embedder.encoder import Encoder
        from latentsight.embedder.probe import ProbePool

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.encoder = Encoder.from_checkpoint(checkpoint, device=device, expected_sha256=sha256)
        self.pool = ProbePool(1)  # one decode process per actor: per-file time and size limits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        want = self.encoder.probe_want
        paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
        probes = list(self.pool.imap(paths, want, window=len(paths)))
        good = [j for j, pr in enumerate(probes) if pr.error is None]
        vec = np.full((len(paths), self.encoder.embed_dim), np.nan, np.float32)
        if good:
            vec[good] = self.encoder.embed_probed([probes[j].pixels for j in good])
        err = [pr.error or "" for pr in probes]
        cls = [(pr.error_class or "DecodeError") if pr.error else "" for pr in probes]
        return {"i": batch["i"], "vec": vec, "error": np.asarray(err, dtype=object),
                "error_class": np.asarray(cls, dtype=object)}


def ray_embedder(home: Home, model: Any, *, address: str | None = None,
                 workers: int | None = None):
    """An `embed_catalog_images` for `manager.build_index(embed=...)`: the work on Ray.

    `workers` = actors (default: one per CPU of the cluster, one per GPU if it has any).
    """
    checkpoint = str(home.resolve(model.checkpoint_path))
    sha256 = model.checkpoint_sha256

    def embed(encoder, ids: list[int], paths: list[str], *, batch_size: int = 128,
              progress: bool = True, home: Home | None = None, **_: Any):
        from latentsight.index.paths import from_catalog, to_catalog
        from tqdm import tqdm

        if not ids:
            return np.zeros((0, encoder.embed_dim), np.float32), np.zeros(0, np.int64)
        with session(address) as ray:
            n, gpus = _pool(ray, workers)
            files = [from_catalog(p) for p in paths]
            batch = max(1, min(batch_size, -(-len(ids) // n)))
            ds = ray.data.from_items(_items(files), override_num_blocks=max(1, len(ids) // batch))
            ds = ds.map_batches(_EmbedActor, batch_size=batch, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=n), num_cpus=1,
                                num_gpus=gpus, max_task_retries=ACTOR_RETRIES,
                                fn_constructor_kwargs={"checkpoint": checkpoint, "sha256": sha256,
                                                       "device": "cuda" if gpus else "cpu"})
            vecs = np.zeros((len(ids), encoder.embed_dim), np.float32)
            ok = np.zeros(len(ids), bool)
            failed = []
            bar = tqdm(total=len(ids), desc=f"embedding (ray x{n})", unit="img", file=sys.stderr,
                       disable=not progress or None)
            try:
                for out in _batches(ds):
                    for j, i in enumerate(out["i"].tolist()):
                        if out["error"][j]:
                            failed.append((files[i], str(out["error_class"][j]),
                                           str(out["error"][j])))
                        else:
                            vecs[i], ok[i] = out["vec"][j], True
                    bar.update(len(out["i"]))
            except Exception as e:  # noqa: BLE001 - nothing is written before every vector is back
                msg = (f"the Ray index build stopped: {' '.join(str(e).split())[:300]}; the index "
                       "in place is unchanged")
                raise RayError(msg) from e
            finally:
                bar.close()
        if failed and home is not None:
            home.catalog.record_failures(
                [(to_catalog(p), c, f"cannot re-read for embedding: {m}") for p, c, m in failed])
        return vecs[ok], np.asarray(ids, np.int64)[ok]

    return embed


__all__ = ["RayError", "connect", "ray_embedder", "scan_paths_ray"]
