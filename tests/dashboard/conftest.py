"""Dashboard fixtures: a populated home (a copy of `trained_home`, one scan) and an empty one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from latentsight.embedder.encoder import prepare
from latentsight.embedder.images import decode_file
from latentsight.index.catalog import ScanResultRow, ScanRow
from latentsight.index.home import Home
from latentsight.index.manager import load_encoder

from tests.homes import copy_home


def reconstruction_scan(home: Home, paths: list[str], bad: list[str],
                        threshold: float | None = None) -> int:
    """Record a scan scored by mean reconstruction error (higher = more anomalous);
    the threshold is the scores' 80th percentile unless given."""
    model = home.catalog.model()
    enc = load_encoder(home, model, "cpu")
    scores = []
    for p in paths:
        x = torch.from_numpy(prepare(decode_file(p, mode=enc.mode).pixels, enc.image_size,
                                     enc.channels))[None].float() / 255  # (1, C, S, S)
        scores.append(float((x - enc.reconstruct_tensor(x)).abs().mean()))
    if threshold is None:
        threshold = float(np.quantile(scores, 0.8))
    with home.catalog.session() as s:
        scan = ScanRow(model_id=model.id, threshold=threshold, paths=sorted({str(Path(p).parent)
                                                                             for p in paths}),
                       status="done", n_images=len(paths) + len(bad),
                       n_flagged=sum(x > threshold for x in scores), n_failed=len(bad))
        s.add(scan)
        s.flush()
        rows = {r.path: r.sha256 for r in home.catalog.images()}
        s.add_all(ScanResultRow(scan_id=scan.id, path=p, sha256=rows.get(p), score=sc,
                                anomalous=sc > threshold) for p, sc in zip(paths, scores,
                                                                           strict=True))
        s.add_all(ScanResultRow(scan_id=scan.id, path=b, error="not an image") for b in bad)
        return scan.id


@pytest.fixture(scope="session")
def dash_home(tmp_path_factory, trained_home) -> Home:
    """A private copy of `trained_home` (so the dashboard may write to it) with one scan."""
    root = tmp_path_factory.mktemp("dash") / "home"
    trained_home.catalog.engine.dispose()
    shutil.copytree(trained_home.root, root)
    home = Home(root)  # model and index paths are stored relative to the home
    paths = [r.path for r in home.catalog.images()]
    bad = root / "not-an-image.png"
    bad.write_bytes(b"hello")
    reconstruction_scan(home, paths, [str(bad)])
    return home


@pytest.fixture()
def empty_home(tmp_path) -> Home:
    return Home(tmp_path / "empty")


@pytest.fixture()
def own_home(dash_home, tmp_path) -> Home:
    """A copy of `dash_home` a test may change."""
    return copy_home(dash_home, tmp_path / "home")


@pytest.fixture(scope="module")
def gan_home(tmp_path_factory, dash_home) -> Home:
    """A copy of `dash_home` with a tiny conditional GAN ("g1") trained on its classes."""
    from tests.cli import run

    home = copy_home(dash_home, tmp_path_factory.mktemp("gan") / "home")
    run("gan", "train", "--steps", "4", "--batch-size", "8", "--g-width", "4", "--d-width", "4",
        "--holdout", "0.25", "--name", "g1", "--device", "cpu", "--home", str(home.root))
    return home
