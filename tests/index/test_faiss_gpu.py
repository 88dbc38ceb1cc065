"""The one warning when a CUDA GPU goes unused because the installed faiss is the CPU build."""

from __future__ import annotations

import logging

import faiss
import torch
from latentsight.index.faiss_gpu import GPU_HINT, faiss_has_gpu, warn_if_gpu_unused


def test_the_hint_is_logged_exactly_when_a_gpu_is_seen_but_faiss_is_the_cpu_build(caplog):
    assert faiss_has_gpu() == hasattr(faiss, "StandardGpuResources")
    expected = torch.cuda.is_available() and not faiss_has_gpu()
    with caplog.at_level(logging.WARNING, logger="latentsight"):
        assert warn_if_gpu_unused.__wrapped__() is expected
    hints = [r for r in caplog.records if r.getMessage() == GPU_HINT]
    assert len(hints) == int(expected)
    assert all(r.name == "latentsight.index.faiss_gpu" for r in hints)
    assert 'pip install "latentsight[gpu]"' in GPU_HINT
