"""The Milvus server the tests share (.ci/start-milvus.sh starts it; .ci/run does in CI).

`server_uri()` returns LATENTSIGHT_TEST_MILVUS_URI, skips the test when it is unset on a
developer's machine, and fails it when CI is set (CI must run the server-backed cases).
`clean(uri)` drops every collection the tests made, so each test starts on an empty server.
"""

from __future__ import annotations

import os

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
