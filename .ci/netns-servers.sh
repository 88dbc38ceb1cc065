# Sourced by .ci/run inside a private network namespace (`unshare --net`), before `make test`:
# loopback is the namespace's only interface, so PostgreSQL, the Milvus server, Ray and
# Streamlit, which the tests use, can listen on and reach 127.0.0.1 and nothing else, whatever
# they bind. Everything is installed before (there is no network in here). It starts the
# servers, exports their addresses and stops them when the shell exits.
set -euo pipefail
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
