"""How file paths are stored in the catalog, including names that are not valid UTF-8.

POSIX file names are bytes; Python hands undecodable bytes over as lone
surrogates (PEP 383, `surrogateescape`), which no SQL text column accepts.
The catalog stores paths as text in one of two forms:

- an absolute path that is valid UTF-8 is stored as it is: `/data/a.png`;
- any other path is stored as `bytes:` followed by its bytes percent-encoded
  (RFC 3986 unreserved characters and `/` kept as they are):
  `bytes:/data/caf%E9.png` for the Latin-1 name `café.png`.

An absolute path always starts with `/`, so the two forms cannot be confused,
and `from_catalog(to_catalog(p)) == p` for every path. Tables and JSON show
the stored form, which is printable.
"""

from __future__ import annotations

import os
from urllib.parse import quote_from_bytes, unquote_to_bytes

PREFIX = "bytes:"


def to_catalog(path: str | bytes | os.PathLike) -> str:
    """The text form of `path` for the catalog (and for messages): valid Unicode always."""
    raw = os.fsencode(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return PREFIX + quote_from_bytes(raw, safe="/")
    if text.startswith(PREFIX):  # a relative path that happens to look like our prefix
        return PREFIX + quote_from_bytes(raw, safe="/")
    return text


def from_catalog(text: str) -> str:
    """The path to open for a stored text form (a str, with surrogates for undecodable bytes)."""
    if text.startswith(PREFIX):
        return os.fsdecode(unquote_to_bytes(text[len(PREFIX):]))
    return text


__all__ = ["PREFIX", "from_catalog", "to_catalog"]
