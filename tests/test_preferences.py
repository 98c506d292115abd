"""Preferences (issue 19): the rules, GET/PATCH /api/preferences, and what a worker does with them.

The done-when scenario: a user mutes a category and then one event type, and events of them stop
reaching that user while the other recipient of the same event still gets them stored and pushed; a
critical type cannot be muted (400) and still arrives.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notify_server.core.preferences import CHANNELS, IN_APP, PreferenceError, UserPreferences
from notify_server.core.settings import Settings
from notify_server.core.templates import Template
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.preferences import PreferenceStore
from notify_server.storage.sessions import SessionStore
from tests.fakes import assert_nothing_arrives, claim_rejected, connect_and_count, receive_frame, start_node
from tests.helpers import run_worker_burst
from tests.test_api import assert_error, bearer
from tests.test_pipeline import job_result

PREFS = "/api/preferences"


def appointment(event_id: str, *users: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "APPOINTMENT_REMINDER",
            "recipients": [{"user_id": u} for u in users],
            "data": {"provider_name": "Dr. Who", "time": "10:00", "date": "Friday", "appointment_id": "a1"}}


def payment_failed(event_id: str, *users: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "PAYMENT_FAILED", "recipients": [{"user_id": u} for u in users],
            "data": {"last4": "4242"}}


def comment(event_id: str, *users: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "COMMENT_ADDED", "recipients": [{"user_id": u} for u in users],
            "data": {"author_name": "Sam", "excerpt": "hi"}}


async def process(redis_client: Redis, settings: Settings, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """Enqueue as a producer would, run a real worker until the queue is empty; the jobs' results."""
    for event in events:
        assert await enqueue_event(redis_client, event, queue_name=settings.queues.events) is not None
    await run_worker_burst(settings)
    return [await job_result(redis_client, settings, event["event_id"]) for event in events]


async def stored_for(db_pool: Any, user_id: str) -> list[str]:
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT event_id FROM notifications WHERE recipient_id = %s ORDER BY seq", (user_id,))
        return [row[0] for row in await cur.fetchall()]


@pytest.fixture
async def client(aiohttp_client, settings: Settings) -> TestClient:
    return await start_node(aiohttp_client, settings)


@pytest.fixture
async def alice(sessions: SessionStore) -> str:
    return (await sessions.create("alice", ttl_s=3600)).token


@pytest.fixture
async def bob(sessions: SessionStore) -> str:
    return (await sessions.create("bob", ttl_s=3600)).token


async def patch(client: TestClient, token: str, body: Any) -> Any:
    response = await client.patch(PREFS, headers=bearer(token), json=body)
    assert response.status == 200, await response.text()
    return await response.json()


# ---------------------------------------------------------------- the rules


def template(event_type: str = "T", category: str = "claims", critical: bool = False) -> Template:
    return Template.compile(event_type, title="t", body="b", priority="NORMAL", action_url=None,
                            category=category, critical=critical)


@pytest.mark.parametrize(("document", "allowed"), [
    ({}, True),
    ({"channels": {"in_app": False}}, False),
    ({"channels": {"in_app": False}, "categories": {"claims": {"in_app": True}}}, True),
    ({"categories": {"claims": {"in_app": False}}}, False),
    ({"categories": {"claims": {"in_app": False}}, "event_types": {"T": {"in_app": True}}}, True),
    ({"channels": {"in_app": True}, "categories": {"claims": {"in_app": True}},
      "event_types": {"T": {"in_app": False}}}, False),
    ({"categories": {"billing": {"in_app": False}}, "event_types": {"OTHER": {"in_app": False}}}, True),
], ids=["default-on", "channel-off", "category-beats-channel", "category-off", "type-beats-category",
        "type-beats-all", "other-keys-do-not-apply"])
def test_the_most_specific_switch_wins(document: dict[str, Any], allowed: bool) -> None:
    assert UserPreferences(document).allows(IN_APP, template()) is allowed


def test_a_critical_type_is_allowed_whatever_the_switches_say() -> None:
    everything_off = UserPreferences(
        {"channels": {"in_app": False}, "categories": {"claims": {"in_app": False}},
         "event_types": {"T": {"in_app": False}}})

    assert everything_off.allows(IN_APP, template(critical=True)) is True


def test_a_stored_document_with_junk_is_read_as_the_switches_it_holds() -> None:
    preferences = UserPreferences(
        {"channels": {"in_app": "no", "web": False}, "categories": ["x"], "event_types": {"T": {"in_app": 0}}, "x": 1})

    assert preferences == UserPreferences.of(channels={"web": False})


@pytest.mark.parametrize(("patch_body", "message"), [
    ([], "body: must be a JSON object"),
    ({"channel": {}}, "channel: unknown field"),
    ({"channels": {"sms": False}}, "channels.sms: unknown channel (known: in_app, web_push)"),
    ({"channels": {"in_app": "off"}}, "channels.in_app: must be true, false or null"),
    ({"channels": []}, "channels: must be an object"),
    ({"categories": {"marketing": {"in_app": False}}}, "categories.marketing: unknown category"),
    ({"categories": {"claims": False}}, "categories.claims: must be an object"),
    ({"categories": {"claims": {"push": False}}}, "categories.claims.push: unknown channel"),
    ({"event_types": {"NOPE": {"in_app": False}}}, "event_types.NOPE: unknown event type"),
    ({"event_types": {"PAYMENT_FAILED": {"in_app": False}}},
     "event_types.PAYMENT_FAILED.in_app: PAYMENT_FAILED is critical and cannot be turned off"),
], ids=["not-object", "unknown-section", "unknown-channel", "not-bool", "channels-not-object", "unknown-category",
        "category-not-object", "category-unknown-channel", "unknown-type", "critical-off"])
def test_a_bad_change_is_refused_naming_the_key(settings: Settings, patch_body: Any, message: str) -> None:
    with pytest.raises(PreferenceError) as refused:
        UserPreferences().patched(patch_body, settings.templates)

    assert str(refused.value).startswith(message)


# ---------------------------------------------------------------- GET / PATCH /api/preferences

ALL_ON = {channel: True for channel in CHANNELS}  # in_app and web_push


async def test_get_lists_every_channel_category_and_type_on_by_default(client: TestClient, alice: str,
                                                                         settings: Settings) -> None:
    response = await client.get(PREFS, headers=bearer(alice))

    assert response.status == 200
    body = await response.json()
    assert body["channels"] == {channel: True for channel in CHANNELS}
    assert body["categories"] == {c: ALL_ON for c in ("billing", "claims", "comments", "reminders")}
    assert body["event_types"] == {t: ALL_ON for t in settings.templates}
    assert body["catalog"]["PAYMENT_FAILED"] == {"category": "billing", "critical": True, "digest_window_s": 0}
    assert body["catalog"]["DOCUMENT_REQUESTED"] == {"category": "claims", "critical": False, "digest_window_s": 600}


async def test_patch_applies_partially_shows_effective_values_and_null_clears(client: TestClient, alice: str) -> None:
    body = await patch(client, alice, {"categories": {"claims": {"in_app": False}}})
    assert body["categories"]["claims"]["in_app"] is False
    assert body["event_types"]["CLAIM_REJECTED"]["in_app"] is False  # inherited from its category
    assert body["event_types"]["COMMENT_ADDED"]["in_app"] is True

    body = await patch(client, alice, {"event_types": {"CLAIM_APPROVED": {"in_app": True}}})
    assert body["event_types"]["CLAIM_APPROVED"]["in_app"] is True  # the type beats its category
    assert body["event_types"]["CLAIM_REJECTED"]["in_app"] is False
    assert body["categories"]["claims"]["in_app"] is False  # the earlier change is kept

    body = await patch(client, alice, {"channels": {"in_app": False}})
    assert body["categories"]["comments"]["in_app"] is False
    assert body["event_types"]["PAYMENT_FAILED"]["in_app"] is True  # critical: always on

    body = await patch(client, alice, {"channels": {"in_app": None}, "categories": {"claims": {"in_app": None}},
                                       "event_types": {"CLAIM_APPROVED": {"in_app": None}}})
    assert all(value == ALL_ON for value in body["event_types"].values())
    assert (await (await client.get(PREFS, headers=bearer(alice))).json()) == body


async def test_a_refused_patch_names_the_key_and_changes_nothing(client: TestClient, alice: str) -> None:
    before = await patch(client, alice, {"categories": {"reminders": {"in_app": False}}})

    for body, named in (
        ({"categories": {"claims": {"in_app": False}, "nope": {"in_app": False}}}, "categories.nope"),
        ({"channels": {"in_app": False, "carrier_pigeon": True}}, "channels.carrier_pigeon"),
        ({"event_types": {"COMMENT_ADDED": {"in_app": False}, "PAYMENT_FAILED": {"in_app": False}}},
         "event_types.PAYMENT_FAILED.in_app"),
    ):
        response = await client.patch(PREFS, headers=bearer(alice), json=body)
        assert (await assert_error(response, 400, "bad_request")).startswith(named)
    response = await client.patch(PREFS, headers=bearer(alice), data=b"{not json")
    assert await assert_error(response, 400, "bad_request") == "body: not JSON"
    response = await client.patch(PREFS, headers=bearer(alice), data=b"[" * 5000 + b"]" * 5000)
    await assert_error(response, 400, "bad_request")

    assert await (await client.get(PREFS, headers=bearer(alice))).json() == before


async def test_turning_a_critical_type_on_is_accepted(client: TestClient, alice: str) -> None:
    body = await patch(client, alice, {"event_types": {"PAYMENT_FAILED": {"in_app": True}}})

    assert body["event_types"]["PAYMENT_FAILED"]["in_app"] is True


async def test_preferences_are_per_user_and_need_a_session(client: TestClient, alice: str, bob: str) -> None:
    await patch(client, alice, {"channels": {"in_app": False}})

    bobs = await (await client.get(PREFS, headers=bearer(bob))).json()
    assert bobs["channels"] == ALL_ON
    await assert_error(await client.get(PREFS), 401, "unauthorized")
    await assert_error(await client.patch(PREFS, json={}), 401, "unauthorized")


async def test_a_cookie_patch_from_a_foreign_origin_is_refused(client: TestClient, alice: str) -> None:
    response = await client.patch(PREFS, json={"channels": {"in_app": False}},
                                  headers={"Cookie": "session_id=" + alice, "Origin": "http://evil.example"})

    await assert_error(response, 403, "forbidden")
    assert (await (await client.get(PREFS, headers=bearer(alice))).json())["channels"] == ALL_ON


async def test_clearing_every_switch_leaves_no_row(client: TestClient, alice: str, db_pool: Any) -> None:
    await patch(client, alice, {"categories": {"claims": {"in_app": False}}})
    await patch(client, alice, {"categories": {"claims": {"in_app": None}}})

    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM notification_preferences")
        assert (await cur.fetchone())[0] == 0


async def test_the_store_answers_muted_for_any_channel_in_one_call(db: Any, settings: Settings) -> None:
    store = PreferenceStore(db, settings.templates)
    await store.update("alice", {"categories": {"claims": {"in_app": False}}})
    await store.update("bob", {"event_types": {"CLAIM_REJECTED": {"in_app": False}}})
    await store.update("carol", {"channels": {"in_app": False}, "event_types": {"CLAIM_REJECTED": {"in_app": True}}})

    users = ["alice", "bob", "carol", "dave"]
    assert await store.muted(IN_APP, "CLAIM_REJECTED", users) == {"alice", "bob"}
    assert await store.muted(IN_APP, "CLAIM_APPROVED", users) == {"alice", "carol"}
    assert await store.muted(IN_APP, "PAYMENT_FAILED", users) == set()
    assert await store.muted("another_channel", "CLAIM_REJECTED", users) == set()


# ---------------------------------------------------------------- what the worker does


async def test_done_when_muted_category_then_type_stop_reaching_one_user_not_the_other(
    client: TestClient, alice: str, bob: str, settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    alice_tab, _ = await connect_and_count(client, alice)
    bob_tab, _ = await connect_and_count(client, bob)

    # Alice turns the claims category off: a claim event to both reaches Bob only.
    await patch(client, alice, {"categories": {"claims": {"in_app": False}}})
    (result,) = await process(redis_client, settings, claim_rejected("claim-1", "alice", "bob"))
    assert result == {"status": "stored", "recipients": 2, "stored": 1, "muted": 1}
    frame = await receive_frame(bob_tab)
    assert frame["type"] == "notification" and frame["data"]["event_type"] == "CLAIM_REJECTED"
    assert (await receive_frame(bob_tab))["data"]["count"] == 1

    # Then one event type of another category: it stops too; the rest of that category still arrives.
    await patch(client, alice, {"event_types": {"APPOINTMENT_REMINDER": {"in_app": False}}})
    muted, other = await process(redis_client, settings, appointment("appt-1", "alice", "bob"),
                                 comment("comment-1", "alice", "bob"))
    assert (muted["stored"], muted["muted"]) == (1, 1)
    assert (other["stored"], other["muted"]) == (2, 0)

    assert await stored_for(db_pool, "alice") == ["comment-1"]
    assert await stored_for(db_pool, "bob") == ["claim-1", "appt-1", "comment-1"]
    alice_frames = [await receive_frame(alice_tab), await receive_frame(alice_tab)]
    assert [f["type"] for f in alice_frames] == ["notification", "unread_count"]
    assert alice_frames[0]["data"]["event_type"] == "COMMENT_ADDED" and alice_frames[1]["data"]["count"] == 1
    await assert_nothing_arrives(alice_tab, 0.3)


async def test_done_when_a_critical_type_cannot_be_muted_and_still_arrives(
    client: TestClient, alice: str, settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    alice_tab, _ = await connect_and_count(client, alice)
    refused = await client.patch(PREFS, headers=bearer(alice),
                                 json={"event_types": {"PAYMENT_FAILED": {"in_app": False}}})
    assert "critical" in await assert_error(refused, 400, "bad_request")
    await patch(client, alice, {"channels": {"in_app": False}, "categories": {"billing": {"in_app": False}}})

    (result,) = await process(redis_client, settings, payment_failed("pay-1", "alice"))

    assert result == {"status": "stored", "recipients": 1, "stored": 1, "muted": 0}
    frame = await receive_frame(alice_tab)
    assert frame["data"]["event_type"] == "PAYMENT_FAILED"
    assert await stored_for(db_pool, "alice") == ["pay-1"]


async def test_an_event_every_recipient_muted_stores_and_pushes_nothing(
    client: TestClient, alice: str, settings: Settings, redis_client: Redis, repository: NotificationRepository,
) -> None:
    alice_tab, _ = await connect_and_count(client, alice)
    await patch(client, alice, {"channels": {"in_app": False}})

    (result,) = await process(redis_client, settings, comment("c-1", "alice"))

    assert result == {"status": "stored", "recipients": 1, "stored": 0, "muted": 1}
    assert await repository.count_unread("alice") == 0
    await assert_nothing_arrives(alice_tab, 0.3)


async def test_a_change_applies_to_the_next_event_on_every_worker(
    settings: Settings, redis_client: Redis, db: Any, db_pool: Any,
) -> None:
    """Two workers built before the change (each its own pool): both apply it to their next event."""
    from workers.consumer import EventConsumer

    first = EventConsumer(settings, burst=True, poll_delay=0, handle_signals=False)
    second = EventConsumer(settings, burst=True, poll_delay=0, handle_signals=False)
    try:
        await enqueue_event(redis_client, comment("before", "alice"), queue_name=settings.queues.events)
        await first.main()
        await PreferenceStore(db, settings.templates).update("alice", {"categories": {"comments": {"in_app": False}}})
        await enqueue_event(redis_client, comment("after-1", "alice"), queue_name=settings.queues.events)
        await first.main()
        await enqueue_event(redis_client, comment("after-2", "alice"), queue_name=settings.queues.events)
        await second.main()
    finally:
        await first.close()
        await second.close()

    assert await stored_for(db_pool, "alice") == ["before"]
    assert (await job_result(redis_client, settings, "after-2"))["muted"] == 1


async def test_a_batch_of_critical_events_reads_no_preferences(
    settings: Settings, redis_client: Redis, db_pool: Any,
) -> None:
    """The cost side: no preferences query for a batch whose events can never be muted. Proven with the
    table locked against every reader meanwhile: the batch completes all the same."""
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        async with cur.begin():
            await cur.execute("LOCK TABLE notification_preferences IN ACCESS EXCLUSIVE MODE")
            results = await process(redis_client, settings, payment_failed("p-1", "alice"),
                                    payment_failed("p-2", "bob"))

    assert [r["stored"] for r in results] == [1, 1]


async def test_the_stores_check_stops_the_store_when_a_recipient_holds_preferences(
    db: Any, settings: Settings, repository: NotificationRepository,
) -> None:
    """The small batch's path: the check rides in the store's round trip; when it fails nothing is stored."""
    from notify_server.ingest.events import parse_event
    from notify_server.storage.notifications import PreconditionFailed

    store = PreferenceStore(db, settings.templates)
    await store.update("alice", {"event_types": {"COMMENT_ADDED": {"in_app": True}}})  # holds one, mutes nothing
    new = parse_event(comment("c-1", "alice", "bob"), settings.templates)

    with pytest.raises(PreconditionFailed):
        await repository.store_events([new], precondition=store.none_held(["alice", "bob"]))
    assert await repository.count_unread("bob") == 0
    (stored,) = await repository.store_events([new], precondition=store.none_held(["bob", "carol"]))
    assert sorted(n.recipient_id for n in stored.notifications) == ["alice", "bob"]


async def test_a_larger_batch_reads_preferences_first_and_mutes_the_same(
    settings: Settings, redis_client: Redis, db: Any, db_pool: Any,
) -> None:
    """Over DEFER_MAX_RECIPIENTS recipients the preferences are read before the store: same outcome."""
    from workers.audience import DEFER_MAX_RECIPIENTS

    users = [f"user-{n}" for n in range(DEFER_MAX_RECIPIENTS + 5)]
    await PreferenceStore(db, settings.templates).update(users[3], {"categories": {"comments": {"in_app": False}}})

    (result,) = await process(redis_client, settings, comment("many", *users))

    assert (result["stored"], result["muted"]) == (len(users) - 1, 1)
    assert await stored_for(db_pool, users[3]) == []
