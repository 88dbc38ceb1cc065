#!/usr/bin/env bash
# Start a local Ray cluster on this machine: a head and one worker node (a second raylet),
# and print its address. Clients reach it on 127.0.0.1, but Ray itself turns
# `--node-ip-address 127.0.0.1` into the machine's address on Linux and its raylets listen
# on every interface: keep the machine's ports firewalled (see docs/scaling.md).   eval "$(.ci/start-ray.sh)"   # exports LATENTSIGHT_TEST_RAY_ADDRESS
# Stop it with: .ci/stop-ray.sh (ray stop). Needs `pip install 'latentsight[ray]'`.
# Worker ports are kept to 30000-30999, clear of the Milvus server's (13333, 19529-19531, 2112x).
set -euo pipefail
PORT="${RAY_PORT:-6380}"
RAY="${RAY_BIN:-ray}"
CPUS="${RAY_NODE_CPUS:-1}"
common=(--node-ip-address 127.0.0.1 --num-cpus "$CPUS" --num-gpus 0 --disable-usage-stats
        --min-worker-port 30000 --max-worker-port 30999)
"$RAY" start --head --port "$PORT" --include-dashboard false \
  --object-store-memory $((200 * 1024 * 1024)) "${common[@]}" >&2
"$RAY" start --address "127.0.0.1:$PORT" --object-store-memory $((200 * 1024 * 1024)) \
  "${common[@]}" >&2
echo "export LATENTSIGHT_TEST_RAY_ADDRESS=127.0.0.1:$PORT"
