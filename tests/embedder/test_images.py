from __future__ import annotations

import numpy as np
import pytest
from latentsight.embedder.errors import DecodeError
from latentsight.embedder.images import decode_bytes, decode_file, sniff_format, to_mode
from PIL import Image

from tests.badfiles import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("bad"))


def test_every_corpus_file_decodes_or_fails_with_path_and_reason(corpus):
    for name, (path, expected) in corpus.items():
        if expected == "ok":
            img = decode_file(path, mode="L")
            assert img.pixels.dtype == np.uint8 and img.pixels.ndim == 2, name
        else:
            with pytest.raises(DecodeError) as ei:
                decode_file(path, mode="L")
            assert ei.value.path == str(path)
            assert ei.value.reason, name


def test_reasons_say_what_is_wrong(corpus):
    reasons = {}
    for name in ("zero.jpg", "text.jpg", "page.jpg", "bomb.png", "truncated.jpg"):
        with pytest.raises(DecodeError) as ei:
            decode_file(corpus[name][0])
        reasons[name] = ei.value.reason
    assert "empty" in reasons["zero.jpg"]
    assert "text" in reasons["text.jpg"]
    assert "HTML" in reasons["page.jpg"]
    assert "pixel limit" in reasons["bomb.png"]
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]


def test_exif_orientation_is_applied(corpus):
    img = decode_file(corpus["exif_rotated.jpg"][0], mode="L")
    assert (img.width, img.height) == (20, 40)
    top, bottom = img.pixels[:20].mean(), img.pixels[20:].mean()
    assert top > 200 and bottom < 55


def test_sixteen_bit_is_rescaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = Image.fromarray(ramp)
    out = to_mode(img, "L")
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) > 200  # clipping at 255 would leave almost one value


def test_transparency_composites_onto_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_mode(rgba, "L").min() == 255


def test_rgb_and_gray_modes(corpus):
    rgb = decode_file(corpus["cmyk.jpg"][0], mode="RGB")
    assert rgb.pixels.shape == (32, 32, 3) and rgb.source_mode == "CMYK"
    with pytest.raises(ValueError, match="'mode' option"):
        decode_bytes(b"x", mode="HSV")


def test_sniff_recognizes_by_content():
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"hello") is None


def test_size_limit(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(p)
    with pytest.raises(DecodeError, match="byte limit"):
        decode_file(p, max_bytes=10)
