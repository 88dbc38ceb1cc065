"""Which faiss build is installed, and the one warning when a GPU goes unused because of it.

A default install has `faiss-cpu` (milvus-lite depends on it too, so one
distribution owns the `faiss/` folder). GPU indexes need the `gpu` extra,
`pip install "latentsight[gpu]"` (faiss-gpu, Linux x86_64): see the README's
"GPU" section.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

GPU_HINT = ('a CUDA GPU is present, but the installed faiss is the CPU build (faiss-cpu), so '
            'indexes stay on the CPU. For GPU indexes: pip install "latentsight[gpu]" '
            "(see the README, GPU)")


def faiss_has_gpu() -> bool:
    """Whether the imported faiss is a GPU build (has StandardGpuResources)."""
    import faiss

    return hasattr(faiss, "StandardGpuResources")


def torch_sees_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


@functools.cache
def warn_if_gpu_unused() -> bool:
    """Log GPU_HINT once per process when torch sees CUDA but faiss is the CPU build."""
    if torch_sees_cuda() and not faiss_has_gpu():
        log.warning(GPU_HINT)
        return True
    return False
