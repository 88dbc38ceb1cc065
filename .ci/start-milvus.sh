#!/usr/bin/env bash
# Start a throwaway Milvus 2.3 standalone server on loopback and print its URI (and token).
#   eval "$(.ci/start-milvus.sh)"   # exports LATENTSIGHT_TEST_MILVUS_URI (+ LATENTSIGHT_MILVUS_TOKEN)
#   .ci/stop-milvus.sh              # SIGINT to the wrapper, then the server if it lingers
# No Docker here: PyPI's `milvus` 2.3.5 ("embedded Milvus") ships the real `milvus run
# standalone` binary with a built-in etcd and local storage. It goes in a venv of its own
# (its optional client pins pymilvus < 2.4; we never install that extra).
#
# Points learned the hard way:
# - every component is pinned to 127.0.0.1 (otherwise they talk over the machine's external
#   address); the proxy answers on --proxy-port;
# - the wrapper does not notice a dead server, so we watch the server process while waiting;
# - restarting on the same data folder right away is flaky upstream (milvus #26815, #29489):
#   each start uses a fresh data folder.
# Status lines go to stderr; only the export lines go to stdout.
set -euo pipefail
PORT="${MILVUS_PORT:-19530}"
VENV="${MILVUS_VENV:-/tmp/milvus-venv}"
DIR="${MILVUS_DATA_DIR:-/tmp/latentsight-milvus-$PORT}"
WAIT="${MILVUS_START_TIMEOUT:-300}"
AUTH="${MILVUS_AUTH:-1}"  # 1: authorization on (root:Milvus), so the token path is exercised
PY="${PYTHON:-python3}"

exports() {
  echo "export LATENTSIGHT_TEST_MILVUS_URI=http://127.0.0.1:$PORT"
  [ "$AUTH" = 1 ] && echo "export LATENTSIGHT_MILVUS_TOKEN=root:Milvus"
  return 0
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if [ -f "$DIR.pid" ] && kill -0 "$(cat "$DIR.pid")" 2>/dev/null && port_open; then
  echo "milvus already running (wrapper pid $(cat "$DIR.pid"), $DIR)" >&2
  exports
  exit 0
fi

if ! [ -x "$VENV/bin/milvus-server" ]; then
  echo "installing milvus==2.3.5 into $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check milvus==2.3.5 >&2
fi
[ "${MILVUS_INSTALL_ONLY:-0}" = 1 ] && exit 0  # .ci/run installs first, starts in its netns

rm -rf "$DIR"
mkdir -p "$DIR"
args=(--data "$DIR" --proxy-port "$PORT" --extra-config common.gracefulStopTimeout=10)
# (the wrapper parses bool options with bool(str): pass the flag only to turn it on)
[ "$AUTH" = 1 ] && args+=(--authorization-enabled true)
for part in rootCoord proxy queryCoord queryNode indexNode dataCoord dataNode; do
  args+=(--extra-config "$part.ip=127.0.0.1")
done
PYTHONUNBUFFERED=1 setsid "$VENV/bin/milvus-server" "${args[@]}" >"$DIR.wrapper.log" 2>&1 < /dev/null &
WRAPPER=$!
echo "$WRAPPER" >"$DIR.pid"

start=$(date +%s)
server=""
while :; do
  if ! kill -0 "$WRAPPER" 2>/dev/null; then
    echo "milvus wrapper exited; last lines of its logs:" >&2
    tail -n 20 "$DIR.wrapper.log" "$DIR"/logs/milvus-stderr.log 2>/dev/null >&2 || true
    exit 1
  fi
  [ -z "$server" ] && server="$(pgrep -P "$WRAPPER" -f 'milvus run standalone' || true)"
  if [ -n "$server" ] && ! kill -0 "$server" 2>/dev/null; then
    echo "milvus server (pid $server) died while starting; last lines of its log:" >&2
    tail -n 20 "$DIR"/logs/milvus-stderr.log "$DIR"/logs/milvus-stdout.log >&2 || true
    kill -INT "$WRAPPER" 2>/dev/null || true
    exit 1
  fi
  if [ -n "$server" ] && port_open && grep -q "Welcome to use Milvus" "$DIR.wrapper.log"; then
    break
  fi
  if [ $(( $(date +%s) - start )) -ge "$WAIT" ]; then
    echo "milvus did not answer on 127.0.0.1:$PORT within ${WAIT}s; see $DIR/logs" >&2
    kill -INT "$WRAPPER" 2>/dev/null || true
    exit 1
  fi
  sleep 2
done
echo "$server" >"$DIR.server.pid"
echo "milvus 2.3.5 up on 127.0.0.1:$PORT in $(( $(date +%s) - start ))s (wrapper $WRAPPER, server $server, data $DIR)" >&2
exports
