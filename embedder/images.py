"""Safe image decoding: one function turns a file into a normalized uint8 array.

Every failure is a `DecodeError(path, reason)`; nothing here crashes a batch.
Limits: a maximum file size, a maximum pixel count (checked from the header,
before any pixel is decoded, so a decompression bomb costs nothing), and a
format allowlist.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from latentsight.embedder.errors import DecodeError
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
MAX_FILE_BYTES = 64 * 1024 * 1024  # a 64 MiB image file is already unusual
MAX_PIXELS = 40_000_000  # 40 MP: a 6000x6000 photo passes, a bomb does not
DECODE_TIMEOUT_S = 30.0  # per file, in a worker process (embedder/probe.py); ms is typical
MAX_DECODE_MEMORY = 2 * 1024**3  # bytes a decoding worker may grow by (a 40 MP RGB needs <1 GiB)

# Magic numbers of the allowed formats: files are recognized by content, not by name.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"P5", "PPM"),
    (b"P6", "PPM"),
)
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what the file said about itself."""

    pixels: np.ndarray  # (H, W) uint8 for mode "L", (H, W, 3) uint8 for "RGB"
    width: int  # after EXIF orientation
    height: int
    source_mode: str  # Pillow mode of the file ("I;16", "CMYK", "P", ...)
    format: str  # "PNG", "JPEG", ...


def sniff_format(head: bytes) -> str | None:
    """Return the image format that the first bytes of a file announce, or None."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def looks_like_image(path: str | os.PathLike[str]) -> bool:
    """True when the file's content or its name says it is an image.

    A text file named `.jpg` counts (so that ingest reports it as broken);
    a PNG with no suffix counts too (recognized by content). Never blocks:
    the file is opened non-blocking and only a regular file is read, so a
    FIFO or a device without a suffix is not an image here (`read_bytes`
    then refuses it with the reason, "not a regular file (a FIFO)").
    """
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return True
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return sniff_format(os.read(fd, 16)) is not None
    except OSError:
        return False
    finally:
        os.close(fd)


def non_regular_reason(path: str | os.PathLike[str]) -> str | None:
    """Why `path` is not a regular file ("not a regular file (a FIFO)"), or None when it is.

    Follows symbolic links; a missing file or a broken link gives None (the
    reader reports those itself).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    return f"not a regular file ({_file_kind(st.st_mode)})"


def read_bytes(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a whole regular file with a size limit. Raises DecodeError naming the file.

    The file is opened non-blocking and checked to be a regular file before a
    byte is read, so a FIFO, socket or device named `.jpg` is refused instead
    of hanging the reader.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise DecodeError(str(path), "file not found (deleted or a broken link)") from e
    except PermissionError as e:
        raise DecodeError(str(path), "permission denied") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DecodeError(str(path), "symbolic link loop") from e
        if e.errno == errno.ENAMETOOLONG:
            raise DecodeError(str(path), "file name too long") from e
        raise DecodeError(str(path), f"cannot open: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _file_kind(st.st_mode)
            raise DecodeError(str(path), f"not a regular file ({kind})")
        if st.st_size > max_bytes:
            msg = f"file is {st.st_size} bytes, over the {max_bytes}-byte limit"
            raise DecodeError(str(path), msg)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise DecodeError(str(path), f"cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise DecodeError(str(path), f"file grew over the {max_bytes}-byte limit while read")
    return data


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return f"mode {oct(mode)}"


def decode_bytes(
    data: bytes,
    *,
    path: str = "<bytes>",
    mode: str = "L",
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    reduce_to: int = 0,
    size: int = 0,
) -> DecodedImage:
    """Decode image bytes to a uint8 array in `mode` ("L" or "RGB").

    EXIF orientation is applied; every Pillow mode is converted explicitly
    (16-bit and 32-bit integer images are rescaled to 8 bits, never clipped;
    transparency is composited onto white). The first frame of an animation
    or a multipage file is used.

    `reduce_to` > 0 lets a JPEG be decoded at 1/2, 1/4 or 1/8 of its size
    (libjpeg's DCT scaling, `Image.draft`) while both sides stay at least
    `reduce_to` pixels: what a model that reads `reduce_to`-pixel inputs
    needs, at a fraction of the decoding cost. `pixels` is then the reduced
    array; `width` and `height` are still the file's own.

    `size` > 0: `pixels` is (size, size[, 3]), resized as `resize` does, but
    before the image leaves Pillow (one array copy instead of three).

    Raises:
        DecodeError: with `path` and the reason, for anything that is not a
            readable image within the limits.
    """
    if mode not in ("L", "RGB"):
        msg = f"The 'mode' option must be 'L' or 'RGB'. Got {mode!r} instead."
        raise ValueError(msg)
    if not data:
        raise DecodeError(path, "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise DecodeError(path, f"{len(data)} bytes, over the {max_bytes}-byte limit")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise DecodeError(path, "not an image: content matches no allowed format " + _hint(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                msg = f"{w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit"
                raise DecodeError(path, msg)
            img.seek(0)
            if reduce_to > 0 and fmt == "JPEG" and min(w, h) >= 2 * reduce_to:
                img.draft(img.mode, (reduce_to, reduce_to))  # both sides stay >= reduce_to
            img.load()
            drafted = img.size != (w, h)
            if drafted and img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF Orientation
                w, h = h, w  # exif_transpose below swaps the sides
            img = ImageOps.exif_transpose(img)
            if not drafted:
                w, h = img.size
        except (DecodeError, MemoryError):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DecodeError(path, _bomb_reason(e, max_pixels)) from e
        except UnidentifiedImageError as e:
            raise DecodeError(path, f"unreadable {fmt} data") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DecodeError(path, f"corrupt or truncated {fmt}: {e}") from e
        except Exception as e:  # noqa: BLE001 - Pillow plugins raise anything on hostile input
            raise DecodeError(path, f"{fmt} decoder failed: {type(e).__name__}: {e}") from e
    source_mode = img.mode
    try:
        pixels = to_mode(img, mode, size=size)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DecodeError(path, f"cannot convert mode {source_mode}: {e}") from e
    return DecodedImage(
        pixels=pixels,
        width=w,
        height=h,
        source_mode=source_mode,
        format=fmt,
    )


def decode_file(
    path: str | os.PathLike[str],
    *,
    mode: str = "L",
    max_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
    reduce_to: int = 0,
) -> DecodedImage:
    """Read and decode one file. See `decode_bytes`; errors name the file."""
    data = read_bytes(path, max_bytes=max_bytes)
    return decode_bytes(data, path=str(path), mode=mode, max_pixels=max_pixels,
                        max_bytes=max_bytes, reduce_to=reduce_to)


def to_mode(img: Image.Image, mode: str, *, size: int = 0) -> np.ndarray:
    """Convert any Pillow image to a uint8 array of mode "L" (H, W) or "RGB" (H, W, 3);
    `size` > 0 resizes it to (size, size) first, as `resize` does."""
    m = img.mode
    if m in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)  # float32: a 40 MP 16-bit image needs 160 MB
        if m.startswith("I;16"):
            arr = arr / 65535.0
        elif m == "I" and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr / 65535.0  # 16-bit PNGs open as "I" on some Pillow versions
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        arr *= 255.0
        gray = np.clip(np.rint(arr, out=arr), 0, 255, out=arr).astype(np.uint8)
        img = Image.fromarray(gray, mode="L")
    elif m == "1":
        img = img.convert("L")
    elif m == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    elif m == "PA":
        img = img.convert("RGBA")
    elif m in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    out = img.convert(mode) if img.mode != mode else img
    if size > 0 and out.size != (size, size):
        out = out.resize((size, size), _filter(out.height, out.width, size, size))
    return np.asarray(out, dtype=np.uint8).copy()


def default_workers() -> int:
    """Worker processes for decoding: one core is left to the main process (at most 4)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, n - 1))


def resize(pixels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W[, 3]) array to `size` (square int or (w, h)) with area filtering."""
    w, h = (size, size) if isinstance(size, int) else size
    if pixels.shape[1] == w and pixels.shape[0] == h:
        return pixels
    img = Image.fromarray(pixels)
    return np.asarray(img.resize((w, h), _filter(*pixels.shape[:2], w, h)), dtype=np.uint8)


def prepare(pixels: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Resize one uint8 image to (C, S, S) uint8 with the model's channel count."""
    arr = resize(pixels, image_size)
    if channels == 1 and arr.ndim == 3:
        arr = np.rint(arr @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    if channels == 3 and arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 2:
        return arr[None].copy()  # (1, S, S), writable
    return arr.transpose(2, 0, 1).copy()  # (3, S, S)


def _filter(height: int, width: int, w: int, h: int) -> Image.Resampling:
    """Area averaging when an image shrinks to (w, h) on both sides, bilinear otherwise."""
    shrinks = width >= w and height >= h
    return Image.Resampling.BOX if shrinks else Image.Resampling.BILINEAR


def _bomb_reason(e: Exception, max_pixels: int) -> str:
    """Pillow's own bomb check fired first: say so with our documented limit, not Pillow's."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{m.group(1)} pixels, " if m else ""
    return f"{size}over the {max_pixels}-pixel limit (a decompression bomb; refused unread)"


def _hint(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "(looks like HTML)"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in data[:256]):
        return "(looks like text)"
    return "(unknown binary data)"
