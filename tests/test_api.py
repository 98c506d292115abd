"""REST API (SPEC §8): auth, listing with cursor paging, unread count, mark read, health and metrics."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from notify_server.core.settings import Settings
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient
from notify_server.storage.sessions import SessionStore, hash_token
from tests.fakes import connect_and_count, start_node
from tests.helpers import insert

ITEM_KEYS = {
    "notification_id", "title", "body", "priority", "action_url", "event_type", "metadata", "created_at", "read_at",
    "seen_at", "archived_at",
}


async def store(repository: NotificationRepository, user_id: str, count: int, prefix: str = "evt") -> list[str]:
    """`count` notifications for the user, one event each; their ids, oldest first."""
    ids = []
    for i in range(count):
        (notification,) = await insert(repository,
            NewNotifications(
                event_id=f"{prefix}-{user_id}-{i}", event_type="CLAIM_REJECTED", title=f"Title {i}",
                body=f"Body {i}", priority="HIGH", action_url=f"/claims/{i}", metadata={"i": i},
                recipients=[Recipient(user_id, f"{user_id}@example.com")],
            )
        )
        ids.append(notification.notification_id)
    return ids


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


async def assert_error(response: Any, status: int, code: str) -> str:
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


@pytest.fixture
async def client(aiohttp_client, settings: Settings) -> TestClient:
    return await start_node(aiohttp_client, settings)


@pytest.fixture
async def alice(sessions: SessionStore) -> str:
    return (await sessions.create("alice", ttl_s=3600)).token


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/notifications"),
        ("GET", "/api/notifications/unread-count"),
        ("POST", "/api/notifications/0f1b0f1b-0000-4000-8000-000000000001/read"),
        ("POST", "/api/notifications/read-all"),
    ],
)
async def test_api_answers_401_without_a_token(client: TestClient, method: str, path: str) -> None:
    await assert_error(await client.request(method, path), 401, "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-a-session"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Cookie": "session_id=not-a-session"},
    ],
)
async def test_api_answers_401_with_a_bad_token(client: TestClient, headers: dict[str, str]) -> None:
    await assert_error(await client.get("/api/notifications", headers=headers), 401, "unauthorized")


async def test_api_answers_401_for_an_expired_or_revoked_session(
    client: TestClient, sessions: SessionStore, db_pool: Any
) -> None:
    expired = await sessions.create("alice", ttl_s=3600)
    revoked = await sessions.create("alice", ttl_s=3600)
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "UPDATE sessions SET expires_at = now() - interval '1 s' WHERE token_hash = %s",
            (hash_token(expired.token),),
        )
    await sessions.revoke(revoked.token)

    for token in (expired.token, revoked.token):
        await assert_error(await client.get("/api/notifications", headers=bearer(token)), 401, "unauthorized")


async def test_api_accepts_the_bearer_token_or_the_session_cookie(client: TestClient, alice: str) -> None:
    by_header = await client.get("/api/notifications/unread-count", headers=bearer(alice))
    by_cookie = await client.get("/api/notifications/unread-count", headers={"Cookie": "session_id=" + alice})

    assert by_header.status == by_cookie.status == 200
    assert await by_header.json() == await by_cookie.json() == {"count": 0}


async def test_auth_failures_are_counted_in_metrics(client: TestClient) -> None:
    await client.get("/api/notifications")
    await client.get("/api/notifications", headers=bearer("nope"))

    metrics = await (await client.get("/metrics")).text()

    assert 'notify_auth_failures_total{surface="rest"} 2.0' in metrics


# ---------------------------------------------------------------- listing


async def test_list_returns_the_callers_notifications_newest_first_with_cursor_paging(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    ids = await store(repository, "alice", 5)
    await store(repository, "bob", 2)

    pages, before = [], None
    while True:
        params = {"limit": "2"} | ({"before": before} if before else {})
        response = await client.get("/api/notifications", params=params, headers=bearer(alice))
        assert response.status == 200
        body = await response.json()
        assert set(body) == {"items", "next_before"}
        pages.append([item["notification_id"] for item in body["items"]])
        before = body["next_before"]
        if before is None:
            break
        assert before == body["items"][-1]["notification_id"]

    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]


async def test_list_items_carry_the_frame_keys_plus_read_at_and_nothing_private(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    await store(repository, "alice", 1)

    response = await client.get("/api/notifications", headers=bearer(alice))
    text = await response.text()

    (item,) = (await response.json())["items"]
    assert set(item) == ITEM_KEYS
    assert item["read_at"] is None
    assert item["created_at"].endswith("Z")
    assert item["metadata"] == {"i": 0}
    for private in ("alice@example.com", "evt-alice-0", "recipient", "email", "event_id"):
        assert private not in text


async def test_list_without_a_next_page_has_next_before_null(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    await store(repository, "alice", 2)

    body = await (await client.get("/api/notifications", params={"limit": "2"}, headers=bearer(alice))).json()

    assert len(body["items"]) == 2
    assert body["next_before"] is None


async def test_list_of_a_user_without_notifications_is_empty(client: TestClient, alice: str) -> None:
    body = await (await client.get("/api/notifications", headers=bearer(alice))).json()

    assert body == {"items": [], "next_before": None}


async def test_list_unread_only_leaves_out_read_notifications(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    ids = await store(repository, "alice", 3)
    assert (await client.post(f"/api/notifications/{ids[1]}/read", headers=bearer(alice))).status == 200

    unread = await (await client.get("/api/notifications", params={"unread_only": "true"}, headers=bearer(alice))).json()
    everything = await (await client.get("/api/notifications", params={"unread_only": "false"}, headers=bearer(alice))).json()

    assert [item["notification_id"] for item in unread["items"]] == [ids[2], ids[0]]
    assert [item["notification_id"] for item in everything["items"]] == [ids[2], ids[1], ids[0]]


@pytest.mark.parametrize("limit", ["0", "-1", "1000", "101", "abc", "1.5"])
async def test_list_refuses_a_limit_out_of_bounds_with_400(client: TestClient, alice: str, limit: str) -> None:
    response = await client.get("/api/notifications", params={"limit": limit}, headers=bearer(alice))

    message = await assert_error(response, 400, "bad_request")
    assert "limit" in message


async def test_list_accepts_limits_from_1_to_list_max(
    client: TestClient, alice: str, settings: Settings, repository: NotificationRepository
) -> None:
    await store(repository, "alice", 2)

    for limit, expected in (("1", 1), (str(settings.limits.list_max), 2)):
        response = await client.get("/api/notifications", params={"limit": limit}, headers=bearer(alice))
        assert response.status == 200
        assert len((await response.json())["items"]) == expected


@pytest.mark.parametrize("unread_only", ["maybe", "2"])
async def test_list_refuses_a_bad_unread_only_with_400(client: TestClient, alice: str, unread_only: str) -> None:
    response = await client.get("/api/notifications", params={"unread_only": unread_only}, headers=bearer(alice))

    await assert_error(response, 400, "bad_request")


async def test_list_refuses_a_bad_before_cursor_with_400(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    (bobs,) = await store(repository, "bob", 1)

    for before in ("not-a-uuid", str(uuid.uuid4()), bobs):
        response = await client.get("/api/notifications", params={"before": before}, headers=bearer(alice))
        message = await assert_error(response, 400, "bad_request")
        assert "before" in message


# ---------------------------------------------------------------- unread count and marking read


async def test_unread_count_counts_only_the_callers_unread_notifications(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    await store(repository, "alice", 3)
    await store(repository, "bob", 4)

    response = await client.get("/api/notifications/unread-count", headers=bearer(alice))

    assert await response.json() == {"count": 3}


async def test_mark_read_returns_the_item_and_is_idempotent(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    ids = await store(repository, "alice", 2)

    first = await client.post(f"/api/notifications/{ids[0]}/read", headers=bearer(alice))
    second = await client.post(f"/api/notifications/{ids[0]}/read", headers=bearer(alice))

    assert first.status == second.status == 200
    item, again = await first.json(), await second.json()
    assert set(item) == ITEM_KEYS
    assert item["notification_id"] == ids[0]
    assert item["read_at"] is not None and item["read_at"].endswith("Z")
    assert again == item  # read_at keeps its first value
    count = await (await client.get("/api/notifications/unread-count", headers=bearer(alice))).json()
    assert count == {"count": 1}


@pytest.mark.parametrize("which", ["another users", "random uuid", "not a uuid"])
async def test_mark_read_answers_404_for_anything_not_the_callers(
    client: TestClient, alice: str, repository: NotificationRepository, which: str
) -> None:
    (bobs,) = await store(repository, "bob", 1)
    notification_id = {"another users": bobs, "random uuid": str(uuid.uuid4()), "not a uuid": "not-a-uuid"}[which]

    response = await client.post(f"/api/notifications/{notification_id}/read", headers=bearer(alice))

    await assert_error(response, 404, "not_found")
    assert await repository.count_unread("bob") == 1


async def test_mark_read_answers_the_same_404_whether_or_not_the_id_exists(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    (bobs,) = await store(repository, "bob", 1)

    existing = await client.post(f"/api/notifications/{bobs}/read", headers=bearer(alice))
    missing = await client.post(f"/api/notifications/{uuid.uuid4()}/read", headers=bearer(alice))

    assert (existing.status, await existing.json()) == (missing.status, await missing.json())


async def test_read_all_returns_how_many_changed(
    client: TestClient, alice: str, repository: NotificationRepository
) -> None:
    ids = await store(repository, "alice", 3)
    await store(repository, "bob", 2)
    await client.post(f"/api/notifications/{ids[0]}/read", headers=bearer(alice))

    first = await client.post("/api/notifications/read-all", headers=bearer(alice))
    second = await client.post("/api/notifications/read-all", headers=bearer(alice))

    assert first.status == second.status == 200
    assert await first.json() == {"updated": 2}
    assert await second.json() == {"updated": 0}
    assert await repository.count_unread("alice") == 0
    assert await repository.count_unread("bob") == 2


async def test_mark_read_refuses_a_body_over_the_request_limit(
    client: TestClient, alice: str, settings: Settings, repository: NotificationRepository
) -> None:
    (notification_id,) = await store(repository, "alice", 1)

    response = await client.post(
        f"/api/notifications/{notification_id}/read", headers=bearer(alice),
        data=b"x" * (settings.limits.request_max_bytes + 1),
    )

    await assert_error(response, 413, "payload_too_large")
    assert await repository.count_unread("alice") == 1


async def test_unknown_api_paths_and_methods_answer_json_errors(client: TestClient, alice: str) -> None:
    await assert_error(await client.get("/api/nothing-here", headers=bearer(alice)), 404, "not_found")
    await assert_error(await client.get("/api/notifications/read-all", headers=bearer(alice)), 405, "method_not_allowed")


# ---------------------------------------------------------------- health and metrics


async def test_healthz_answers_200(client: TestClient) -> None:
    response = await client.get("/healthz")

    assert response.status == 200
    assert (await response.json())["node_id"] == "n1"


async def test_readyz_answers_200_when_postgres_and_redis_answer(client: TestClient) -> None:
    response = await client.get("/readyz")

    assert response.status == 200
    assert (await response.json())["ready"] is True


async def test_metrics_report_open_connections_in_prometheus_text(client: TestClient, alice: str) -> None:
    ws, _ = await connect_and_count(client, alice)

    response = await client.get("/metrics")
    text = await response.text()

    assert response.status == 200
    assert response.content_type == "text/plain"
    assert "notify_open_connections 1.0" in text
    for name in ("notify_frames_pushed_total", "notify_push_jobs_total", "notify_push_latency_seconds",
                 "notify_auth_failures_total"):
        assert name in text
    await ws.close()


async def test_metrics_count_frames_written_to_sockets(client: TestClient, alice: str) -> None:
    ws, _ = await connect_and_count(client, alice)  # the first frame, the unread count

    text = await (await client.get("/metrics")).text()

    assert "notify_frames_pushed_total 1.0" in text
    await ws.close()
