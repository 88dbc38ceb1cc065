"""A corpus of hostile, broken and unusual image files, generated on demand.

`make_corpus(dir)` returns {name: (path, expected)} where expected is "ok" or
"fail"; tests for ingest, scan and search-by-upload share it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 image whose left half is white, stored with EXIF Orientation=6 (rotate 90 CW).

    Displayed upright it is 20 wide, 40 tall, with the white half on top.
    """
    px = np.zeros((20, 40), np.uint8)
    px[:, :20] = 255
    img = Image.fromarray(px, mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def make_corpus(root: Path) -> dict[str, tuple[Path, str]]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), mode="L")
    rgb = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), mode="RGB")
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, expected: str) -> None:
        p = root / name
        p.write_bytes(data)
        out[name] = (p, expected)

    good_jpeg = _jpeg_bytes(rgb, quality=90)
    put("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "fail")
    png = io.BytesIO()
    rgb.save(png, format="PNG")
    put("truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "fail")
    put("zero.jpg", b"", "fail")
    put("text.jpg", b"this is not an image, just some text\n" * 4, "fail")
    put("page.jpg", b"<!DOCTYPE html><html><body>hello</body></html>", "fail")
    put("random.png", rng.integers(0, 255, 2048, dtype=np.uint8).tobytes(), "fail")

    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 MP, a few kB on disk
    put("bomb.png", bomb.getvalue(), "fail")

    put("cmyk.jpg", _jpeg_bytes(rgb.convert("CMYK")), "ok")
    sixteen = Image.fromarray((rng.integers(0, 65535, (32, 32))).astype(np.uint16))
    buf = io.BytesIO()
    sixteen.save(buf, format="PNG")
    put("sixteen.png", buf.getvalue(), "ok")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    put("palette_transparent.png", buf.getvalue(), "ok")
    exif_rotated_jpeg(root / "exif_rotated.jpg")
    out["exif_rotated.jpg"] = (root / "exif_rotated.jpg", "ok")
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    put("plain.png", buf.getvalue(), "ok")
    put("no_suffix_png", buf.getvalue()[:0] + _png(gray.rotate(90)), "ok")
    return out


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
