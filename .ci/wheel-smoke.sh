#!/usr/bin/env bash
# The wheel as a user gets it: build it, `pip install` it into a fresh venv (no editable
# install, no Makefile, nothing from this checkout on the path), then from that install run
# `latentsight --help`, ingest -> train -> index build -> search on a few generated images,
# and the dashboard's health check. pip's cache keeps the repeated install quick.
#
#   .ci/wheel-smoke.sh            # uses python3; WORK=/tmp/x keeps the venv for inspection
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
t0=$(date +%s)
step() { echo "wheel-smoke [$(( $(date +%s) - t0 ))s]: $*"; }

step "building the wheel"
rm -rf "$WORK/dist"
"$PYTHON" -m pip wheel --no-deps --no-build-isolation -q -w "$WORK/dist" . 2>/dev/null \
  || "$PYTHON" -m pip wheel --no-deps -q -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/latentsight-*.whl)
top=$(unzip -p "$WHEEL" '*.dist-info/top_level.txt' | tr -d '\r')
[ "$top" = "latentsight" ] || { echo "top_level.txt lists: $top (want only latentsight)"; exit 1; }

step "installing $(basename "$WHEEL") into a fresh venv"
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/pip" install -q "$WHEEL"
faiss_dists=$("$V/pip" list 2>/dev/null | grep -ci '^faiss' || true)
[ "$faiss_dists" = 1 ] || { "$V/pip" list | grep -i faiss; echo "want one faiss"; exit 1; }
"$V/pip" check

# Run from an empty folder so nothing of the checkout can be imported.
RUN="$WORK/run"; rm -rf "$RUN"; mkdir -p "$RUN"; cd "$RUN"
export LATENTSIGHT_HOME="$RUN/home" PYTHONPATH="" OMP_NUM_THREADS=1
"$V/python" - <<'EOF'
import latentsight.index, pathlib
assert "site-packages" in latentsight.index.__file__, latentsight.index.__file__
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for label, period in (("stripes", 4), ("dots", 8)):
    d = pathlib.Path("data") / label
    d.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        x = np.indices((32, 32)).sum(0) if label == "stripes" else np.indices((32, 32))[0] * 0
        img = (np.sin((x + i) * np.pi / period) * 100 + 128 + rng.normal(0, 10, (32, 32)))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{label}{i}.png")
EOF

step "latentsight --help"
"$V/latentsight" --help >/dev/null
step "ingest"
"$V/latentsight" -q ingest data --labels-from-folders --workers 0
step "train"
"$V/latentsight" -q train --model ae --epochs 1 --image-size 32 --latent-dim 8 --width 8 \
  --depth 2 --batch-size 8 --name smoke --device cpu
step "index build"
"$V/latentsight" -q index build --device cpu --workers 0
step "search"
hits=$("$V/latentsight" -q search data/dots/dots0.png --k 3 --json --device cpu)
echo "$hits" | "$V/python" -c 'import json, sys; h = json.load(sys.stdin); assert len(h) == 3, h'

step "dashboard health check"
port=$("$V/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); \
print(s.getsockname()[1])')
# its own session, so that the whole group (latentsight + streamlit) can be stopped at once;
# a background job of a script ignores SIGINT, so it gets SIGTERM.
setsid "$V/latentsight" dashboard --host 127.0.0.1 --port "$port" >"$WORK/dashboard.log" 2>&1 &
pid=$!
ok=""
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/_stcore/health" 2>/dev/null | grep -q ok; then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
kill -TERM -- "-$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
[ -n "$ok" ] || { cat "$WORK/dashboard.log"; echo "dashboard health check failed"; exit 1; }
step "ok"
[ -n "${KEEP:-}" ] || rm -rf "$WORK/venv"  # about 6 GB (torch with CUDA libraries)
