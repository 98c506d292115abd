"""`serve --processes N` and `worker --processes N` (issue 21): several supervised processes of one command.

Real processes: the parent `python -m notify_server serve --processes 2` and its children, on the test
stores. What a user of the flag relies on: one port, connections spread over the node processes (each
its own node id in presence), each process's metrics on its own port, a child that dies is started
again while the others keep their sockets, SIGTERM drains every child with 1001 and the group exits 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore
from notify_server.transport.presence import Presence
from tests.processes import Process, free_port, wait_http_ok
from tests.test_faults import enqueue_raw, event, eventually, stored_counts


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now (the per-process metrics ports)."""
    while True:
        first = free_port()
        held = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()


def started_pids(parent: Process, command: str) -> dict[int, int]:
    """{process index: pid of its latest start}, from the parent's log."""
    pids: dict[int, int] = {}
    for index, pid in re.findall(rf"{command} process (\d+) started \(pid (\d+)\)", parent.output()):
        pids[int(index)] = int(pid)
    return pids


async def node_id_on(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
        assert response.status == 200
        return str((await response.json())["node_id"])


async def wait_up(http: aiohttp.ClientSession, port: int, parent: Process, timeout_s: float = 30) -> None:
    await wait_http_ok(f"http://127.0.0.1:{port}/readyz", parent, timeout_s)


@pytest.mark.timeout(120)
async def test_serve_processes_2_spreads_sockets_over_two_nodes_restarts_a_dead_one_and_drains_all_on_sigterm(
    cli_env: dict[str, str], tmp_path: Path, sessions: SessionStore, redis_client: Any, settings: Settings
) -> None:
    metrics_port = free_ports(2)
    port = free_port()
    while port in (metrics_port, metrics_port + 1):
        port = free_port()
    env = dict(cli_env, NOTIFY_SERVER_NODE_ID="grp", NOTIFY_SERVER_METRICS_PORT=str(metrics_port),
               NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S="2", NOTIFY_PRESENCE_TTL_S="3")
    parent = Process(["serve", "--port", str(port), "--processes", "2"], env, tmp_path / "serve.log")
    users = [f"core-{n}" for n in range(40)]
    tokens = {user: (await sessions.create(user, 600)).token for user in users}
    presence = Presence(redis_client, ttl_s=3)
    try:
        async with aiohttp.ClientSession() as http:
            for own in (metrics_port, metrics_port + 1):
                await wait_up(http, own, parent)
            assert {await node_id_on(http, metrics_port), await node_id_on(http, metrics_port + 1)} == {
                "grp-0", "grp-1"}

            # One port, two node processes: 40 connections (one per user) land on both.
            sockets = {}
            for user in users:
                ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications", params={"token": tokens[user]})
                assert (await ws.receive_json(timeout=5))["type"] == "unread_count"
                sockets[user] = ws
            by_node = await presence.nodes_for_users(users)
            assert set(by_node) == {"grp-0", "grp-1"}, by_node
            assert sorted(u for held in by_node.values() for u in held) == sorted(users)

            # Each process's own /metrics counts its own sockets.
            open_counts = []
            for own in (metrics_port, metrics_port + 1):
                async with http.get(f"http://127.0.0.1:{own}/metrics") as response:
                    text = await response.text()
                open_counts.append(float(re.search(r"^notify_open_connections (\S+)$", text, re.M)[1]))  # type: ignore[index]
            assert sorted(open_counts) == sorted(float(len(held)) for held in by_node.values())

            # A child killed: the parent starts it again; the other child's sockets stay open.
            pids = started_pids(parent, "serve")
            os.kill(pids[1], signal.SIGKILL)
            killed = time.monotonic()
            await eventually(lambda: _restarted(parent, pids), 20, "node process 1 started again")
            await wait_up(http, metrics_port + 1, parent)
            restarted_s = time.monotonic() - killed
            assert await node_id_on(http, metrics_port + 1) == "grp-1"
            for user in by_node["grp-0"]:
                assert not sockets[user].closed
            survivors = [sockets[user] for user in by_node["grp-0"]]
            moved = []
            for user in by_node["grp-1"]:  # their sockets died with the process: they reconnect
                message = await sockets[user].receive(timeout=5)
                assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
                ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications", params={"token": tokens[user]})
                assert (await ws.receive_json(timeout=5))["type"] == "unread_count"
                moved.append(ws)

            # SIGTERM to the parent: every socket of every child gets 1001, the group exits 0.
            parent.signal(signal.SIGTERM)
            codes = []
            for ws in survivors + moved:
                message = await ws.receive(timeout=15)
                codes.append(message.data if message.type is WSMsgType.CLOSE else message.type)
        assert parent.wait(timeout_s=20) == 0, parent.output()
        assert codes == [1001] * len(codes)
        # What the drained processes held is cleared at once; what the killed one held lapses (ttl 3 s).
        await eventually(lambda: _nobody_present(presence, users), 5, "no presence left")
        assert "Traceback" not in parent.output()
        print(f"\n[figures] serve --processes 2: sockets per node {sorted(len(v) for v in by_node.values())}, "
              f"killed child back in {restarted_s:.2f}s")
    finally:
        parent.stop()


async def _nobody_present(presence: Presence, users: list[str]) -> bool:
    return await presence.nodes_for_users(users) == {}


def _restarted(parent: Process, before: dict[int, int]) -> Any:
    async def check() -> bool:
        return started_pids(parent, "serve").get(1, before[1]) != before[1]

    return check()


@pytest.mark.timeout(120)
async def test_worker_processes_2_run_two_workers_restart_a_dead_one_and_all_stop_on_sigterm(
    cli_env: dict[str, str], tmp_path: Path, settings: Settings, redis_client: Any
) -> None:
    metrics_port = free_ports(2)
    env = dict(cli_env, NOTIFY_WORKER_METRICS_PORT=str(metrics_port), NOTIFY_WORKER_POLL_DELAY_S="0.01")
    parent = Process(["worker", "--processes", "2"], env, tmp_path / "worker.log")
    try:
        for own in (metrics_port, metrics_port + 1):
            await wait_http_ok(f"http://127.0.0.1:{own}/readyz", parent)
        pids = started_pids(parent, "worker")
        assert len(set(pids.values())) == 2

        await enqueue_raw(redis_client, [event(f"wp-{n}", f"user-{n % 7}") for n in range(500)],
                          settings.queues.events)
        await eventually(lambda: _stored(settings.database.url, 500), 30, "500 events stored")

        os.kill(pids[0], signal.SIGKILL)
        await eventually(lambda: _worker_restarted(parent, pids), 20, "worker process 0 started again")
        await wait_http_ok(f"http://127.0.0.1:{metrics_port}/readyz", parent)
        await enqueue_raw(redis_client, [event(f"wp2-{n}", f"user-{n % 7}") for n in range(100)],
                          settings.queues.events)
        await eventually(lambda: _stored(settings.database.url, 600), 30, "the next 100 stored")

        parent.signal(signal.SIGTERM)
        assert parent.wait(timeout_s=30) == 0, parent.output()
        assert stored_counts(settings.database.url) == (600, 600)
        assert "Traceback" not in parent.output()
    finally:
        parent.stop()


async def _stored(database_url: str, n: int) -> bool:
    return stored_counts(database_url)[0] >= n


def _worker_restarted(parent: Process, before: dict[int, int]) -> Any:
    async def check() -> bool:
        return started_pids(parent, "worker").get(0, before[0]) != before[0]

    return check()


@pytest.mark.timeout(60)
async def test_serve_processes_on_a_port_taken_by_another_program_fails_at_once_with_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    taken = socket.create_server(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody may share it
    port = taken.getsockname()[1]
    try:
        parent = Process(["serve", "--port", str(port), "--processes", "2"], cli_env, tmp_path / "serve.log")
        try:
            code = await asyncio.to_thread(parent.wait, 30)
        finally:
            parent.stop()
    finally:
        taken.close()
    lines = [line for line in parent.output().splitlines() if line.startswith("notify-server:")]
    assert code == 1
    assert lines == [f"notify-server: cannot listen on 127.0.0.1:{port} (server.host/server.port): "
                     "Address already in use"], parent.output()
    assert "Traceback" not in parent.output()


@pytest.mark.timeout(60)
async def test_processes_must_be_a_positive_number_or_auto(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = Process(["serve", "--processes", "0"], cli_env, tmp_path / "bad.log")
    assert await asyncio.to_thread(bad.wait, 30) == 2
    bad.stop()
    assert "--processes: must be greater than 0" in bad.output()
    word = Process(["worker", "--processes", "many"], cli_env, tmp_path / "word.log")
    assert await asyncio.to_thread(word.wait, 30) == 2
    word.stop()
    assert "'many' is not a whole number" in word.output()
