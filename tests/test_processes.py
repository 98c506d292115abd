"""The real commands as separate processes: two `serve` nodes, one `worker`, `emit` from the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from notify_server.storage.sessions import SessionStore
from notify_server.transport.presence import Presence
from tests.processes import REPO_ROOT, Process, free_port, wait_http_ok


@pytest.fixture
def stack(cli_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, object]]:
    env = dict(cli_env, NOTIFY_WORKER_POLL_DELAY_S="0.01", NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S="2")
    ports = [free_port(), free_port()]
    processes = [
        Process(["serve", "--port", str(port)], dict(env, NOTIFY_SERVER_NODE_ID=f"node-{i}"), tmp_path / f"serve{i}.log")
        for i, port in enumerate(ports)
    ]
    processes.append(Process(["worker"], env, tmp_path / "worker.log"))
    try:
        yield {"ports": ports, "processes": processes, "env": env}
    finally:
        for process in processes:
            process.stop()


async def test_two_tabs_on_two_node_processes_both_receive_and_other_user_gets_nothing(
    stack: dict, sessions: SessionStore, python: str
) -> None:
    ports, processes, env = stack["ports"], stack["processes"], stack["env"]
    for port, process in zip(ports, processes):
        await wait_http_ok(f"http://127.0.0.1:{port}/readyz", process)
    alice = (await sessions.create("alice", 60)).token
    bob = (await sessions.create("bob", 60)).token
    async with aiohttp.ClientSession() as http:
        tab_a = await http.ws_connect(f"http://127.0.0.1:{ports[0]}/ws/notifications", params={"token": alice})
        tab_b = await http.ws_connect(f"http://127.0.0.1:{ports[1]}/ws/notifications", params={"token": alice})
        other = await http.ws_connect(f"http://127.0.0.1:{ports[1]}/ws/notifications", params={"token": bob})
        for ws in (tab_a, tab_b, other):
            first = await ws.receive_json(timeout=5)
            assert (first["type"], first["data"]["count"]) == ("unread_count", 0)

        emitted = subprocess.run(
            [python, "-m", "notify_server", "emit", "CLAIM_REJECTED", "--to", "alice",
             "--data", json.dumps({"provider_name": "Dr. Smith", "claim_id": "abc123"})],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
        )
        assert emitted.returncode == 0, emitted.stderr
        for ws in (tab_a, tab_b):
            frame = await ws.receive_json(timeout=10)
            assert frame["type"] == "notification"
            assert frame["data"]["body"] == "Your claim for Dr. Smith has been rejected."
            count = await ws.receive_json(timeout=5)
            assert (count["type"], count["data"]["count"]) == ("unread_count", 1)
            assert count["data"]["version"] > first["data"]["version"]
        with pytest.raises(TimeoutError):
            await other.receive(timeout=0.5)
        for ws in (tab_a, tab_b, other):
            await ws.close()


async def test_serve_has_no_dev_endpoints(stack: dict) -> None:
    port, process = stack["ports"][0], stack["processes"][0]
    await wait_http_ok(f"http://127.0.0.1:{port}/healthz", process)
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/"), ("POST", "/dev/session"), ("POST", "/dev/emit"), ("GET", "/dev/templates"),
                             ("GET", "/demo/demo.js")):
            async with http.request(method, f"http://127.0.0.1:{port}{path}", json={"user_id": "x"}) as response:
                assert response.status in (404, 405), (method, path, response.status)


async def test_sigterm_closes_sockets_with_1001_clears_presence_and_exits(
    stack: dict, sessions: SessionStore, redis_client
) -> None:
    port, process = stack["ports"][0], stack["processes"][0]
    await wait_http_ok(f"http://127.0.0.1:{port}/healthz", process)
    token = (await sessions.create("carol", 60)).token
    presence = Presence(redis_client, ttl_s=30)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications", params={"token": token})
        await ws.receive_json(timeout=5)
        assert await presence.nodes_for_users(["carol"]) == {"node-0": ["carol"]}
        process.signal(signal.SIGTERM)
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == 1001
    assert process.wait(timeout_s=10) == 0
    assert await presence.nodes_for_users(["carol"]) == {}
    assert "Traceback" not in process.output()


def test_python_m_notify_server_help_lists_every_command(python: str) -> None:
    result = subprocess.run([python, "-m", "notify_server", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0
    for command in ("migrate", "serve", "worker", "dev", "session", "emit", "check"):
        assert command in result.stdout
