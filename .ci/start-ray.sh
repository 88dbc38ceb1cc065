#!/usr/bin/env bash
# Start a local Ray cluster on loopback (one head node; its worker processes run the actors),
# and print its address.   eval "$(.ci/start-ray.sh)"   # exports LATENTSIGHT_TEST_RAY_ADDRESS
# Stop it with: .ci/stop-ray.sh (ray stop). Needs `pip install 'latentsight[ray]'`.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine mode: without it Ray replaces
# 127.0.0.1 with the machine's external address and listens on every interface; with it every
# Ray process binds and talks on 127.0.0.1 only (checked with `ss -ltnp`). That mode refuses a
# second node (`ray start --address`), so the cluster is one node with RAY_NODE_CPUS CPUs.
# Worker ports are kept to 30000-30999, clear of the Milvus server's (13333, 19529-19531, 2112x).
set -euo pipefail
PORT="${RAY_PORT:-6380}"
RAY="${RAY_BIN:-ray}"
CPUS="${RAY_NODE_CPUS:-2}"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
"$RAY" start --head --port "$PORT" --include-dashboard false \
  --object-store-memory $((300 * 1024 * 1024)) --node-ip-address 127.0.0.1 --num-cpus "$CPUS" \
  --num-gpus 0 --disable-usage-stats --min-worker-port 30000 --max-worker-port 30999 >&2
echo "export LATENTSIGHT_TEST_RAY_ADDRESS=127.0.0.1:$PORT"
echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
