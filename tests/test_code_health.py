"""Small rules defined once: device names, backends, faiss error lines."""

from __future__ import annotations

import pytest
from latentsight.embedder.devices import check_device
from latentsight.index.backends import BACKENDS, check_backend
from latentsight.index.errors import StoreError
from latentsight.index.store import _first_line, gpu_device

from latentsight.settings import Settings


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_names_accepted_everywhere(device):
    assert check_device(device) == device
    assert Settings.resolve("/tmp/h", device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "mps"])
def test_a_bad_device_gets_the_same_message_everywhere(device):
    from latentsight.embedder.models import resolve_device

    want = f"The 'device' must be auto, cpu, cuda or cuda:N. Got {device!r} instead."
    for call, error in ((check_device, ValueError), (resolve_device, ValueError),
                        (gpu_device, StoreError),
                        (lambda d: Settings.resolve("/tmp/h", device=d), ValueError)):
        with pytest.raises(error) as e:
            call(device)
        assert str(e.value) == want


def test_backends_are_defined_once():
    from latentsight.index import manager

    from latentsight import settings

    assert settings.BACKENDS is manager.BACKENDS is BACKENDS
    with pytest.raises(StoreError, match="one of faiss, milvus. Got 'qdrant'"):
        check_backend("qdrant")
    with pytest.raises(StoreError, match="Got 'qdrant'"):
        Settings.resolve("/tmp/h", backend="qdrant")


def test_first_line_is_the_first_line():
    assert _first_line(RuntimeError("could not parse\nat index_factory.cpp:12")) == \
        "could not parse"
    assert _first_line(RuntimeError("")) == "RuntimeError"
