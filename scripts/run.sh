#!/usr/bin/env bash
# First run from a fresh clone: virtualenv, install, then `notify-server dev` (embedded Postgres and
# Redis unless NOTIFY_DATABASE_URL / NOTIFY_REDIS_URL are set, a server node, a worker, the demo page).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/notify-server dev "$@"
