#!/usr/bin/env bash
# Start a throwaway PostgreSQL on a loopback port as a non-root user and print its URL.
#   eval "$(.ci/start-postgres.sh)"   # exports LATENTSIGHT_TEST_PG_URL
# Needs Debian's postgresql package (apt-get install -y postgresql).
set -euo pipefail
PORT="${PGPORT:-54329}"
DIR="${PGDATA_DIR:-/tmp/latentsight-pg-$PORT}"
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" postgres
  RUN_AS=(runuser -u postgres --)
fi
if ! "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
  rm -rf "$DIR"
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR"
  "${RUN_AS[@]}" "$BIN/initdb" -D "$DIR" -U latentsight --auth=trust >/dev/null
  "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  "${RUN_AS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U latentsight latentsight
fi
echo "export LATENTSIGHT_TEST_PG_URL=postgresql+psycopg://latentsight@127.0.0.1:$PORT/latentsight"
