#!/usr/bin/env bash
# Stop the local Ray cluster .ci/start-ray.sh started (every Ray process of this user).
"${RAY_BIN:-ray}" stop --force >&2 || true
