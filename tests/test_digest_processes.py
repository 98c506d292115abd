"""Digests against real `notify-server worker` processes (issue 19): a worker SIGKILLed mid-window, and a
Postgres restart across a window's end, still give exactly one digest of the held events.

Figures (how late after its window's end each digest was stored) are printed (`-s`) and written up in
docs/reliability.md; nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from redis.asyncio import Redis

from notify_server.core.settings import Settings
from notify_server.ingest.producer import enqueue_event
from tests import test_faults
from tests.conftest import REPO_ROOT
from tests.test_faults import PrivatePostgres, Processes, counters_match_rows, eventually, kill_group, report

# test_faults' fixtures, used here too: its real processes and its private Postgres.
processes = test_faults.processes
private_postgres = test_faults.private_postgres

WINDOW_S = 4.0


def document(event_id: str, user_id: str = "alice", requester: str = "Dr. Jones") -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "DOCUMENT_REQUESTED", "recipients": [{"user_id": user_id}],
            "data": {"requester_name": requester, "document_name": "x-ray", "request_id": event_id}}


def query(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def notifications(database_url: str, user_id: str = "alice") -> list[tuple[Any, ...]]:
    """(title, metadata, created_at) of the user's rows, oldest first."""
    return query(database_url, "SELECT title, metadata, created_at FROM notifications WHERE recipient_id = %s"
                               " ORDER BY seq", (user_id,))


def held(database_url: str) -> int:
    return int(query(database_url, "SELECT count(*) FROM digest_held WHERE delivered_at IS NULL")[0][0])


@pytest.fixture
def digest_env(tmp_path: Path) -> dict[str, str]:
    """The repository's config with a short DOCUMENT_REQUESTED window, and workers that look often."""
    config = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    config["templates"]["DOCUMENT_REQUESTED"]["digest_window_s"] = WINDOW_S
    config["digests"]["poll_interval_s"] = 0.1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"NOTIFY_CONFIG": str(path), "NOTIFY_WORKER_POLL_DELAY_S": "0.01"}


async def send(redis_client: Redis, settings: Settings, *events: dict[str, Any]) -> None:
    for event in events:
        assert await enqueue_event(redis_client, event, queue_name=settings.queues.events) is not None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("after_kill", ["another-worker-runs", "a-worker-starts-after-the-window"])
async def test_done_when_a_worker_killed_mid_window_still_gives_exactly_one_digest(
    processes: Processes, digest_env: dict[str, str], redis_client: Redis, settings: Settings, after_kill: str,
) -> None:
    url = settings.database.url
    doomed = processes.start("worker-doomed", "worker", **digest_env)
    if after_kill == "another-worker-runs":
        processes.start("worker-other", "worker", **digest_env)

    await send(redis_client, settings, document("doc-1"))
    await eventually(lambda: _rows(url, 1), 30, "the first event stored at once")
    await send(redis_client, settings, *(document(f"doc-{n}", requester=f"Dr. {n}") for n in range(2, 6)))
    await eventually(lambda: _held(url, 4), 30, "four events held")
    (due_at,) = query(url, "SELECT due_at FROM digest_windows WHERE user_id = 'alice'")[0]

    kill_group(doomed, signal.SIGKILL)  # mid-window: it ends WINDOW_S after the first event
    assert notifications(url)[-1][1] == {}, "the window ended before the kill: the test missed its moment"
    if after_kill == "a-worker-starts-after-the-window":
        while query(url, "SELECT clock_timestamp() < %s", (due_at,))[0][0]:
            await asyncio.sleep(0.1)
        processes.start("worker-new", "worker", **digest_env)

    await eventually(lambda: _rows(url, 2), 60, "the digest stored", step_s=0.1)
    await asyncio.sleep(1.0)  # several more rounds of every live worker's digest loop: still one
    rows = notifications(url)
    assert [(title, metadata) for title, metadata, _ in rows] == [
        ("Document needed", {}), ("4 more documents needed", {"digest_count": 4})]
    assert held(url) == 0
    assert counters_match_rows(url) == []
    report(f"worker SIGKILL mid-window, {after_kill}", window_s=WINDOW_S,
           digest_after_window_end_s=round((rows[1][2] - due_at).total_seconds(), 2))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_postgres_restart_across_a_window_end_gives_exactly_one_digest(
    processes: Processes, digest_env: dict[str, str], private_postgres: PrivatePostgres, redis_client: Redis,
    settings: Settings,
) -> None:
    url = private_postgres.url
    worker = processes.start("worker", "worker", **digest_env, NOTIFY_DATABASE_URL=url,
                             NOTIFY_WORKER_RETRY_BACKOFF_MAX_S="1")
    await send(redis_client, settings, document("doc-1"))
    await eventually(lambda: _rows(url, 1), 30, "the first event stored at once")
    await send(redis_client, settings, *(document(f"doc-{n}") for n in range(2, 6)))
    await eventually(lambda: _held(url, 4), 30, "four events held")
    (due_at,) = query(url, "SELECT due_at FROM digest_windows WHERE user_id = 'alice'")[0]

    private_postgres.stop()
    stopped = time.monotonic()
    await send(redis_client, settings, document("doc-6"))  # arrives while Postgres is away
    await asyncio.sleep(WINDOW_S + 1.0)  # the window ends while Postgres is away
    private_postgres.start()
    back = time.monotonic()

    await eventually(lambda: _rows(url, 3), 60, "the digest and the event sent meanwhile stored", step_s=0.1)
    await asyncio.sleep(1.0)
    rows = notifications(url)
    assert sorted(metadata.get("digest_count", 0) for _, metadata, _ in rows) == [0, 0, 4]
    assert held(url) == 0
    assert counters_match_rows(url) == []
    assert worker.popen.poll() is None
    digest_at = next(created for _, metadata, created in rows if metadata)
    report("Postgres restart across a window end", down_s=round(back - stopped, 1),
           digest_after_window_end_s=round((digest_at - due_at).total_seconds(), 2),
           stored_after_back_s=round(time.monotonic() - back, 1))


async def _rows(url: str, count: int) -> bool:
    return len(notifications(url)) >= count


async def _held(url: str, count: int) -> bool:
    return held(url) >= count
