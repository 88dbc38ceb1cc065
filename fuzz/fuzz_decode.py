"""Fuzz target for the decode function (atheris): any bytes -> an image or a DecodeError.

    make fuzz                       # 60 s, corpus seeded from tests/badfiles.py
    python fuzz/fuzz_decode.py -max_total_time=600 fuzz/corpus

Anything else escaping `decode_bytes` (another exception type, an array that
is not uint8 (H, W) / (H, W, 3), a crash) is a bug. The pixel limit is lowered
so that the fuzzer spends its time on parsers, not on big allocations. Needs
the `fuzz` extra: pip install -e ".[fuzz]".
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np
    from latentsight.embedder.errors import DecodeError
    from latentsight.embedder.images import decode_bytes

MAX_PIXELS = 4_000_000


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = "RGB" if fdp.ConsumeBool() else "L"
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        img = decode_bytes(payload, path="<fuzz>", mode=mode, max_pixels=MAX_PIXELS)
    except DecodeError as e:
        assert e.path == "<fuzz>" and e.reason
        return
    px = img.pixels
    assert px.dtype == np.uint8
    assert px.ndim == (2 if mode == "L" else 3)
    assert px.shape[0] * px.shape[1] <= MAX_PIXELS
    assert (px.shape[1], px.shape[0]) == (img.width, img.height)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
