"""The decoding fast paths: chunked worker tasks keep a bad file's neighbours, and JPEG
draft decoding gives the model what a full decode gives."""

from __future__ import annotations

import io

import numpy as np
import torch
from latentsight.embedder.images import decode_bytes, prepare
from latentsight.embedder.models import create
from latentsight.embedder.probe import Limits, ProbePool, probe_file
from PIL import Image, ImageFilter


def _png(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(path)
    return str(path)


def test_a_bad_file_inside_a_chunk_spares_the_rest_of_the_chunk(tmp_path):
    """One worker, chunks of 8: file 5 (corrupt) shares its task with files 0-7.
    (A hanging or dying file inside a chunk: tests/embedder/test_probe.py and
    tests/index/test_hostile.py, which pay a worker restart.)"""
    paths = [_png(tmp_path / f"f{i:02d}.png", i) for i in range(16)]
    (tmp_path / "f05_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # header only
    paths[5] = str(tmp_path / "f05_bad.png")
    with ProbePool(1, Limits(), chunk=8) as pool:
        probes = list(pool.imap(paths, (16, 1)))
        assert pool.restarts == 0  # a bad file costs no worker
    assert [p.path for p in probes] == paths  # in order, every file answered
    assert probes[5].path.endswith("f05_bad.png") and "PNG" in (probes[5].error or "")
    ok = [p for i, p in enumerate(probes) if i != 5]
    assert all(p.error is None and p.pixels.shape == (1, 16, 16) for p in ok)


def _smooth_jpeg(side: int = 256) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (side // 8, side // 8), dtype=np.uint8))
    img = img.resize((side, side), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_jpeg_draft_decoding_gives_the_full_decodes_embedding(tmp_path):
    data = _smooth_jpeg()
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    draft = probe_file(str(path), (64, 1))  # decoded at 1/4 (64 px)
    assert decode_bytes(data, reduce_to=64).pixels.shape == (64, 64)  # the draft happened
    full = prepare(decode_bytes(data).pixels, 64, 1)
    assert draft.width == draft.height == 256  # the file's own size is recorded
    diff = np.abs(draft.pixels.astype(np.int16) - full.astype(np.int16))
    assert diff.mean() < 2.0 and diff.max() <= 24
    torch.manual_seed(0)
    model = create("ae").eval()
    with torch.no_grad():
        e = model.embed(torch.from_numpy(np.stack([draft.pixels, full])).float() / 255)
    assert torch.nn.functional.cosine_similarity(e[0], e[1], dim=0) > 0.995
    # a model that fits native pixels itself (Encoder.probe_want = (0, C, longer side)):
    # the JPEG is reduced only while both sides stay >= that side
    native = probe_file(str(path), (0, 1, 100))
    assert native.pixels.shape == (128, 128) and native.width == 256
    fitted = prepare(native.pixels, 64, 1).astype(np.int16)
    assert np.abs(fitted - full.astype(np.int16)).mean() < 2.0


def test_resizing_inside_pillow_gives_what_prepare_gives(tmp_path):
    """probe_file resizes before the image leaves Pillow: the pixels are exactly those of
    decoding at full size and `prepare`, for shrinking and growing, gray and color, and
    modes that are converted first (RGBA over white, 16-bit, palette)."""
    rng = np.random.default_rng(3)
    cases = {
        "gray.png": Image.fromarray(rng.integers(0, 256, (90, 130), dtype=np.uint8)),
        "small.png": Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (70, 50, 4), dtype=np.uint8)),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (80, 80), dtype=np.uint16)),
        "pal.png": Image.fromarray(rng.integers(0, 256, (64, 100, 3), dtype=np.uint8))
        .convert("P"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        for size, channels in ((32, 1), (48, 3), (64, 1)):
            got = probe_file(str(tmp_path / name), (size, channels))
            mode = "L" if channels == 1 else "RGB"
            want = prepare(decode_bytes(data, mode=mode).pixels, size, channels)
            assert got.error is None, got.error
            np.testing.assert_array_equal(got.pixels, want, err_msg=f"{name} {size}")
