"""The Milvus backend: the VectorStore contract over pymilvus's MilvusClient.

The URI alone chooses the deployment, as `MilvusClient` does:

- a file path (`HOME/indexes/NAME.milvus.db`) is **Milvus Lite**, embedded in
  this process: the default for this backend, for small collections. Milvus
  Lite is single-process: one process at a time may open a file; a second one
  gets a clear error naming the way out (stop the other, or use a server);
- `http://host:19530` is Milvus standalone or a cluster (through its proxy);
  the token (`user:password` or an API key) comes from LATENTSIGHT_MILVUS_TOKEN.

One collection per model: fields id (INT64 primary key = catalog image id),
vector (FLOAT_VECTOR), label, source (VARCHAR) and synthetic (BOOL), so a
`Filter` becomes a Milvus boolean expression on scalar fields applied inside
the search. Strong consistency, so a search sees every write before it;
`flush()` seals the writes before the catalog records a batch as committed;
every insert and delete response's count is checked.

The `spec` is an index type with optional build parameters, e.g. "FLAT",
"IVF_FLAT:nlist=1024,nprobe=32", "HNSW:M=16,efConstruction=200,ef=64"
(search-time keys nprobe and ef go to the search parameters). The metric is
latentsight's (cosine, ip, l2): cosine is Milvus's IP over L2-normalized
vectors, ip is IP over the vectors as given, l2 is L2; the collection's
description records it with the spec. Scores follow the store contract
(higher = closer): IP as returned, L2 negated.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from latentsight.index.errors import StoreError
from latentsight.index.store import (
    META_DEFAULTS,
    Filter,
    Metadata,
    VectorStore,
    as_matrix,
    check_metric,
    normalize,
)

ENV_TOKEN = "LATENTSIGHT_MILVUS_TOKEN"
SEARCH_KEYS = {"nprobe", "ef", "search_list", "radius", "range_filter"}
MILVUS_METRIC = {"cosine": "IP", "ip": "IP", "l2": "L2"}  # cosine: IP on normalized vectors
# Labels and sources are stored whole (never cut: a cut label would match its neighbours'
# filters). The catalog allows 255 characters; Milvus counts VARCHAR length in UTF-8 bytes,
# and 65535 is the most a 2.3 server takes, so any label the catalog holds fits.
MAX_VARCHAR = 65535
ENV_TIMEOUT = "LATENTSIGHT_MILVUS_TIMEOUT"  # seconds to wait for a server to answer (default 10)
SPEC_MARK = ", spec "  # the collection description ends with the spec it was built with
METRIC_MARK = re.compile(r", metric (\w+)")  # ... and names the metric before it
_BATCH = 2000  # rows per insert request (a gRPC message stays well under its limit)


def is_lite(uri: str) -> bool:
    """A URI without a scheme is a local file: Milvus Lite."""
    return "://" not in uri


def collection_name(model_name: str, model_id: int | None = None, generation: int = 0) -> str:
    """A Milvus-legal collection name for a model (letters, digits, underscores).

    Without `model_id`: the name of indexes built before collections were
    versioned. With it: one name per (model, generation), `..._m{id}_g{gen}`,
    so a rebuild fills a collection of its own and no two models' names meet.
    """
    safe = re.sub(r"[^0-9A-Za-z_]", "_", model_name)
    if model_id is None:
        return f"latentsight_{safe}"[:255]
    suffix = f"_m{int(model_id)}_g{int(generation)}"
    return f"latentsight_{safe}"[: 255 - len(suffix)] + suffix


def parse_spec(spec: str) -> tuple[str, dict[str, object], dict[str, object]]:
    """"HNSW:M=16,ef=64" -> ("HNSW", {"M": 16}, {"ef": 64})."""
    kind, _, rest = spec.partition(":")
    build: dict[str, object] = {}
    search: dict[str, object] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            msg = f"Milvus spec parameters are key=value pairs. Got {item!r} in {spec!r}."
            raise StoreError(msg)
        parsed: object = int(value) if value.lstrip("-").isdigit() else value
        (search if key in SEARCH_KEYS else build)[key] = parsed
    return kind.strip().upper() or "FLAT", build, search


class MilvusStore(VectorStore):
    """A Milvus collection holding one model's vectors and the metadata to filter them."""

    backend = "milvus"

    def __init__(
        self,
        dim: int,
        *,
        uri: str,
        collection: str,
        spec: str = "FLAT",
        metric: str = "cosine",
        token: str | None = None,
        create: bool = True,
        client: object | None = None,
    ) -> None:
        try:
            import pymilvus  # noqa: F401
        except ImportError as e:
            msg = "The Milvus backend needs pymilvus: pip install 'pymilvus[milvus-lite]'"
            raise StoreError(msg) from e
        self.dim = int(dim)
        self.uri = uri
        self.collection = collection
        self.spec = spec
        self.metric = check_metric(metric)
        self.index_type, self.build_params, self.search_params = parse_spec(spec)
        if is_lite(uri):
            Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.client = client if client is not None else _connect(uri, token)
        self.max_text = MAX_VARCHAR
        if not self.client.has_collection(collection):
            if not create:
                msg = f"Milvus at {uri} has no collection {collection!r}; build the index first."
                raise StoreError(msg)
            self._create()
        else:
            self._check_dim()
        self._call("load", self.client.load_collection, collection)

    @classmethod
    def open(cls, uri: str, collection: str, *, token: str | None = None) -> MilvusStore:
        """Open an existing collection, reading dimension, index type and metric from it."""
        client = _connect(uri, token)
        if not client.has_collection(collection):
            msg = f"Milvus at {uri} has no collection {collection!r}; build the index first."
            raise StoreError(msg)
        desc = client.describe_collection(collection)
        dim = next(int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector")
        idx = client.describe_index(collection, "vector") or {}
        described = str(desc.get("description", ""))
        spec = described.split(SPEC_MARK, 1)[1] if SPEC_MARK in described else None
        spec = spec or idx.get("index_type")
        found = METRIC_MARK.search(described)
        # collections from before the metric was recorded: IP over normalized vectors
        metric = found.group(1) if found else ("l2" if idx.get("metric_type") == "L2"
                                               else "cosine")
        return cls(dim, uri=uri, collection=collection, spec=str(spec or "FLAT"), metric=metric,
                   create=False, client=client)

    def _create(self) -> None:
        from pymilvus import DataType

        c = self.client
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False,
                                 description=f"latentsight vectors, metric {self.metric}"
                                             f"{SPEC_MARK}{self.spec}")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("label", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("synthetic", DataType.BOOL)
        ip = c.prepare_index_params()
        ip.add_index(field_name="vector", index_type=self.index_type,
                     metric_type=MILVUS_METRIC[self.metric], params=self.build_params)
        try:
            c.create_collection(self.collection, schema=schema, index_params=ip,
                                consistency_level="Strong")
        except Exception as e:  # noqa: BLE001
            msg = f"Milvus could not create {self.collection!r} with spec {self.spec!r}: {e}"
            raise StoreError(msg) from e

    def _call(self, what: str, fn, *args, **kwargs):
        """One client call; a server that fails or is gone becomes a one-line StoreError."""
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - pymilvus raises several unrelated types
            msg = (f"Milvus {what} of {self.collection!r} at {self.uri} failed: {_reason(e)}"
                   f"{_server_hint(self.uri)}")
            raise StoreError(msg) from e

    def _check_dim(self) -> None:
        desc = self._call("describe", self.client.describe_collection, self.collection)
        # collections built before labels were stored whole hold 512 bytes at most
        self.max_text = min((int(f["params"].get("max_length", MAX_VARCHAR))
                             for f in desc["fields"] if f["name"] in ("label", "source")),
                            default=MAX_VARCHAR)
        dim = next(int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector")
        if dim != self.dim:
            msg = (f"Milvus collection {self.collection!r} holds dimension {dim}; this model "
                   f"embeds in {self.dim}. Rebuild: latentsight index rebuild --backend milvus")
            raise StoreError(msg)

    # ---- writes ------------------------------------------------------------------------

    def add(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, metadata: Metadata | None = None
    ) -> None:
        ids, v = self._check_rows(ids, vectors, metadata)
        if len(ids) == 0:
            return
        clash = self._existing(ids)
        if clash.size:
            msg = f"{clash.size} id(s) already in the index (first: {int(clash[0])}); use upsert."
            raise StoreError(msg)
        self._write("insert", ids, v, metadata)

    def upsert(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, metadata: Metadata | None = None
    ) -> None:
        ids, v = self._check_rows(ids, vectors, metadata)
        if len(ids):
            self._write("upsert", ids, v, metadata)

    def _check_rows(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, metadata: Metadata | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        v = normalize(vectors) if self.metric == "cosine" else as_matrix(vectors)
        if v.shape[0] != ids.shape[0]:
            msg = f"Got {ids.shape[0]} ids for {v.shape[0]} vectors."
            raise StoreError(msg)
        if metadata is not None and len(metadata) != len(ids):
            msg = f"Got {len(metadata)} metadata rows for {len(ids)} vectors."
            raise StoreError(msg)
        if v.shape[0] and v.shape[1] != self.dim:
            msg = f"Vectors have dimension {v.shape[1]}; this index holds dimension {self.dim}."
            raise StoreError(msg)
        if len(np.unique(ids)) != len(ids):
            raise StoreError("Duplicate ids within one add() call.")
        return ids, v

    def _write(self, op: str, ids: np.ndarray, v: np.ndarray, metadata: Metadata | None) -> None:
        call = getattr(self.client, op)
        for s in range(0, len(ids), _BATCH):
            rows = []
            for j in range(s, min(s + _BATCH, len(ids))):
                meta = {**META_DEFAULTS, **(metadata[j] if metadata is not None else {})}
                rows.append({
                    "id": int(ids[j]), "vector": v[j].tolist(),
                    "label": self._text(meta["label"], "label", ids[j]),
                    "source": self._text(meta["source"], "source", ids[j]),
                    "synthetic": bool(meta["synthetic"]),
                })
            res = self._call(op, call, self.collection, rows)
            count = int(res.get(f"{op}_count", -1))
            if count != len(rows):
                msg = (f"Milvus {op} into {self.collection!r} stored {count} of {len(rows)} "
                       "rows; the batch is not committed.")
                raise StoreError(msg)

    def _text(self, value: object, field: str, image_id: object) -> str:
        text = "" if value is None else str(value)
        if len(text.encode("utf-8", "surrogatepass")) > self.max_text:
            msg = (f"Image {int(image_id)}: its {field} is {len(text)} characters, more than the "
                   f"{self.max_text} bytes collection {self.collection!r} stores (built before "
                   "labels were kept whole). Rebuild it: latentsight index rebuild --backend "
                   "milvus")
            raise StoreError(msg)
        return text

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size == 0:
            return 0
        present = self._existing(ids)
        if present.size == 0:
            return 0
        self._call("delete", self.client.delete, self.collection, ids=[int(i) for i in present])
        left = self._existing(present)
        if left.size:
            msg = f"Milvus kept {left.size} of {present.size} ids asked to be deleted."
            raise StoreError(msg)
        return int(present.size)

    def flush(self) -> None:
        self._call("flush", self.client.flush, self.collection)

    def save(self, path: str | Path | None = None) -> None:
        """Milvus persists on its own; saving is flushing (`path` is ignored)."""
        self.flush()

    def close(self) -> None:
        self.client.close()

    # ---- reads -------------------------------------------------------------------------

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        for s in range(0, len(ids), 1000):
            chunk = [int(i) for i in ids[s : s + 1000]]
            rows = self._call("query", self.client.query, self.collection,
                              filter=f"id in {chunk}", output_fields=["id"], limit=len(chunk))
            found.extend(int(r["id"]) for r in rows)
        return np.asarray(sorted(found), dtype=np.int64)

    def ids(self) -> np.ndarray:
        it = self._call("query", self.client.query_iterator, self.collection, batch_size=5000,
                        filter="id >= 0", output_fields=["id"])
        out: list[int] = []
        try:
            while True:
                page = self._call("query", it.next)
                if not page:
                    break
                out.extend(int(r["id"]) for r in page)
        finally:
            it.close()
        return np.asarray(out, dtype=np.int64)

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        found: dict[int, list[float]] = {}
        for s in range(0, len(ids), 1000):
            chunk = [int(i) for i in ids[s : s + 1000]]
            try:
                rows = self.client.query(self.collection, filter=f"id in {chunk}",
                                         output_fields=["id", "vector"], limit=len(chunk))
            except Exception as e:  # noqa: BLE001
                raise StoreError(f"Milvus query of {self.collection!r} failed: {e}") from e
            found.update((int(r["id"]), r["vector"]) for r in rows)
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            msg = f"{len(missing)} id(s) not in the index (first: {missing[0]})."
            raise StoreError(msg)
        out = np.asarray([found[int(i)] for i in ids], dtype=np.float32)
        return out.reshape(len(ids), self.dim)

    @property
    def ntotal(self) -> int:
        rows = self._call("count", self.client.query, self.collection, filter="",
                          output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        allowed_ids: Sequence[int] | np.ndarray | None = None,
        filter: Filter | None = None,  # noqa: A002
    ) -> tuple[np.ndarray, np.ndarray]:
        q = normalize(vectors) if self.metric == "cosine" else as_matrix(vectors)
        if k < 1:
            msg = f"The 'k' option must be >= 1. Got {k} instead."
            raise StoreError(msg)
        scores = np.full((len(q), k), -np.inf, np.float32)
        out = np.full((len(q), k), -1, np.int64)
        if len(q) == 0:
            return scores, out
        parts = []
        if filter is not None and not filter.empty:
            parts.append(filter.to_milvus_expr())
        if allowed_ids is not None:
            allowed = [int(i) for i in np.asarray(allowed_ids, dtype=np.int64)]
            if not allowed:
                return scores, out
            parts.append(f"id in {allowed}")
        expr = " and ".join(f"({p})" for p in parts)
        params = {"metric_type": MILVUS_METRIC[self.metric], "params": dict(self.search_params)}
        res = self._call("search", self.client.search, self.collection,
                         data=[row.tolist() for row in q], limit=k, filter=expr,
                         output_fields=["id"], search_params=params)
        sign = -1.0 if self.metric == "l2" else 1.0
        for r, hits in enumerate(res):
            for j, hit in enumerate(hits[:k]):
                out[r, j] = int(hit["id"])
                scores[r, j] = sign * float(hit["distance"])
        return scores, out


def connect_timeout() -> float:
    """Seconds to wait for a Milvus server (LATENTSIGHT_MILVUS_TIMEOUT, default 10)."""
    raw = os.environ.get(ENV_TIMEOUT, "10")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"{ENV_TIMEOUT} must be a number of seconds > 0. Got {raw!r} instead."
        raise StoreError(msg)
    return value


def _connect(uri: str, token: str | None) -> object:
    from pymilvus import MilvusClient

    token = token if token is not None else os.environ.get(ENV_TOKEN, "")
    timeout = connect_timeout()
    start = time.monotonic()
    try:
        if is_lite(uri):
            return MilvusClient(uri=uri, token=token)
        client = MilvusClient(uri=uri, token=token, timeout=timeout)
        client.list_collections(timeout=timeout)  # a refused token or a mute server fails here
        return client
    except Exception as e:  # noqa: BLE001 - pymilvus raises several unrelated types
        waited = time.monotonic() - start
        raise StoreError(_connect_error(uri, e, token, waited, timeout)) from e


def _reason(e: Exception, token: str | None = None) -> str:
    """pymilvus's message on one line, without the token should it appear in it."""
    text = str(getattr(e, "message", "") or e) or type(e).__name__
    for secret in filter(None, {token, os.environ.get(ENV_TOKEN)}):
        text = text.replace(secret, "***")
        if ":" in secret:  # user:password -> the password alone must not show either
            text = text.replace(secret.split(":", 1)[1], "***")
    return " ".join(text.split())


def _server_hint(uri: str) -> str:
    if is_lite(uri):
        return ""
    return (f". Check that the Milvus server at {uri} is up and reachable from here, and "
            f"its token in {ENV_TOKEN} ({'set' if os.environ.get(ENV_TOKEN) else 'not set'}).")


def _diagnose(uri: str, waited: float, timeout: float) -> str:
    """Why a server URI did not answer: nothing listening, no answer, or a refusal."""
    parsed = urlsplit(uri)
    host, port = parsed.hostname or "localhost", parsed.port or 19530
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            pass
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {host}:{port}"
    except TimeoutError:
        return f"{host}:{port} did not accept a connection within {min(timeout, 5.0):g}s"
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or e})"
    if waited >= 0.8 * timeout:
        return (f"{host}:{port} accepts connections but did not answer within {timeout:g}s "
                f"(slow or not a Milvus server; {ENV_TIMEOUT} sets the wait)")
    return (f"the server at {host}:{port} answered but refused the connection (most often a "
            "missing or wrong token)")


def _connect_error(uri: str, e: Exception, token: str | None = None, waited: float = 0.0,
                   timeout: float = 10.0) -> str:
    reason = _reason(e, token)
    if is_lite(uri):
        return (f"Cannot open the Milvus Lite file {uri}: {reason}. Milvus Lite is "
                "single-process: if another latentsight process (ingest, dashboard) has it open, "
                "stop it, or run a Milvus server and pass --uri http://HOST:19530.")
    why = _diagnose(uri, waited, timeout)
    if why.startswith("the server at"):  # it answered: what it said is worth reading
        why = f"{why}: {reason}"
    token_state = "set" if (token or os.environ.get(ENV_TOKEN)) else "not set"
    return (f"Cannot connect to Milvus at {uri}: {why}. Check that the server is up "
            f"and reachable from here (docker compose up milvus), and the token in {ENV_TOKEN} "
            f"({token_state}).")
