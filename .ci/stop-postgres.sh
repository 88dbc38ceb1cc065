#!/usr/bin/env bash
# Stop the PostgreSQL that .ci/start-postgres.sh started (same PGPORT / PGDATA_DIR).
set -uo pipefail
PORT="${PGPORT:-54329}"
DIR="${PGDATA_DIR:-/tmp/latentsight-pg-$PORT}"
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
RUN_AS=()
[ "$(id -u)" = 0 ] && RUN_AS=(runuser -u postgres --)
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR" -m fast -w stop >/dev/null 2>&1 || true
echo "postgresql on port $PORT stopped" >&2
