#!/usr/bin/env bash
# The test run proper, inside a private network namespace (`unshare --net`, from .ci/run):
# loopback is its only interface, so PostgreSQL, the Milvus server, Ray and Streamlit, which
# the tests start, can listen on and reach 127.0.0.1 and nothing else, whatever they bind.
# Everything it needs is installed before (no network in here).
set -euo pipefail
cd "$(dirname "$0")/.."
ip link set lo up

# a PostgreSQL of this namespace (a server of the host's namespace is not reachable from here)
export PGPORT="${CI_PGPORT:-54339}" PGDATA_DIR="${CI_PGDATA_DIR:-/tmp/latentsight-ci-pg-54339}"
rm -rf "$PGDATA_DIR"
eval "$(.ci/start-postgres.sh)"
export LATENTSIGHT_TEST_PG_URL

stop_servers() {
  .ci/stop-milvus.sh || true
  RAY_BIN=.venv/bin/ray .ci/stop-ray.sh || true
  PGDATA_DIR="$PGDATA_DIR" .ci/stop-postgres.sh || true
}
trap stop_servers EXIT

# A real Milvus 2.3 server (PyPI's `milvus`, its own venv) and a local Ray cluster: the Milvus
# server and Ray tests skip only without them (and fail under CI=true).
t0=$(date +%s)
eval "$(.ci/start-milvus.sh)"
export LATENTSIGHT_TEST_MILVUS_URI LATENTSIGHT_MILVUS_TOKEN
eval "$(RAY_BIN=.venv/bin/ray .ci/start-ray.sh)"
export LATENTSIGHT_TEST_RAY_ADDRESS RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
echo "milvus + ray started in $(( $(date +%s) - t0 ))s" >&2

make test
