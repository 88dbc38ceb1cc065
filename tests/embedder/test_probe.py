"""The decoding workers: a file's clock starts with its own decoding, non-regular files never
block, a worker's memory is bounded, uploads go through the same workers."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from latentsight.embedder.images import looks_like_image, non_regular_reason
from latentsight.embedder.probe import Limits, ProbePool, Upload, probe_file
from PIL import Image


def _png(path, size=32, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return str(path)


def test_files_queued_behind_a_slow_one_are_not_blamed_for_its_timeout(tmp_path, monkeypatch):
    """One worker, the first file hangs: only it times out; the files behind it decode."""
    paths = [_png(tmp_path / "a_slow.png")]
    paths += [_png(tmp_path / f"b{i}.png", seed=i) for i in range(3)]
    monkeypatch.setenv("LATENTSIGHT_FAULTS", "hang:a_slow")
    with ProbePool(1, Limits(timeout_s=2.0)) as pool:
        probes = pool.probe(paths, (16, 1))
    assert "took over 2s" in (probes[0].error or "")
    assert [p.error for p in probes[1:]] == [None, None, None]
    assert all(p.pixels.shape == (1, 16, 16) for p in probes[1:])


def _with_deadline(fn, seconds=20.0):
    """Run fn in a thread; fail (instead of hanging the suite) when it does not return."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked (a FIFO was opened blocking)"
    return out.get("v")


def test_a_fifo_without_suffix_is_not_opened_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert _with_deadline(lambda: looks_like_image(fifo)) is False
    assert non_regular_reason(fifo) == "not a regular file (a FIFO)"
    assert non_regular_reason(_png(tmp_path / "x.png")) is None
    pr = _with_deadline(lambda: probe_file(str(fifo), None))
    assert pr.error == "not a regular file (a FIFO)" and not pr.skipped


def test_a_worker_over_its_memory_limit_reports_the_file(tmp_path):
    """A 16-bit 5000x5000 PNG (a few KB) needs over 128 MB to convert; the worker gets 128 MB."""
    big = tmp_path / "deep16.png"
    Image.fromarray(np.full((5000, 5000), 40000, dtype=np.uint16)).save(big)
    ok = _png(tmp_path / "ok.png")
    with ProbePool(1, Limits(max_memory=128 * 1024**2)) as pool:
        probes = pool.probe([str(big), ok], (16, 1))
    assert "out of memory" in (probes[0].error or "") or "died" in (probes[0].error or "")
    assert probes[1].error is None
    with ProbePool(1) as pool:  # the default limit lets it through
        assert pool.probe([str(big)], (16, 1))[0].error is None


def test_uploads_decode_in_the_workers_with_the_same_limits(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buf, format="PNG")  # 49 MP: over the 40 MP limit
    with ProbePool(1) as pool:
        bomb = pool.probe_one(Upload("big.png", buf.getvalue()), (16, 1))
        good = pool.probe_one(Upload("ok.png", (tmp_path / "ok.png").read_bytes()
                                     if (tmp_path / "ok.png").exists()
                                     else open(_png(tmp_path / "ok.png"), "rb").read()), (0, 1))
    assert bomb.path == "big.png" and "over the 40000000-pixel limit" in bomb.error
    assert good.error is None and good.pixels.shape == (32, 32)


@pytest.mark.parametrize("side", [15000])
def test_pillow_bomb_message_cites_the_documented_limit(side):
    from latentsight.embedder.errors import DecodeError
    from latentsight.embedder.images import decode_bytes

    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")  # 225 MP: Pillow's own check fires
    with pytest.raises(DecodeError) as ei:
        decode_bytes(buf.getvalue())
    assert "40000000-pixel limit" in ei.value.reason and "178" not in ei.value.reason
