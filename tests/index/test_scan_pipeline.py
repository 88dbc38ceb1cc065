"""The scan pipeline's fast paths give what the one-at-a-time paths give."""

from __future__ import annotations

import numpy as np
import torch
from latentsight.embedder.images import decode_file
from latentsight.index.manager import load_scorer
from latentsight.index.scan import _Neighbors, scan_paths
from latentsight.index.threads import one_torch_thread
from PIL import Image

from tests.imagegen import normal_textures


def test_batched_nearest_normals_equal_one_by_one(anomaly_home):
    row = anomaly_home.catalog.model("scan-test")
    encoder, scorer = load_scorer(anomaly_home, row, "cpu")
    nb = _Neighbors(anomaly_home, row, encoder, scorer, k=3, include_synthetic=False)
    images = [np.asarray(im) for im in normal_textures(5, seed=90)]
    batched = nb.batch(images)
    one_by_one = [nb(p) for p in images]
    assert all(ids and len(ids) == 3 for ids in batched)
    assert batched == one_by_one


def test_parallel_scan_scores_equal_the_scorer_in_file_order(anomaly_home, tmp_path):
    for i, img in enumerate(normal_textures(11, seed=91)):  # more images than score threads
        Image.fromarray(img).save(tmp_path / f"img_{i:02d}.png")
    before = torch.get_num_threads()
    summary = scan_paths(anomaly_home, [tmp_path], model="scan-test", device="cpu",
                         progress=False, workers=0)
    assert torch.get_num_threads() == before  # the scan's one-thread setting is undone
    files = sorted(tmp_path.glob("*.png"))
    assert [r.path for r in summary.results] == [str(f) for f in files]
    encoder, scorer = load_scorer(anomaly_home, anomaly_home.catalog.model("scan-test"), "cpu")
    want = scorer.decision_function([decode_file(f, mode=encoder.mode).pixels for f in files])
    np.testing.assert_allclose([r.score for r in summary.results], want, rtol=1e-5)


def test_one_torch_thread_nests_and_restores_on_error():
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            with one_torch_thread():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1  # the outer block still holds it
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # the session's setting (tests/conftest.py)
