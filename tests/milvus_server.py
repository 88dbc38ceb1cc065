"""The Milvus server the tests share (.ci/start-milvus.sh starts it; .ci/run does in CI).

`server_uri()` returns LATENTSIGHT_TEST_MILVUS_URI, skips the test when it is unset on a
developer's machine, and fails it when CI is set (CI must run the server-backed cases).
`clean(uri)` drops every collection the tests made, so each test starts on an empty server;
`exclusive()` keeps the other pytest-xdist workers (and other test runs of this machine) off
the server meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "LATENTSIGHT_TEST_MILVUS_URI"


def server_uri() -> str:
    uri = os.environ.get(ENV)
    if uri:
        return uri
    how = f"{ENV} is not set (eval \"$(.ci/start-milvus.sh)\" starts a server)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {how}")
    pytest.skip(how)


def clean(uri: str, prefixes: tuple[str, ...] = ("latentsight_", "t_")) -> None:
    """Drop the collections tests create (names starting with one of `prefixes`)."""
    from latentsight.index.milvus_store import _connect

    client = _connect(uri, None)
    try:
        for name in client.list_collections():
            if name.startswith(prefixes):
                client.drop_collection(name)
    finally:
        client.close()


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Hold the test server for this process: an exclusive lock on one file of the machine's
    temporary folder, waited for as long as another process holds it."""
    lock = Path(tempfile.gettempdir()) / "latentsight-tests-milvus-server.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
