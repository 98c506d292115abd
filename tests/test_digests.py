"""Digests (issue 19): the first event of a burst at once, the rest held in Postgres and delivered as ONE
notification when the window ends — counted, pushed and listed like any other.

Most tests end a window by moving its end into the past (the rows' due_at), not by waiting; one runs a
real worker's digest loop against a short window. Killed workers and a Postgres restart are in
tests/test_digest_processes.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notify_server.core.settings import ConfigError, Settings, settings_from_mapping
from notify_server.ingest.events import parse_event
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.db import Database
from notify_server.storage.digests import DigestCandidate, DigestStore
from notify_server.storage.preferences import PreferenceStore
from notify_server.storage.sessions import SessionStore
from tests.fakes import assert_nothing_arrives, connect_and_count, receive_frame, start_node
from tests.helpers import run_worker_burst
from tests.test_api import bearer
from tests.test_pipeline import job_result
from workers.consumer import EventConsumer
from workers.context import WorkerContext
from workers.digests import deliver_due_digests

DOC = "DOCUMENT_REQUESTED"


def document(event_id: str, *users: str, requester: str = "Dr. Jones", name: str = "x-ray") -> dict[str, Any]:
    return {"event_id": event_id, "event_type": DOC, "recipients": [{"user_id": u} for u in users],
            "data": {"requester_name": requester, "document_name": name, "request_id": event_id}}


async def process(redis_client: Redis, settings: Settings, *events: dict[str, Any]) -> list[dict[str, Any]]:
    for event in events:
        assert await enqueue_event(redis_client, event, queue_name=settings.queues.events) is not None
    await run_worker_burst(settings)
    return [await job_result(redis_client, settings, event["event_id"]) for event in events]


async def rows_of(db_pool: Any, user_id: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(event_type, title, body, metadata) of the user's notifications, oldest first."""
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT event_type, title, body, metadata FROM notifications WHERE recipient_id = %s"
                          " ORDER BY seq", (user_id,))
        return [tuple(row) for row in await cur.fetchall()]  # type: ignore[misc]


async def end_windows(db_pool: Any) -> None:
    """Every window ends now: its end (and its held events' end) moved an hour back."""
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("UPDATE digest_windows SET due_at = due_at - interval '1 hour' WHERE due_at > '-infinity';"
                          " UPDATE digest_held SET due_at = due_at - interval '1 hour'")


async def deliver(settings: Settings) -> int:
    """What one round of a worker's digest loop does; digests stored."""
    context = WorkerContext.build(settings)
    try:
        delivered = await deliver_due_digests(context)
    finally:
        await context.close()
    return sum(len(event.notifications) for event in delivered.stored)


@pytest.fixture
async def client(aiohttp_client, settings: Settings) -> TestClient:
    return await start_node(aiohttp_client, settings)


@pytest.fixture
async def alice(sessions: SessionStore) -> str:
    return (await sessions.create("alice", ttl_s=3600)).token


# ---------------------------------------------------------------- the config check


def config_with(**keys: Any) -> dict[str, Any]:
    return {"templates": {"EVT": {"title": "New {thing}", "body": "{who} sent {thing}", **keys}}}


@pytest.mark.parametrize(("keys", "message"), [
    ({"digest_window_s": 60}, "templates.EVT.digest_title: required when digest_window_s is more than 0"),
    ({"digest_window_s": 60, "digest_title": "{count} new"}, "templates.EVT.digest_body: required"),
    ({"digest_window_s": 60, "digest_title": "{count} new", "digest_body": "latest from {whom}"},
     "templates.EVT.digest_body: placeholder {whom} cannot be filled"),
    ({"digest_title": "{count} from {url_part}", "digest_body": "b", "action_url": "/x/{url_part}"},
     "templates.EVT.digest_title: placeholder {url_part} cannot be filled"),
    ({"digest_window_s": -1}, "templates.EVT.digest_window_s:"),
    ({"category": "no spaces"}, "templates.EVT.category:"),
    ({"critical": "sometimes"}, "templates.EVT.critical:"),
    ({"digest_windows": 60}, "templates.EVT.digest_windows: Unknown field."),
], ids=["window-without-title", "window-without-body", "unfillable-placeholder", "action-url-name-not-fillable",
        "negative-window", "bad-category", "bad-critical", "unknown-key"])
def test_the_config_check_refuses_a_bad_digest_or_key_in_one_line_naming_it(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping(config_with(**keys), environ={})

    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_digest_may_use_count_and_the_names_of_title_and_body() -> None:
    settings = settings_from_mapping(config_with(
        digest_window_s=30, digest_title="{count} × {thing}", digest_body="the latest from {who}", category="inbox",
        critical=True), environ={})

    template = settings.templates["EVT"]
    assert (template.category, template.critical, template.digest_window_s, template.digests) == (
        "inbox", True, 30, True)
    assert template.render_digest(template.digest_values({"who": "Ann", "thing": "a file", "x": 1}), 3) == (
        "3 × a file", "the latest from Ann")
    defaults = settings_from_mapping(config_with(), environ={}).templates["EVT"]
    assert (defaults.category, defaults.critical, defaults.digest_window_s, defaults.digests) == ("general", False, 0,
                                                                                                    False)


# ---------------------------------------------------------------- the window


async def test_done_when_the_first_event_comes_at_once_and_four_more_become_one_digest(
    client: TestClient, alice: str, settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    tab, _ = await connect_and_count(client, alice)

    (first,) = await process(redis_client, settings, document("doc-1", "alice"))
    assert first == {"status": "stored", "recipients": 1, "stored": 1, "muted": 0, "held": 0}
    frame = await receive_frame(tab)
    assert frame["type"] == "notification" and frame["data"]["title"] == "Document needed"
    assert (await receive_frame(tab))["data"]["count"] == 1

    held = await process(redis_client, settings, document("doc-2", "alice"), document("doc-3", "alice"))
    held += await process(redis_client, settings, document("doc-4", "alice"),
                          document("doc-5", "alice", requester="Dr. Last", name="referral"))
    assert [(r["stored"], r["held"]) for r in held] == [(0, 1)] * 4
    await assert_nothing_arrives(tab, 0.3)
    assert await deliver(settings) == 0  # the window is still open

    await end_windows(db_pool)
    assert await deliver(settings) == 1

    digest = await receive_frame(tab)
    assert digest["type"] == "notification"
    assert digest["data"]["title"] == "4 more documents needed"
    assert digest["data"]["body"] == "4 more documents were requested, the latest by Dr. Last: your referral."
    assert digest["data"]["metadata"] == {"digest_count": 4}
    assert digest["data"]["action_url"] == "/documents/upload?request=doc-5"
    assert digest["data"]["priority"] == "HIGH"
    assert (await receive_frame(tab))["data"]["count"] == 2
    assert await deliver(settings) == 0  # exactly one
    assert [row[1] for row in await rows_of(db_pool, "alice")] == ["Document needed", "4 more documents needed"]

    # Listed, counted and marked read like any notification.
    listed = await (await client.get("/api/notifications", headers=bearer(alice))).json()
    assert listed["items"][0]["metadata"] == {"digest_count": 4}
    read = await client.post(f"/api/notifications/{listed['items'][0]['notification_id']}/read", headers=bearer(alice))
    assert read.status == 200
    assert (await (await client.get("/api/notifications/unread-count", headers=bearer(alice))).json()) == {"count": 1}

    # The next event after the window starts a new one: delivered at once.
    (after,) = await process(redis_client, settings, document("doc-6", "alice"))
    assert (after["stored"], after["held"]) == (1, 0)


async def test_a_worker_ends_a_window_by_itself_on_time(settings: Settings, redis_client: Redis, db_pool: Any) -> None:
    """A real worker (the consumer with its digest loop), a 0.5 s window, no hand on the clock."""
    short = with_window(settings, 0.5)
    worker = EventConsumer(short, poll_delay=0.01, handle_signals=False)
    running = asyncio.get_running_loop().create_task(worker.main())
    try:
        for n in range(1, 4):
            await enqueue_event(redis_client, document(f"doc-{n}", "alice"), queue_name=short.queues.events)
        deadline = time.monotonic() + 15
        while len(await rows_of(db_pool, "alice")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await running
        await worker.close()

    assert [row[1] for row in await rows_of(db_pool, "alice")] == ["Document needed", "2 more documents needed"]
    assert worker.digest_loop is not None and worker.digest_loop.flushes > 0


def with_window(settings: Settings, window_s: float) -> Settings:
    templates = dict(settings.templates)
    templates[DOC] = dataclasses.replace(templates[DOC], digest_window_s=window_s)
    return dataclasses.replace(settings, templates=templates)


async def test_windows_are_per_recipient(settings: Settings, redis_client: Redis, db_pool: Any) -> None:
    await process(redis_client, settings, document("doc-1", "alice"))

    (both,) = await process(redis_client, settings, document("doc-2", "alice", "bob"))

    assert (both["stored"], both["held"]) == (1, 1)  # bob's first: at once; alice's second: held
    assert len(await rows_of(db_pool, "bob")) == 1


async def test_a_burst_in_one_batch_delivers_the_first_and_holds_the_rest(
    settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    results = await process(redis_client, settings, *(document(f"doc-{n}", "alice") for n in range(1, 5)))

    assert [(r["stored"], r["held"]) for r in results] == [(1, 0), (0, 1), (0, 1), (0, 1)]
    await end_windows(db_pool)
    assert await deliver(settings) == 1
    assert (await rows_of(db_pool, "alice"))[-1][3] == {"digest_count": 3}


async def test_other_types_are_not_held(settings: Settings, redis_client: Redis, db_pool: Any) -> None:
    claim = {"event_id": "c-{n}", "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "alice"}],
             "data": {"provider_name": "Dr. Smith", "claim_id": "abc"}}
    results = await process(redis_client, settings, *({**claim, "event_id": f"c-{n}"} for n in range(3)))

    assert [(r["stored"], "held" in r) for r in results] == [(1, False)] * 3


# ---------------------------------------------------------------- exactly one, whatever happens


async def test_retried_jobs_are_neither_delivered_twice_nor_counted_twice(
    settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    events = [document("doc-1", "alice"), document("doc-2", "alice")]
    await process(redis_client, settings, *events)

    for event in events:  # the producer sends them again (a retry after a timeout): new jobs, same events
        await redis_client.delete(f"arq:result:{event['event_id']}")
    again = await process(redis_client, settings, *events)

    assert [(r["stored"], r["held"]) for r in again] == [(0, 0), (0, 1)]
    await end_windows(db_pool)
    assert await deliver(settings) == 1
    await redis_client.delete("arq:result:doc-2")
    (late,) = await process(redis_client, settings, events[1])  # after its digest: still not delivered again
    assert (late["stored"], late["held"]) == (0, 1)
    assert [row[3] for row in await rows_of(db_pool, "alice")] == [{}, {"digest_count": 1}]


async def test_the_event_that_opened_a_window_is_delivered_at_once_when_its_job_runs_again(
    settings: Settings, redis_client: Redis, db: Database, db_pool: Any,
) -> None:
    """A worker that died between holding and storing: its retry is still the window's first event."""
    new = parse_event(document("doc-1", "alice"), settings.templates)
    assert await DigestStore(db, settings.templates).route([DigestCandidate(new, 600, {})]) == [set()]  # then "killed"

    (result,) = await process(redis_client, settings, document("doc-1", "alice"))

    assert (result["stored"], result["held"]) == (1, 0)


async def test_concurrent_flushes_deliver_exactly_one_digest(
    settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    await process(redis_client, settings, *(document(f"doc-{n}", "alice", "bob") for n in range(1, 6)))
    await end_windows(db_pool)

    counts = await asyncio.gather(*(deliver(settings) for _ in range(6)))

    assert sum(counts) == 2  # one for alice, one for bob
    for user in ("alice", "bob"):
        assert [row[3] for row in await rows_of(db_pool, user)] == [{}, {"digest_count": 4}]


async def test_a_flush_leaves_a_window_that_a_batch_holds_for_the_next_round(
    settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    await process(redis_client, settings, document("doc-1", "alice"), document("doc-2", "alice"))
    await end_windows(db_pool)

    async with db_pool.acquire() as conn, conn.cursor() as cur:
        async with cur.begin():  # as notify_digest_route holds it while deciding
            await cur.execute("SELECT 1 FROM digest_windows WHERE user_id = 'alice' FOR UPDATE")
            assert await deliver(settings) == 0
    assert await deliver(settings) == 1


async def test_a_user_who_turns_the_type_off_during_the_window_gets_no_digest(
    settings: Settings, redis_client: Redis, db: Database, db_pool: Any,
) -> None:
    await process(redis_client, settings, document("doc-1", "alice"), document("doc-2", "alice"),
                  document("doc-3", "alice"))
    preferences = PreferenceStore(db, settings.templates)
    await preferences.update("alice", {"categories": {"claims": {"in_app": False}}})
    await end_windows(db_pool)

    assert await deliver(settings) == 0
    assert await DigestStore(db, settings.templates).pending() == 0  # dropped, not kept for later
    await preferences.update("alice", {"categories": {"claims": {"in_app": None}}})
    (next_one,) = await process(redis_client, settings, document("doc-4", "alice"))
    assert (next_one["stored"], next_one["held"]) == (1, 0)
    assert len(await rows_of(db_pool, "alice")) == 2


async def test_a_muted_recipient_opens_no_window(
    settings: Settings, redis_client: Redis, db: Database, db_pool: Any,
) -> None:
    await PreferenceStore(db, settings.templates).update("alice", {"event_types": {DOC: {"in_app": False}}})

    results = await process(redis_client, settings, document("doc-1", "alice", "bob"), document("doc-2", "alice"))

    assert [(r["stored"], r["muted"], r["held"]) for r in results] == [(1, 1, 0), (0, 1, 0)]
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM digest_windows WHERE user_id = 'alice'")
        assert (await cur.fetchone())[0] == 0


async def test_delivered_rows_and_ended_windows_are_forgotten_later(
    settings: Settings, redis_client: Redis, db: Database, db_pool: Any,
) -> None:
    await process(redis_client, settings, document("doc-1", "alice"), document("doc-2", "alice"))
    await end_windows(db_pool)
    await deliver(settings)
    store = DigestStore(db, settings.templates)
    assert await store.prune() == 1  # the window, ended (an hour ago) and holding nothing any more
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM digest_held")
        assert (await cur.fetchone())[0] == 1  # delivered a moment ago: kept (a retried job would need it)

    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("UPDATE digest_held SET delivered_at = delivered_at - interval '2 days'")
    assert await store.prune() == 1
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT (SELECT count(*) FROM digest_held), (SELECT count(*) FROM digest_windows)")
        assert await cur.fetchone() == (0, 0)


async def test_a_type_that_left_the_config_still_gets_its_held_events_delivered(
    settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    await process(redis_client, settings, document("doc-1", "alice"), document("doc-2", "alice"))
    await end_windows(db_pool)
    without = dataclasses.replace(settings, templates={k: v for k, v in settings.templates.items() if k != DOC})

    assert await deliver(without) == 1
    assert (await rows_of(db_pool, "alice"))[-1][1:] == (DOC, "1 notifications", {"digest_count": 1})
