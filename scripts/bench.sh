#!/usr/bin/env bash
# The load benchmark of docs/benchmarks.md, from a fresh clone: virtualenv, install (.[test,embedded] and
# the benchmark's own packages), the Node.js peer's packages (`npm ci --prefix bench/peer_node` from
# bench/peer_node/package-lock.json when its node_modules is missing; needs node and npm), Postgres and
# Redis, then notify-server against python-socketio and Node.js socket.io under the same load (3 runs,
# ~30-35 minutes on 2 cores), then the table and the plot.
#
#   scripts/bench.sh                      # everything: memory at 10,000 sockets, ladder, flood, fan-out, scale
#   RUNS=1 scripts/bench.sh --quick       # a smoke test (~5 minutes); other arguments go to bench.load
#   OUT=/tmp/b PLOT=/tmp/b/plot.png scripts/bench.sh ...   # elsewhere than the committed results
#   scripts/bench.sh --systems notify,sio  # without the Node.js peer (no node/npm needed then)
#
# Results: $OUT/latest.json (raw), $OUT/latest.md (table), $PLOT; by default bench/results/ and
# docs/latency_vs_rate.png (the files docs/benchmarks.md quotes).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
# The `bench` extra: the reference peer and its wire format, the plot, the event loop of the load
# client and producer, and the profiler used for the "where the time goes" sections.
.venv/bin/python -m pip install --quiet -e '.[bench]'  # uvloop comes with the service itself
# The Node.js peer (socket.io, @socket.io/redis-adapter, node-redis), at the versions of its lock file.
if [[ " $* " != *" --systems"* || " $* " == *node* ]] && [ ! -d bench/peer_node/node_modules ]; then
  npm ci --prefix bench/peer_node --no-audit --no-fund
fi
scripts/test-services.sh  # the machine's Postgres and Redis (bench/stack.py falls back to embedded ones)

# 10,000 sockets need ~10,000 descriptors in the server and ~5,000 in each client process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
  echo "warning: open-file limit $(ulimit -n); the 10,000-connection memory scenario needs ~12,000" >&2
fi

OUT=${OUT:-bench/results}
PLOT=${PLOT:-docs/latency_vs_rate.png}
mkdir -p "$OUT"
.venv/bin/python -m bench.load --runs "${RUNS:-3}" --out "$OUT/latest.json" "$@" | tee "$OUT/latest.log"
.venv/bin/python -m bench.report "$OUT/latest.json" --plot "$PLOT" | tee "$OUT/latest.md"
