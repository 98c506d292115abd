#!/usr/bin/env bash
# The whole test suite from a fresh clone: virtualenv, install, services, throw-away database, pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k websocket).
# `scripts/test.sh --fast`: the quick loop for the people who work on it — no fault, load, browser or
# process-spawning tests, on two pytest-xdist workers (each its own database and Redis db): under a
# minute here. CI runs everything, one test at a time (the fault tests measure timings).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow and not browser and not process" -n 2 "$@"
fi
scripts/bootstrap.sh
scripts/test-services.sh
# The type and lint gate (mypy.ini, ruff.toml): a regression fails the run before any test.
.venv/bin/ruff check --quiet notify_server workers
.venv/bin/mypy --no-error-summary
exec .venv/bin/python -m pytest "$@"
