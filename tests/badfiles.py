"""A corpus of hostile, broken and unusual image files, generated on demand.

`make_corpus(dir)` returns {name: (path, expected)} where expected is "ok" or
"fail"; tests for ingest, scan and search-by-upload share it. Besides broken
and unusual content it holds the file-system oddities: a FIFO, an unreadable
file, a broken symlink, a symlink loop, a name that is not UTF-8, a very long
name in a deep folder, and a sparse file over the size limit.

An unreadable file for root: running as root, `chmod 000` does not stop a
read, so the corpus links `unreadable.jpg` to `/proc/self/mem`, which every
process may open and none can read at offset 0 (EIO). As a normal user it is
a real `chmod 000` file.
"""

from __future__ import annotations

import io
import os
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
    _add_modes(put, rng)
    _add_filesystem_oddities(root, out, _png(gray.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    return out


def _add_modes(put, rng: np.random.Generator) -> None:
    """Unusual but valid images: 1-bit, LA, animated GIF, multipage TIFF, WebP."""
    px = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    put("onebit.png", _png(Image.fromarray(px > 127)), "ok")
    put("la.png", _png(Image.fromarray(np.stack([px, 255 - px], axis=2), mode="LA")), "ok")
    frames = [Image.fromarray(np.roll(px, 4 * i, axis=1)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    put("animated.gif", buf.getvalue(), "ok")
    buf = io.BytesIO()
    pages = [Image.fromarray(np.flipud(px)), Image.fromarray(px.T.copy())]
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    put("multipage.tiff", buf.getvalue(), "ok")
    buf = io.BytesIO()
    Image.fromarray(np.fliplr(px).copy()).convert("RGB").save(buf, format="WEBP", quality=80)
    put("photo.webp", buf.getvalue(), "ok")


def _add_filesystem_oddities(root: Path, out: dict[str, tuple[Path, str]], png: bytes) -> None:
    fifo = root / "fifo.jpg"
    os.mkfifo(fifo)
    out["fifo.jpg"] = (fifo, "fail")
    unreadable = root / "unreadable.jpg"
    if os.geteuid() == 0:
        unreadable.symlink_to("/proc/self/mem")
    else:
        unreadable.write_bytes(png)
        unreadable.chmod(0)
    out["unreadable.jpg"] = (unreadable, "fail")
    (root / "broken_link.png").symlink_to(root / "no-such-file.png")
    out["broken_link.png"] = (root / "broken_link.png", "fail")
    (root / "loop.png").symlink_to(root / "loop.png")
    out["loop.png"] = (root / "loop.png", "fail")
    over = root / "over_limit.png"  # sparse: 65 MiB on paper, one block on disk
    with open(over, "wb") as f:
        f.write(png)
        f.truncate(65 * 1024 * 1024)
    out["over_limit.png"] = (over, "fail")
    latin1 = Path(os.fsdecode(os.fsencode(str(root)) + b"/caf\xe9.png"))  # not UTF-8
    latin1.write_bytes(_rot(png))
    out["caf%E9.png"] = (latin1, "ok")
    deep = root.joinpath(*["d" * 120] * 8)  # a path of more than 1000 characters
    deep.mkdir(parents=True)
    long_name = deep / ("n" * 240 + ".png")
    long_name.write_bytes(_rot(_rot(png)))
    out["long_name.png"] = (long_name, "ok")


def _rot(png: bytes) -> bytes:
    """The same PNG turned by 90 degrees (new content, so a new sha256)."""
    return _png(Image.open(io.BytesIO(png)).rotate(90))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
