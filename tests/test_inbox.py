"""The inbox (issue 18): seen / read / archived, filters in the list and the counts, bulk actions, and every
tab in step — over a real node (or two), the run's real Postgres and Redis, and the worker's own
pipeline for new notifications (stored, then pushed through presence and the nodes' streams)."""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from notify_server.core.settings import Settings
from notify_server.storage.inbox import ACTIONS, action_sql
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient
from notify_server.storage.sessions import SessionStore
from notify_server.web.inbox import BULK_MAX_BODY_BYTES, BULK_MAX_IDS
from tests.fakes import assert_nothing_arrives, open_tab, receive_frame, start_node
from tests.helpers import insert, process_one, worker_context
from tests.test_api import assert_error, bearer
from tests.test_sse import open_stream
from workers.context import WorkerContext

EVENTS: dict[str, dict[str, Any]] = {  # config.yaml's templates: type -> data; their priorities in comments
    "CLAIM_REJECTED": {"provider_name": "Dr. Smith", "claim_id": "abc123"},  # HIGH
    "PAYMENT_FAILED": {"last4": "4242"},  # URGENT
    "COMMENT_ADDED": {"author_name": "Sam", "excerpt": "Looks good"},  # LOW
}


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[WorkerContext]:
    """What the worker's pipeline runs with."""
    async with worker_context(settings) as context:
        yield context


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    return await start_node(aiohttp_client, settings)


@pytest.fixture
async def alice(sessions: SessionStore) -> dict[str, str]:
    return bearer((await sessions.create("alice", ttl_s=3600)).token)


async def emit(ctx: WorkerContext, event_type: str, *users: str, **extra: Any) -> str:
    """One event through the worker's pipeline (stored, pushed); its id."""
    event_id = f"{event_type}-{uuid.uuid4().hex[:8]}"
    result = await process_one(ctx, copy.deepcopy({
        "event_id": event_id, "event_type": event_type, "recipients": [{"user_id": u} for u in users],
        "data": EVENTS[event_type], **extra}))
    assert result["status"] == "stored", result
    return event_id


async def store(repository: NotificationRepository, user_id: str, *kinds: tuple[str, str]) -> list[str]:
    """One notification per (event type, priority), oldest first; their ids."""
    ids = []
    for event_type, priority in kinds:
        (row,) = await insert(repository, NewNotifications(
            event_id=f"e-{uuid.uuid4().hex}", event_type=event_type, title="t", body="b", priority=priority,
            action_url=None, metadata={}, recipients=[Recipient(user_id)]))
        ids.append(row.notification_id)
    return ids


async def post(client: TestClient, path: str, headers: dict[str, str], body: Any = None) -> Any:
    response = await client.post(path, headers=headers, json=body) if body is not None else \
        await client.post(path, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def listed(client: TestClient, headers: dict[str, str], query: str = "") -> list[str]:
    response = await client.get(f"/api/notifications?limit=100&{query}", headers=headers)
    assert response.status == 200, await response.text()
    return [item["notification_id"] for item in (await response.json())["items"]]


async def counts(client: TestClient, headers: dict[str, str], query: str = "") -> dict[str, int]:
    response = await client.get(f"/api/notifications/counts?{query}", headers=headers)
    assert response.status == 200, await response.text()
    body: dict[str, int] = await response.json()
    return body


async def frame_of(ws: ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    frame = await receive_frame(ws)
    assert frame["type"] == kind, frame
    data: dict[str, Any] = frame["data"]
    return data


async def recount(db_pool: Any) -> dict[str, tuple[int, int, int, int]]:
    """{user: (unread counter, unread rows, unseen counter, unseen rows)} of every user, from the table."""
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT c.user_id, c.unread, count(n.*) FILTER (WHERE n.read_at IS NULL AND n.archived_at IS NULL),"
            " c.unseen, count(n.*) FILTER (WHERE n.seen_at IS NULL AND n.read_at IS NULL AND n.archived_at IS NULL)"
            " FROM unread_counters c LEFT JOIN notifications n ON n.recipient_id = c.user_id"
            " GROUP BY c.user_id, c.unread, c.unseen")
        return {row[0]: tuple(int(v) for v in row[1:]) for row in await cur.fetchall()}  # type: ignore[misc]


# ---------------------------------------------------------------- states


async def test_each_state_keeps_its_first_time_and_marking_read_marks_seen(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str]
) -> None:
    (nid,) = await store(repository, "alice", ("CLAIM_REJECTED", "HIGH"))
    base = f"/api/notifications/{nid}"

    read = await post(client, f"{base}/read", alice)
    assert read["read_at"] is not None and read["seen_at"] == read["read_at"] and read["archived_at"] is None
    assert await post(client, f"{base}/read", alice) == read  # idempotent: the first time stays
    assert await post(client, f"{base}/seen", alice) == read  # read is seen already

    unread = await post(client, f"{base}/unread", alice)
    assert unread["read_at"] is None and unread["seen_at"] == read["seen_at"]  # still seen

    archived = await post(client, f"{base}/archive", alice)
    assert archived["archived_at"] is not None
    assert (await post(client, f"{base}/archive", alice))["archived_at"] == archived["archived_at"]
    assert (await post(client, f"{base}/unarchive", alice))["archived_at"] is None
    assert (await post(client, f"{base}/unarchive", alice))["archived_at"] is None


async def test_counts_exclude_archived_and_follow_every_action(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str]
) -> None:
    first, second, third = await store(repository, "alice", ("CLAIM_REJECTED", "HIGH"), ("COMMENT_ADDED", "LOW"),
                                       ("PAYMENT_FAILED", "URGENT"))
    assert await counts(client, alice) == {"unread": 3, "unseen": 3, "total": 3}

    await post(client, f"/api/notifications/{first}/seen", alice)
    assert await counts(client, alice) == {"unread": 3, "unseen": 2, "total": 3}
    await post(client, f"/api/notifications/{second}/archive", alice)  # an unread, unseen one
    assert await counts(client, alice) == {"unread": 2, "unseen": 1, "total": 2}
    unread_count = await (await client.get("/api/notifications/unread-count", headers=alice)).json()
    assert unread_count == {"count": 2}  # the older endpoint counts as the badge does
    await post(client, f"/api/notifications/{third}/read", alice)
    assert await counts(client, alice) == {"unread": 1, "unseen": 0, "total": 2}
    await post(client, f"/api/notifications/{third}/unread", alice)  # unread again, but seen
    assert await counts(client, alice) == {"unread": 2, "unseen": 0, "total": 2}
    await post(client, f"/api/notifications/{second}/unarchive", alice)
    assert await counts(client, alice) == {"unread": 3, "unseen": 1, "total": 3}

    state = await repository.unread_state("alice")
    assert (state.count, state.unseen) == (3, 1)


@pytest.mark.parametrize("action", ["read", "unread", "seen", "archive", "unarchive"])
async def test_another_users_notification_is_404_and_changes_nothing(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str], action: str
) -> None:
    (bobs,) = await store(repository, "bob", ("CLAIM_REJECTED", "HIGH"))
    if action in ("unread", "unarchive"):
        await repository.change("bob", "read" if action == "unread" else "archive", ids=[bobs])
    before = await repository.get("bob", bobs)

    for nid in (bobs, str(uuid.uuid4()), "not-a-uuid"):
        await assert_error(await client.post(f"/api/notifications/{nid}/{action}", headers=alice), 404, "not_found")
    assert await post(client, "/api/notifications/bulk", alice,
                      {"action": action, "notification_ids": [bobs]}) == {"updated": 0}

    assert await repository.get("bob", bobs) == before


# ---------------------------------------------------------------- filters


async def test_the_list_filters_by_state_type_and_priority(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str]
) -> None:
    claim, comment, payment, claim_low = await store(
        repository, "alice", ("CLAIM_REJECTED", "HIGH"), ("COMMENT_ADDED", "LOW"), ("PAYMENT_FAILED", "URGENT"),
        ("CLAIM_REJECTED", "LOW"))
    await repository.change("alice", "read", ids=[comment])
    await repository.change("alice", "seen", ids=[payment])
    await repository.change("alice", "archive", ids=[claim_low])

    assert await listed(client, alice) == [payment, comment, claim]  # archived=false by default, newest first
    assert await listed(client, alice, "archived=true") == [claim_low]
    assert await listed(client, alice, "archived=all") == [claim_low, payment, comment, claim]
    assert await listed(client, alice, "read=false") == [payment, claim]
    assert await listed(client, alice, "unread_only=true") == [payment, claim]
    assert await listed(client, alice, "read=true") == [comment]
    assert await listed(client, alice, "seen=true") == [payment, comment]  # read is seen
    assert await listed(client, alice, "seen=false") == [claim]
    assert await listed(client, alice, "event_type=CLAIM_REJECTED") == [claim]
    assert await listed(client, alice, "event_type=CLAIM_REJECTED,PAYMENT_FAILED") == [payment, claim]
    assert await listed(client, alice, "event_type=CLAIM_REJECTED&archived=all") == [claim_low, claim]
    assert await listed(client, alice, "priority=LOW,URGENT") == [payment, comment]
    assert await listed(client, alice, "priority=LOW&archived=all&read=false") == [claim_low]
    assert await listed(client, alice, "event_type=NOPE") == []


async def test_a_filtered_list_pages_with_its_cursor(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str]
) -> None:
    ids = await store(repository, "alice", *[("CLAIM_REJECTED" if i % 2 else "COMMENT_ADDED", "HIGH")
                                             for i in range(7)])
    claims = [nid for i, nid in enumerate(ids) if i % 2][::-1]  # newest first

    pages: list[str] = []
    before = ""
    while True:
        response = await client.get(f"/api/notifications?event_type=CLAIM_REJECTED&limit=2{before}", headers=alice)
        page = await response.json()
        pages += [item["notification_id"] for item in page["items"]]
        if page["next_before"] is None:
            break
        before = f"&before={page['next_before']}"

    assert pages == claims


@pytest.mark.parametrize("query", [
    "priority=NOW", "priority=HIGH,SOON", "archived=maybe", "read=perhaps", "seen=2x", "unread_only=true&read=true",
    "event_type=" + ",".join(f"T{i}" for i in range(51)), "event_type=" + "x" * 201, "event_type=A%00B",
])
async def test_a_bad_filter_is_a_400_naming_it(client: TestClient, alice: dict[str, str], query: str) -> None:
    for path in ("/api/notifications", "/api/notifications/counts"):
        if path.endswith("counts") and not query.startswith(("priority", "event_type")):
            continue  # the counts take only these two
        message = await assert_error(await client.get(f"{path}?{query}", headers=alice), 400, "bad_request")
        assert message.split(":")[0] in query, message


async def test_counts_and_the_list_agree_for_every_filter(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str]
) -> None:
    rng = random.Random(18)
    kinds = [(rng.choice(list(EVENTS)), rng.choice(["LOW", "NORMAL", "HIGH", "URGENT"])) for _ in range(40)]
    ids = await store(repository, "alice", *kinds)
    await repository.change("alice", "read", ids=rng.sample(ids, 12))
    await repository.change("alice", "seen", ids=rng.sample(ids, 12))
    await repository.change("alice", "archive", ids=rng.sample(ids, 8))

    for query in ("", "event_type=CLAIM_REJECTED", "priority=HIGH,URGENT", "event_type=COMMENT_ADDED&priority=LOW",
                  "event_type=PAYMENT_FAILED,CLAIM_REJECTED&priority=NORMAL,LOW,URGENT"):
        sep = "&" if query else ""
        assert await counts(client, alice, query) == {
            "unread": len(await listed(client, alice, query + sep + "read=false")),
            "unseen": len(await listed(client, alice, query + sep + "seen=false")),
            "total": len(await listed(client, alice, query)),
        }, query


# ---------------------------------------------------------------- bulk and by filter


async def test_bulk_takes_a_thousand_ids_and_no_more(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str], settings: Settings
) -> None:
    mine = await store(repository, "alice", *[("CLAIM_REJECTED", "HIGH")] * 5)
    theirs = await store(repository, "bob", ("CLAIM_REJECTED", "HIGH"))
    ids = mine + theirs + [str(uuid.uuid4()) for _ in range(BULK_MAX_IDS - 6)]
    body = orjson.dumps({"action": "archive", "notification_ids": ids})
    assert settings.limits.request_max_bytes < len(body) < BULK_MAX_BODY_BYTES  # ~40 KB: past the REST limit

    response = await client.post("/api/notifications/bulk", data=body, headers=alice)
    assert response.status == 200 and await response.json() == {"updated": 5}  # bob's and unknown ids skipped
    assert await counts(client, alice) == {"unread": 0, "unseen": 0, "total": 0}
    assert (await repository.get("bob", theirs[0])).archived_at is None  # type: ignore[union-attr]

    too_many = {"action": "archive", "notification_ids": ids + [str(uuid.uuid4())]}
    message = await assert_error(await client.post("/api/notifications/bulk", json=too_many, headers=alice), 400,
                                 "bad_request")
    assert message.startswith("notification_ids:")
    huge = b'{"action": "read", "notification_ids": [' + b'"x",' * (BULK_MAX_BODY_BYTES // 4) + b'"x"]}'
    await assert_error(await client.post("/api/notifications/bulk", data=huge, headers=alice), 413,
                       "payload_too_large")


@pytest.mark.parametrize(("body", "field"), [
    ({"action": "delete", "notification_ids": []}, "action"),
    ({"action": "read", "notification_ids": ["nope"]}, "notification_ids.0"),
    ({"action": "read", "notification_ids": "all"}, "notification_ids"),
    ({"action": "read"}, "notification_ids"),
    ({"action": "read", "notification_ids": [], "extra": 1}, "extra"),
    ([], "the body"),
    ("read", "the body"),
])
async def test_a_bad_bulk_body_is_a_400_naming_the_field(
    client: TestClient, alice: dict[str, str], body: Any, field: str
) -> None:
    message = await assert_error(await client.post("/api/notifications/bulk", json=body, headers=alice), 400,
                                 "bad_request")
    assert message.startswith(field), message
    await assert_error(await client.post("/api/notifications/bulk", data=b"{not json", headers=alice), 400,
                       "bad_request")


async def test_actions_by_filter_change_only_what_matches(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str]
) -> None:
    claim, comment, payment = await store(repository, "alice", ("CLAIM_REJECTED", "HIGH"), ("COMMENT_ADDED", "LOW"),
                                          ("PAYMENT_FAILED", "URGENT"))

    assert await post(client, "/api/notifications/read-all", alice, {"filter": {"priority": ["URGENT", "LOW"]}}) == \
        {"updated": 2}
    assert await listed(client, alice, "read=true") == [payment, comment]
    assert await post(client, "/api/notifications/archive-all", alice, {"filter": {"read": True}}) == {"updated": 2}
    assert await listed(client, alice) == [claim]
    assert await post(client, "/api/notifications/seen-all", alice, {"filter": {"event_type": "NOPE"}}) == \
        {"updated": 0}
    assert await post(client, "/api/notifications/seen-all", alice) == {"updated": 1}
    assert await counts(client, alice) == {"unread": 1, "unseen": 0, "total": 1}
    assert await post(client, "/api/notifications/read-all", alice) == {"updated": 1}  # no body: as before
    assert await post(client, "/api/notifications/read-all", alice) == {"updated": 0}
    # Archived ones are out of the inbox: the *-all actions leave them be.
    assert await listed(client, alice, "archived=true&read=true") == [payment, comment]

    for bad in ({"filter": {"archived": True}}, {"filter": {"priority": "SOON"}}, {"filter": []}, {"other": 1}, [1]):
        await assert_error(await client.post("/api/notifications/read-all", json=bad, headers=alice), 400,
                           "bad_request")


# ---------------------------------------------------------------- every tab in step


async def test_an_action_reaches_every_tab_with_only_the_flags_that_changed(
    client: TestClient, repository: NotificationRepository, sessions: SessionStore, alice: dict[str, str]
) -> None:
    first, second = await store(repository, "alice", ("CLAIM_REJECTED", "HIGH"), ("COMMENT_ADDED", "LOW"))
    token = (await sessions.create("alice", ttl_s=3600)).token
    tabs = [await open_tab(client, token) for _ in range(2)]
    bystander = await open_tab(client, (await sessions.create("bob", ttl_s=3600)).token)
    versions = []
    for ws in (*tabs, bystander):
        versions.append((await frame_of(ws, "unread_count")).get("version"))

    await post(client, f"/api/notifications/{first}/read", alice)
    for ws in tabs:
        assert await frame_of(ws, "notifications_updated") == {"notification_ids": [first], "read": True, "seen": True}
        count = await frame_of(ws, "unread_count")
        assert (count["count"], count["unseen"]) == (1, 1) and count["version"] > versions[0]

    await post(client, f"/api/notifications/{first}/archive", alice)  # read and seen already: no count moves
    for ws in tabs:
        assert await frame_of(ws, "notifications_updated") == {"notification_ids": [first], "archived": True}
    await post(client, f"/api/notifications/{first}/archive", alice)  # nothing changes: nothing is sent
    await post(client, "/api/notifications/bulk", alice, {"action": "seen", "notification_ids": [second, first]})
    for ws in tabs:
        assert await frame_of(ws, "notifications_updated") == {"notification_ids": [second], "seen": True}
        count = await frame_of(ws, "unread_count")
        assert (count["count"], count["unseen"]) == (1, 0)
        await assert_nothing_arrives(ws, 0.3)
    await assert_nothing_arrives(bystander, 0.1)


async def test_an_action_on_more_than_max_replay_sends_resync(
    aiohttp_client: Any, settings: Settings, repository: NotificationRepository, sessions: SessionStore
) -> None:
    client = await start_node(aiohttp_client, settings.replace(recovery={"max_replay": 2}))
    ids = await store(repository, "alice", *[("CLAIM_REJECTED", "HIGH")] * 3)
    token = (await sessions.create("alice", ttl_s=3600)).token
    tab = await open_tab(client, token)
    await frame_of(tab, "unread_count")

    await post(client, "/api/notifications/bulk", bearer(token), {"action": "read", "notification_ids": ids[:2]})
    assert set((await frame_of(tab, "notifications_updated"))["notification_ids"]) == set(ids[:2])
    await frame_of(tab, "unread_count")
    await post(client, "/api/notifications/seen-all", bearer(token))  # one: still named
    assert (await frame_of(tab, "notifications_updated"))["notification_ids"] == [ids[2]]
    await frame_of(tab, "unread_count")
    await post(client, "/api/notifications/archive-all", bearer(token))  # three
    assert await frame_of(tab, "resync") == {}
    assert (await frame_of(tab, "unread_count"))["count"] == 0


async def test_an_event_stream_gets_the_same_frames(
    client: TestClient, ctx: WorkerContext, sessions: SessionStore
) -> None:
    token = (await sessions.create("alice", ttl_s=3600)).token
    stream = await open_stream(client, token)
    assert await stream.next() == ("unread_count", None, {"count": 0, "unseen": 0, "version": 0})

    await emit(ctx, "CLAIM_REJECTED", "alice")
    event, nid, data = await stream.next()
    assert event == "notification" and nid == data["notification_id"]
    assert (await stream.next())[2] == {"count": 1, "unseen": 1, "version": 1}
    await post(client, "/api/notifications/seen-all", bearer(token))

    assert await stream.next() == ("notifications_updated", None, {"notification_ids": [nid], "seen": True})
    assert await stream.next() == ("unread_count", None, {"count": 1, "unseen": 0, "version": 2})
    stream.response.close()


async def test_the_done_when_scenario_two_tabs_on_two_nodes(
    aiohttp_client: Any, settings: Settings, ctx: WorkerContext, sessions: SessionStore
) -> None:
    """Issue 18's "Done when", step by step."""
    node_a = await start_node(aiohttp_client, settings, "n1")
    node_b = await start_node(aiohttp_client, settings, "n2")
    token = (await sessions.create("alice", ttl_s=3600)).token
    auth = bearer(token)
    tab_a, tab_b = await open_tab(node_a, token), await open_tab(node_b, token)
    for tab in (tab_a, tab_b):
        assert await frame_of(tab, "unread_count") == {"count": 0, "unseen": 0, "version": 0}

    async def both(kind: str) -> list[dict[str, Any]]:
        return [await frame_of(tab, kind) for tab in (tab_a, tab_b)]

    # New notifications raise unseen, in both tabs.
    await emit(ctx, "CLAIM_REJECTED", "alice")
    await emit(ctx, "PAYMENT_FAILED", "alice")
    await emit(ctx, "COMMENT_ADDED", "alice", "bob")
    for _ in range(3):
        await both("notification")
        counts_now = await both("unread_count")
    assert [(c["count"], c["unseen"]) for c in counts_now] == [(3, 3), (3, 3)]

    # Opening the bell in tab A (seen-all) clears it in both.
    assert await post(node_a, "/api/notifications/seen-all", auth) == {"updated": 3}
    assert {len(d["notification_ids"]) for d in await both("notifications_updated")} == {3}
    assert [(c["count"], c["unseen"]) for c in await both("unread_count")] == [(3, 0), (3, 0)]

    # Archiving an unread one in tab A lowers count in both, and tab B's list drops it.
    inbox = await listed(node_b, auth)
    payment = (await listed(node_b, auth, "event_type=PAYMENT_FAILED"))[0]
    await post(node_a, f"/api/notifications/{payment}/archive", auth)
    for update in await both("notifications_updated"):
        assert update == {"notification_ids": [payment], "archived": True}
    assert [c["count"] for c in await both("unread_count")] == [2, 2]
    assert await listed(node_b, auth) == [nid for nid in inbox if nid != payment]
    # The Archived tab lists it; unarchive brings it back.
    assert await listed(node_b, auth, "archived=true") == [payment]
    await post(node_b, f"/api/notifications/{payment}/unarchive", auth)
    assert [u["archived"] for u in await both("notifications_updated")] == [False, False]
    assert [c["count"] for c in await both("unread_count")] == [3, 3]
    assert await listed(node_a, auth) == inbox

    # Filters by type and priority give the same numbers in the list and in /counts.
    for query in ("event_type=CLAIM_REJECTED", "priority=URGENT,LOW", "event_type=COMMENT_ADDED&priority=HIGH"):
        found = await counts(node_a, auth, query)
        assert found["total"] == len(await listed(node_b, auth, query))
        assert found["unread"] == len(await listed(node_b, auth, query + "&read=false"))

    # A bulk action by ids, and one by filter, each reach the other tab as notifications_updated.
    two = [nid for nid in inbox if nid != payment]
    await post(node_a, "/api/notifications/bulk", auth, {"action": "read", "notification_ids": two})
    for update in await both("notifications_updated"):  # the acting tab is told too
        assert sorted(update["notification_ids"]) == sorted(two) and update["read"] is True
    assert [c["count"] for c in await both("unread_count")] == [1, 1]
    await post(node_b, "/api/notifications/read-all", auth, {"filter": {"priority": ["URGENT"]}})
    assert [u["notification_ids"] for u in await both("notifications_updated")] == [[payment], [payment]]
    assert [c["count"] for c in await both("unread_count")] == [0, 0]

    # Another user's ids change nothing.
    bobs = await listed(node_a, bearer((await sessions.create("bob", ttl_s=3600)).token))
    assert await post(node_a, "/api/notifications/bulk", auth, {"action": "archive", "notification_ids": bobs}) == \
        {"updated": 0}
    await assert_error(await node_a.post(f"/api/notifications/{bobs[0]}/archive", headers=auth), 404, "not_found")
    assert len(await listed(node_a, bearer((await sessions.create("bob", ttl_s=3600)).token))) == 1


async def test_counts_stay_exact_under_concurrent_tabs_and_new_events(
    aiohttp_client: Any, settings: Settings, ctx: WorkerContext, sessions: SessionStore,
    repository: NotificationRepository, db_pool: Any,
) -> None:
    """Four tabs (two nodes) act at once — bulk, by filter, one by one — while events keep arriving for
    the same users; afterwards every counter equals a recount of the rows, and every tab's last count is
    its user's counter."""
    nodes = [await start_node(aiohttp_client, settings, f"n{i}") for i in (1, 2)]
    users = ["alice", "bob"]
    tokens = {user: (await sessions.create(user, ttl_s=3600)).token for user in users}
    tabs = {(user, i): await open_tab(nodes[i], tokens[user]) for user in users for i in (0, 1)}
    for user in users:
        await store(repository, user, *[(t, p) for t in EVENTS for p in ("LOW", "HIGH", "URGENT")])
    rng = random.Random(1818)
    actions = ["read", "unread", "seen", "archive", "unarchive"]

    async def act(user: str, node: TestClient, rounds: int) -> None:
        auth = bearer(tokens[user])
        for _ in range(rounds):
            ids = await listed(node, auth, "archived=all")
            choice = rng.random()
            if choice < 0.4:
                await post(node, "/api/notifications/bulk", auth,
                           {"action": rng.choice(actions), "notification_ids": rng.sample(ids, min(len(ids), 6))})
            elif choice < 0.7:
                await post(node, f"/api/notifications/{rng.choice(ids)}/{rng.choice(actions)}", auth)
            else:
                route = rng.choice(["read-all", "seen-all", "archive-all"])
                await post(node, f"/api/notifications/{route}", auth,
                           {"filter": {"priority": [rng.choice(["LOW", "HIGH", "URGENT"])]}})

    async def events(count: int) -> None:
        for _ in range(count):
            await emit(ctx, rng.choice(list(EVENTS)), *rng.sample(users, rng.randint(1, 2)),
                       priority=rng.choice(["LOW", "HIGH", "URGENT"]))

    await asyncio.gather(*(act(user, nodes[i], 12) for user in users for i in (0, 1)), events(20), events(20))

    found = await recount(db_pool)
    assert all(row[0] == row[1] and row[2] == row[3] for row in found.values()), found
    for (user, _), tab in tabs.items():
        last = None
        while True:
            try:
                frame = await receive_frame(tab, 0.5)
            except (TimeoutError, AssertionError):
                break
            if frame["type"] == "unread_count":
                last = frame["data"]
        state = await repository.unread_state(user)
        assert last == {"count": state.count, "unseen": state.unseen, "version": state.version}, user


async def waiting_for_a_lock(db_pool: Any) -> None:
    """Until some statement of this database waits for a lock (the interleaving a test set up)."""
    for _ in range(500):
        async with db_pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                              " AND wait_event_type = 'Lock'")
            if (await cur.fetchone())[0]:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("no statement waited for a lock")


async def test_an_action_behind_a_store_in_flight_leaves_the_new_row_counted(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str], db_pool: Any
) -> None:
    """A batch holds alice's counter (taken before its rows are inserted) while seen-all runs: seen-all
    waits for it, and the row it could not see stays counted as unseen."""
    await store(repository, "alice", ("CLAIM_REJECTED", "HIGH"), ("COMMENT_ADDED", "LOW"))
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("BEGIN")
        await cur.execute(
            "SELECT * FROM notify_store_events_v2(ARRAY['in-flight'], ARRAY['CLAIM_REJECTED'], ARRAY['t'],"
            " ARRAY['b'], ARRAY['HIGH'], ARRAY[NULL], ARRAY['{}'], ARRAY['alice'], ARRAY[NULL], ARRAY[1])")
        seen_all = asyncio.ensure_future(post(client, "/api/notifications/seen-all", alice))
        await waiting_for_a_lock(db_pool)
        await cur.execute("COMMIT")
    assert await seen_all == {"updated": 2}

    state = await repository.unread_state("alice")
    assert (state.count, state.unseen) == (3, 1)
    assert (await recount(db_pool))["alice"] == (3, 3, 1, 1)


async def test_two_actions_on_one_row_at_once_count_it_once(
    client: TestClient, repository: NotificationRepository, alice: dict[str, str], db_pool: Any
) -> None:
    """A seen not yet committed holds the row when a read of it arrives: the read waits, then reads the
    row as the seen left it (seen already), so unseen falls once, not twice."""
    first, _ = await store(repository, "alice", ("CLAIM_REJECTED", "HIGH"), ("COMMENT_ADDED", "LOW"))
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("BEGIN")
        await cur.execute(action_sql(ACTIONS["seen"], ["notification_id = ANY(%(ids)s::uuid[])"]),
                          {"user": "alice", "ids": [first]})
        read = asyncio.ensure_future(post(client, f"/api/notifications/{first}/read", alice))
        await waiting_for_a_lock(db_pool)
        await cur.execute("COMMIT")
    assert (await read)["read_at"] is not None

    assert (await recount(db_pool))["alice"] == (1, 1, 1, 1)
