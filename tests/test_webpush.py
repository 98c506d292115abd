"""Web Push (issue 20), end to end: a real node, a real worker (its web push loop as production runs it),
real Postgres and Redis, and a push service on loopback that verifies the VAPID JWT and DECRYPTS every
message with the keys the test's "browser" made (tests/pushservice.py)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notify_server.core.metrics import WorkerMetrics
from notify_server.core.settings import DatabaseSettings, Settings
from notify_server.core.vapid_keys import application_server_key, b64url_decode, create_key_file, load_private_key
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.db import Database
from notify_server.storage.notifications import NewNotifications, Recipient
from notify_server.storage.push_subscriptions import PushSubscriptionStore
from notify_server.storage.sessions import SessionStore
from notify_server.transport import webpush_queue
from notify_server.transport.webpush_queue import WebPushQueue
from notify_server.transport.webpush_sender import WebPushSender
from notify_server.transport.webpush_vapid import VapidSigner
from tests.fakes import claim_rejected, connect_and_count, receive_frame, start_node
from tests.pushservice import BrowserSubscription, PushService
from workers.consumer import EventConsumer

PAYLOAD_KEYS = {"notification_id", "title", "body", "priority", "action_url", "event_type", "metadata", "created_at"}


@pytest.fixture
def clean_subscriptions(database_url: str, clean_stores: None) -> None:
    conn = psycopg2.connect(database_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DELETE FROM push_subscriptions")
    finally:
        conn.close()


@pytest.fixture
def vapid_key_file(tmp_path: Path) -> Iterator[tuple[str, str]]:
    path = str(tmp_path / "vapid.pem")
    key = create_key_file(path)
    yield path, application_server_key(key)


@pytest.fixture
async def push_service(vapid_key_file: tuple[str, str]) -> AsyncIterator[PushService]:
    async with PushService(vapid_key_file[1]).running() as service:
        yield service


@pytest.fixture
def push_settings(settings: Settings, vapid_key_file: tuple[str, str], push_service: PushService,
                  clean_subscriptions: None) -> Settings:
    return settings.replace(
        web_push={"enabled": True, "vapid_private_key_file": vapid_key_file[0], "subject": "mailto:ops@example.com",
                  "allowed_hosts": (push_service.origin,), "retry_after_max_s": 5.0, "timeout_s": 5.0},
        retention={"interval_s": 0},
    )


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[EventConsumer]:
    """`notify-server worker` as it runs in production (not a burst): its web push loop included."""
    worker = EventConsumer(settings, poll_delay=0.01, handle_signals=False)
    task = asyncio.get_running_loop().create_task(worker.main())
    try:
        yield worker
    finally:
        worker.stop()
        await task
        await worker.close()


async def subscribe(node: TestClient, token: str, subscription: BrowserSubscription) -> int:
    response = await node.post("/api/push/subscriptions", json=subscription.as_json(),
                               headers={"Authorization": "Bearer " + token})
    assert response.status in (200, 201), await response.text()
    return response.status


async def emit(redis_client: Redis, settings: Settings, event: dict[str, Any]) -> None:
    assert await enqueue_event(redis_client, event, queue_name=settings.queues.events) is not None


async def queue_drained(redis_client: Redis, settings: Settings, timeout_s: float = 10.0) -> None:
    """Until every queued web push batch has been handled (sent, given up or filtered) and acknowledged."""
    queue = WebPushQueue(redis_client, maxlen=settings.web_push.queue_maxlen)
    async with asyncio.timeout(timeout_s):
        while await queue.depth() or await redis_client.zcard(settings.queues.events):
            await asyncio.sleep(0.02)


async def subscription_count(db_pool: Any, user_id: str) -> int:
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM push_subscriptions WHERE user_id = %s", (user_id,))
        return int((await cur.fetchone())[0])


async def queued_push(db: Any, repository: Any, redis_client: Redis, browser: BrowserSubscription, user_id: str,
                      event_id: str) -> WebPushQueue:
    """`user_id` subscribed with `browser`, one notification of theirs stored, and queued for web push as
    the pipeline queues it (nothing sent yet)."""
    keys = browser.as_json()["keys"]
    await PushSubscriptionStore(db).subscribe(user_id, browser.endpoint, b64url_decode(keys["p256dh"]),
                                              b64url_decode(keys["auth"]), None, keep=10)
    (stored,) = await repository.store_events([NewNotifications(
        event_id, "COMMENT_ADDED", "t", "b", "LOW", None, {}, [Recipient(user_id)])])
    queue = WebPushQueue(redis_client, maxlen=1000)
    await queue.ensure_group()
    await queue.enqueue(stored.notifications)
    return queue


def results(worker: EventConsumer) -> dict[str, float]:
    return {sample.labels["result"]: sample.value for metric in worker.metrics.web_push.collect()
            for sample in metric.samples if sample.name.endswith("_total")}


# ---------------------------------------------------------------- delivery


async def test_an_away_user_gets_the_frame_as_a_push_that_the_service_verifies_and_decrypts(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    alice = await sessions.create("alice", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    browser = push_service.subscribe()
    assert await subscribe(node, alice.token, browser) == 201

    async with running_worker(push_settings):
        await emit(redis_client, push_settings, claim_rejected(
            "wp-1", {"user_id": "alice", "email": "alice.private@example.com"}, metadata={"claim": "abc123"}))
        (delivered,) = await push_service.wait_for(1)

    assert push_service.refused == []
    message = delivered.message
    assert message["type"] == "notification"
    assert set(message["data"]) == PAYLOAD_KEYS
    assert message["data"]["title"] == "Claim Rejected"
    assert message["data"]["body"] == "Your claim for Dr. Smith has been rejected."
    assert message["data"]["action_url"] == "/claims/abc123"
    assert message["data"]["metadata"] == {"claim": "abc123"}
    text = orjson.dumps(message).decode()
    assert "alice" not in text and "wp-1" not in text  # no email, no recipient id, no event id
    assert delivered.urgency == "normal"  # HIGH
    assert 0 < delivered.ttl <= push_settings.web_push.ttl_s
    listed = await (await node.get("/api/notifications", headers={"Authorization": "Bearer " + alice.token})).json()
    assert listed["items"][0]["notification_id"] == message["data"]["notification_id"]


async def test_a_user_with_a_tab_open_gets_the_websocket_frame_and_no_push(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    here = await sessions.create("here", ttl_s=3600)
    away = await sessions.create("away", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    here_browser, away_browser = push_service.subscribe(), push_service.subscribe()
    await subscribe(node, here.token, here_browser)
    await subscribe(node, away.token, away_browser)
    tab, _ = await connect_and_count(node, here.token)

    async with running_worker(push_settings):
        # One event to both: one queued batch, filtered once, before any of its messages is sent.
        await emit(redis_client, push_settings, claim_rejected("wp-tab", "here", "away"))
        frame = await receive_frame(tab)
        await push_service.wait_for(1)
        await queue_drained(redis_client, push_settings)

    assert frame["type"] == "notification"
    assert len(push_service.delivered_to(away_browser)) == 1
    assert push_service.delivered_to(here_browser) == []


async def test_a_user_who_turned_web_push_off_for_a_category_gets_the_notification_but_no_push(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    """The `web_push` channel of the preferences (issue 19): off for claims, the notification is still
    stored (in_app stays on) and nothing is pushed; the other recipient of the same event is pushed."""
    muted = await sessions.create("muted", ttl_s=3600)
    pushed = await sessions.create("pushed", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    muted_browser, pushed_browser = push_service.subscribe(), push_service.subscribe()
    await subscribe(node, muted.token, muted_browser)
    await subscribe(node, pushed.token, pushed_browser)
    change = await node.patch("/api/preferences", json={"categories": {"claims": {"web_push": False}}},
                              headers={"Authorization": "Bearer " + muted.token})
    assert change.status == 200, await change.text()
    assert (await change.json())["categories"]["claims"] == {"in_app": True, "web_push": False}

    async with running_worker(push_settings):
        await emit(redis_client, push_settings, claim_rejected("wp-muted", "muted", "pushed"))
        await push_service.wait_for(1)
        await queue_drained(redis_client, push_settings)

    assert len(push_service.delivered_to(pushed_browser)) == 1
    assert push_service.delivered_to(muted_browser) == []
    listed = await (await node.get("/api/notifications", headers={"Authorization": "Bearer " + muted.token})).json()
    assert [item["event_type"] for item in listed["items"]] == ["CLAIM_REJECTED"]


async def test_an_away_user_gets_a_digest_as_a_push_too(
    push_settings: Settings, push_service: PushService, sessions: SessionStore, redis_client: Redis,
    db_pool: Any, aiohttp_client,
) -> None:
    """A digest (issue 19) is a notification like any other: the first event of a burst and, when the window
    ends, the digest of the rest both reach an away user's browser."""
    node = await start_node(aiohttp_client, push_settings)
    away = await sessions.create("away", ttl_s=3600)
    browser = push_service.subscribe()
    await subscribe(node, away.token, browser)
    docs = [{"event_id": f"wp-doc-{n}", "event_type": "DOCUMENT_REQUESTED", "recipients": [{"user_id": "away"}],
             "data": {"requester_name": "Dr. Jones", "document_name": f"file {n}", "request_id": f"r{n}"}}
            for n in range(3)]

    async with running_worker(push_settings):
        for doc in docs:
            await emit(redis_client, push_settings, doc)
        await push_service.wait_for(1)  # the first, at once; the other two held
        await queue_drained(redis_client, push_settings)
        async with db_pool.acquire() as conn, conn.cursor() as cur:  # the window ends now
            await cur.execute("UPDATE digest_windows SET due_at = due_at - interval '1 hour'"
                              " WHERE due_at > '-infinity'; UPDATE digest_held SET due_at = due_at - interval '1 hour'")
        await push_service.wait_for(2)

    titles = [d.message["data"]["title"] for d in push_service.delivered_to(browser)]
    assert titles == ["Document needed", "2 more documents needed"]
    assert push_service.delivered_to(browser)[1].message["data"]["metadata"] == {"digest_count": 2}


async def test_when_always_a_user_with_a_tab_open_is_pushed_too(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    settings = push_settings.replace(web_push={"when": "always"})
    here = await sessions.create("here", ttl_s=3600)
    node = await start_node(aiohttp_client, settings)
    browser = push_service.subscribe()
    await subscribe(node, here.token, browser)
    tab, _ = await connect_and_count(node, here.token)

    async with running_worker(settings):
        await emit(redis_client, settings, claim_rejected("wp-always", "here"))
        frame = await receive_frame(tab)
        (delivered,) = await push_service.wait_for(1)

    assert delivered.message == frame  # the push carries the WebSocket frame itself


async def test_a_410_deletes_the_subscription(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis, db_pool: Any,
) -> None:
    bob = await sessions.create("bob", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    gone, kept = push_service.subscribe(), push_service.subscribe()
    await subscribe(node, bob.token, gone)
    await subscribe(node, bob.token, kept)
    push_service.answer_next(gone, 410)

    async with running_worker(push_settings) as worker:
        await emit(redis_client, push_settings, claim_rejected("wp-410", "bob"))
        await queue_drained(redis_client, push_settings)
        counted = results(worker)

    assert await subscription_count(db_pool, "bob") == 1
    assert len(push_service.delivered_to(kept)) == 1
    assert counted == {"sent": 1.0, "gone": 1.0}


async def test_a_429_with_retry_after_is_delivered_on_the_retry(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    carol = await sessions.create("carol", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    browser = push_service.subscribe()
    await subscribe(node, carol.token, browser)
    push_service.answer_next(browser, 429, {"Retry-After": "1"})

    async with running_worker(push_settings):
        started = time.monotonic()
        await emit(redis_client, push_settings, claim_rejected("wp-429", "carol"))
        (delivered,) = await push_service.wait_for(1)

    assert push_service.requests == 2
    assert delivered.at - started >= 1.0  # Retry-After honoured: not retried before the second passed


async def test_5xx_is_retried_a_bounded_number_of_times_then_given_up(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis, db_pool: Any,
) -> None:
    settings = push_settings.replace(web_push={"max_attempts": 2})
    dave = await sessions.create("dave", ttl_s=3600)
    node = await start_node(aiohttp_client, settings)
    browser = push_service.subscribe()
    await subscribe(node, dave.token, browser)
    for _ in range(3):
        push_service.answer_next(browser, 503, {"Retry-After": "0"})

    async with running_worker(settings) as worker:
        await emit(redis_client, settings, claim_rejected("wp-503", "dave"))
        await queue_drained(redis_client, settings)
        counted = results(worker)

    assert push_service.requests == 2
    assert counted == {"failed": 1.0}
    assert await subscription_count(db_pool, "dave") == 1  # a failing service does not lose the subscription


async def test_priority_sets_the_urgency(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    erin = await sessions.create("erin", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    await subscribe(node, erin.token, push_service.subscribe())

    async with running_worker(push_settings):
        for priority in ("URGENT", "HIGH", "NORMAL", "LOW"):
            await emit(redis_client, push_settings, claim_rejected(f"wp-{priority}", "erin", priority=priority))
        delivered = await push_service.wait_for(4)

    assert {d.message["data"]["priority"]: d.urgency for d in delivered} == {
        "URGENT": "high", "HIGH": "normal", "NORMAL": "normal", "LOW": "low"}


async def test_a_hanging_push_service_delays_no_other_events_storage_or_websocket_push(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    away = await sessions.create("away", ttl_s=3600)
    here = await sessions.create("here", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    await subscribe(node, away.token, push_service.subscribe())
    tab, _ = await connect_and_count(node, here.token)
    release = push_service.gate = asyncio.Event()
    try:
        async with running_worker(push_settings):
            await emit(redis_client, push_settings, claim_rejected("wp-slow", "away"))
            await asyncio.wait_for(push_service.held.wait(), 10)
            await emit(redis_client, push_settings, claim_rejected("wp-next", "here"))
            frame = await receive_frame(tab)
            assert frame["data"]["title"] == "Claim Rejected"
            assert push_service.delivered == []  # the first push is still held by the push service
            release.set()
            await push_service.wait_for(1)
    finally:
        release.set()


async def test_an_endpoint_no_longer_allowed_is_not_sent_to(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    fay = await sessions.create("fay", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    await subscribe(node, fay.token, push_service.subscribe())
    narrowed = push_settings.replace(web_push={"allowed_hosts": ("fcm.googleapis.com",)})  # config changed since

    async with running_worker(narrowed) as worker:
        await emit(redis_client, narrowed, claim_rejected("wp-narrowed", "fay"))
        await queue_drained(redis_client, narrowed)
        counted = results(worker)

    assert push_service.requests == 0
    assert counted == {"refused": 1.0}


async def test_a_batch_left_pending_by_a_dead_worker_is_sent_by_another(
    push_settings: Settings, push_service: PushService, redis_client: Redis, db: Any, repository: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    browser = push_service.subscribe()
    queue = await queued_push(db, repository, redis_client, browser, "gus", "wp-dead")
    assert len(await queue.read("dead-worker", 10, 10)) == 1  # taken, never acknowledged
    monkeypatch.setattr(webpush_queue, "CLAIM_IDLE_MS", 0)

    async with running_worker(push_settings):
        (delivered,) = await push_service.wait_for(1)

    assert delivered.message["data"]["title"] == "t"


# ---------------------------------------------------------------- subscribing


def user(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


async def test_subscribe_answers_201_then_200_and_unsubscribe_204(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore, db_pool: Any,
) -> None:
    alice = await sessions.create("alice", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    browser = push_service.subscribe()

    key = await node.get("/api/push/vapid-public-key")
    first = await node.post("/api/push/subscriptions", json=browser.as_json(), headers=user(alice.token))
    again = await node.post("/api/push/subscriptions", json=browser.as_json(), headers=user(alice.token))
    assert await subscription_count(db_pool, "alice") == 1
    gone = await node.delete("/api/push/subscriptions", json={"endpoint": browser.endpoint}, headers=user(alice.token))

    assert (await key.json()) == {"public_key": push_service.vapid_public_key}
    assert (first.status, again.status, gone.status) == (201, 200, 204)
    assert await subscription_count(db_pool, "alice") == 0


async def test_an_endpoint_subscribed_by_another_user_moves_to_them(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore, db_pool: Any,
) -> None:
    alice = await sessions.create("alice", ttl_s=3600)
    bob = await sessions.create("bob", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    browser = push_service.subscribe()

    assert await subscribe(node, alice.token, browser) == 201
    # Bob cannot remove Alice's subscription by naming its endpoint...
    await node.delete("/api/push/subscriptions", json={"endpoint": browser.endpoint}, headers=user(bob.token))
    assert await subscription_count(db_pool, "alice") == 1
    # ...but when he signs in on that browser and subscribes, it is his.
    assert await subscribe(node, bob.token, browser) == 201

    assert (await subscription_count(db_pool, "alice"), await subscription_count(db_pool, "bob")) == (0, 1)


async def test_the_oldest_subscriptions_are_dropped_beyond_the_maximum(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore, db_pool: Any,
) -> None:
    settings = push_settings.replace(web_push={"max_subscriptions_per_user": 2})
    alice = await sessions.create("alice", ttl_s=3600)
    node = await start_node(aiohttp_client, settings)
    browsers = [push_service.subscribe() for _ in range(3)]
    for browser in browsers:
        await subscribe(node, alice.token, browser)

    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT endpoint FROM push_subscriptions WHERE user_id = 'alice'")
        kept = {row[0] for row in await cur.fetchall()}
    assert kept == {browsers[1].endpoint, browsers[2].endpoint}


@pytest.mark.parametrize(("change", "field"), [
    ({"endpoint": "https://evil.example/push/1"}, "endpoint: host evil.example is not a push service allowed"),
    ({"endpoint": "http://10.0.0.1:80/push/1"}, "endpoint: must be https"),
    ({"endpoint": "https://fcm.googleapis.com.evil.example/x"}, "endpoint: host fcm.googleapis.com.evil.example"),
    ({"endpoint": "https://user:pw@fcm.googleapis.com/x"}, "endpoint: must not carry credentials"),
    ({"endpoint": "fcm.googleapis.com/x"}, "endpoint: must be an https:// URL"),
    ({"endpoint": "https://fcm.googleapis.com/" + "x" * 3000}, "endpoint: Length must be between 1 and 2048."),
    ({"keys": {"p256dh": "AAAA", "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}, "keys.p256dh: must be a 65-byte"),
    ({"keys": {"p256dh": "B" + "A" * 86, "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}, "keys.p256dh: must be a 65-byte"),
    ({"keys": {"auth": "BTBZMqHH6r4Tts7J_aSIgg"}}, "keys.p256dh: Missing data"),
    ("auth-short", "keys.auth: must be 16 bytes"),
    ({"expirationTime": -1}, "expirationTime:"),
    ({"endpoint": None}, "endpoint: Field may not be null."),
])
async def test_a_bad_subscription_is_refused_with_400_naming_the_field(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore, db_pool: Any,
    change: Any, field: str,
) -> None:
    settings = push_settings.replace(web_push={"allowed_hosts": (push_service.origin, "fcm.googleapis.com")})
    alice = await sessions.create("alice", ttl_s=3600)
    node = await start_node(aiohttp_client, settings)
    body = push_service.subscribe().as_json()
    if change == "auth-short":
        body["keys"]["auth"] = body["keys"]["auth"][:-4]
    else:
        body.update(change)

    response = await node.post("/api/push/subscriptions", json=body, headers=user(alice.token))

    assert response.status == 400
    assert (await response.json())["error"]["message"].startswith(field)
    assert await subscription_count(db_pool, "alice") == 0


async def test_subscribing_needs_a_user_and_the_feature_on(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
) -> None:
    alice = await sessions.create("alice", ttl_s=3600)
    on = await start_node(aiohttp_client, push_settings, "on")
    off = await start_node(aiohttp_client, push_settings.replace(web_push={"enabled": False}), "off")
    body = push_service.subscribe().as_json()

    anonymous = await on.post("/api/push/subscriptions", json=body)
    forged = await on.post("/api/push/subscriptions", json=body,
                           headers={"Cookie": "session_id=" + alice.token, "Origin": "http://evil.example"})
    disabled = await off.post("/api/push/subscriptions", json=body, headers=user(alice.token))
    no_key = await off.get("/api/push/vapid-public-key")

    assert (anonymous.status, forged.status, disabled.status, no_key.status) == (401, 403, 404, 404)


async def test_an_expired_browser_subscription_is_not_pushed(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis,
) -> None:
    hal = await sessions.create("hal", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    body = push_service.subscribe().as_json()
    body["expirationTime"] = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).timestamp() * 1000
    assert (await node.post("/api/push/subscriptions", json=body, headers=user(hal.token))).status == 201

    async with running_worker(push_settings):
        await emit(redis_client, push_settings, claim_rejected("wp-expired", "hal"))
        await queue_drained(redis_client, push_settings)

    assert push_service.requests == 0


async def test_a_user_who_opened_a_tab_after_the_event_was_queued_is_not_pushed(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis, repository: Any,
) -> None:
    """The pipeline leaves out the recipients its WebSocket push reached; the sender asks presence again
    right before sending, for those who connected in between."""
    here = await sessions.create("here", ttl_s=3600)
    away = await sessions.create("away", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    here_browser, away_browser = push_service.subscribe(), push_service.subscribe()
    await subscribe(node, here.token, here_browser)
    await subscribe(node, away.token, away_browser)
    (stored,) = await repository.store_events([NewNotifications(
        "wp-late-tab", "COMMENT_ADDED", "t", "b", "LOW", None, {}, [Recipient("here"), Recipient("away")])])
    await WebPushQueue(redis_client, maxlen=1000).enqueue(stored.notifications)  # both queued, both away
    await connect_and_count(node, here.token)  # then "here" opens a tab

    async with running_worker(push_settings):
        await push_service.wait_for(1)
        await queue_drained(redis_client, push_settings)

    assert len(push_service.delivered_to(away_browser)) == 1
    assert push_service.delivered_to(here_browser) == []


@pytest.mark.parametrize(("status", "headers", "result", "requests"), [
    (413, {}, "too_large", 1),
    (400, {}, "rejected", 1),
    (403, {}, "rejected", 1),
    (301, {"Location": "http://127.0.0.1:1/elsewhere"}, "rejected", 1),  # no redirect is followed
    (429, {"Retry-After": "3600"}, "failed", 1),  # longer than web_push.retry_after_max_s: given up at once
])
async def test_answers_that_are_not_retried_keep_the_subscription(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis, db_pool: Any, status: int, headers: dict[str, str], result: str, requests: int,
) -> None:
    ivy = await sessions.create("ivy", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    browser = push_service.subscribe()
    await subscribe(node, ivy.token, browser)
    push_service.answer_next(browser, status, headers)

    async with running_worker(push_settings) as worker:
        await emit(redis_client, push_settings, claim_rejected(f"wp-{status}", "ivy"))
        await queue_drained(redis_client, push_settings)
        counted = results(worker)

    assert counted == {result: 1.0}
    assert push_service.requests == requests
    assert await subscription_count(db_pool, "ivy") == 1


async def test_a_batch_whose_subscriptions_cannot_be_read_stays_queued_and_is_sent_once_postgres_answers(
    push_settings: Settings, push_service: PushService, redis_client: Redis, db: Any, repository: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    browser = push_service.subscribe()
    queue = await queued_push(db, repository, redis_client, browser, "jo", "wp-pg-away")
    away = Database(DatabaseSettings(url="postgresql://postgres@127.0.0.1:1/none"))
    sender = WebPushSender(push_settings.web_push, queue, PushSubscriptionStore(away), lambda users: _none(),
                           WorkerMetrics().web_push, signer=VapidSigner(
                               load_private_key(push_settings.web_push.vapid_private_key_file), "mailto:a@b.c"),
                           consumer="cut-off")
    (batch,) = await queue.read("cut-off", 10, 10)
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(psycopg2.OperationalError):
                await sender.deliver(http, batch)
    finally:
        await away.close()
    assert await queue.depth() == 1  # not acknowledged: still there for another try
    monkeypatch.setattr(webpush_queue, "CLAIM_IDLE_MS", 0)

    async with running_worker(push_settings):
        (delivered,) = await push_service.wait_for(1)

    assert delivered.message["data"]["title"] == "t"


async def _none() -> set[str]:
    return set()


async def test_the_push_service_refuses_messages_signed_with_another_key(
    aiohttp_client, push_settings: Settings, push_service: PushService, sessions: SessionStore,
    redis_client: Redis, tmp_path: Path,
) -> None:
    """The test push service's checks can fail: a worker signing with a key other than the one the
    browser subscribed with is refused (as FCM answers 403), and nothing is delivered."""
    other_key = str(tmp_path / "other.pem")
    create_key_file(other_key)
    kay = await sessions.create("kay", ttl_s=3600)
    node = await start_node(aiohttp_client, push_settings)
    await subscribe(node, kay.token, push_service.subscribe())
    rekeyed = push_settings.replace(web_push={"vapid_private_key_file": other_key})

    async with running_worker(rekeyed) as worker:
        await emit(redis_client, rekeyed, claim_rejected("wp-rekeyed", "kay"))
        await queue_drained(redis_client, rekeyed)
        counted = results(worker)

    assert counted == {"rejected": 1.0}
    assert push_service.delivered == []
    assert push_service.refused == [(403, "k is not the application server key of this subscription")]
