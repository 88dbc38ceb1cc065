"""The one definition of a device name: auto, cpu, cuda or cuda:N (torch's spelling).

Light on purpose (no torch import), so settings and the CLI can check a name
before anything heavy loads. `embedder.models.resolve_device` maps a name to a
torch device; `index.store.gpu_device` to a faiss GPU number.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N


def check_device(device: str) -> str:
    """Return `device` when it is auto, cpu, cuda or cuda:N; a ValueError naming them otherwise."""
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    msg = f"The 'device' must be auto, cpu, cuda or cuda:N. Got {device!r} instead."
    raise ValueError(msg)
