#!/usr/bin/env bash
# Stop the server .ci/start-milvus.sh started: SIGINT to the wrapper (it stops the server),
# then SIGTERM/SIGKILL to the server process if it lingers. Removes the data folder.
set -uo pipefail
PORT="${MILVUS_PORT:-19530}"
DIR="${MILVUS_DATA_DIR:-/tmp/latentsight-milvus-$PORT}"
wrapper="$(cat "$DIR.pid" 2>/dev/null || true)"
server="$(cat "$DIR.server.pid" 2>/dev/null || true)"
[ -n "$wrapper" ] && kill -INT "$wrapper" 2>/dev/null
for _ in $(seq 1 30); do
  alive=0
  for p in $wrapper $server; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 1
done
for p in $server $wrapper; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
rm -rf "$DIR" "$DIR.pid" "$DIR.server.pid" "$DIR.wrapper.log"
echo "milvus on port $PORT stopped" >&2
