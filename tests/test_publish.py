"""The HTTP publish API (issue 12): `POST /api/events` and `/api/events/batch` with `X-API-Key`.

Real node, real Redis queue, and the real worker storing what was published.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from notify_server.auth.apikeys import ApiKeyRing, hash_api_key, new_api_key
from notify_server.core.settings import Settings
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.sessions import SessionStore
from tests.fakes import claim_rejected, start_node
from tests.helpers import run_worker_burst

KEY, DIGEST = new_api_key()


def headers(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def publishing(settings: Settings) -> Settings:
    return settings.replace(publish={"api_key_hashes": (DIGEST,), "max_body_bytes": 8192})


@pytest.fixture
async def node(aiohttp_client, publishing: Settings) -> AsyncIterator[TestClient]:
    yield await start_node(aiohttp_client, publishing)


async def error_of(response: Any, status: int) -> dict[str, str]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


# ---------------------------------------------------------------- one event


async def test_a_published_event_is_queued_and_the_worker_stores_it(
    node: TestClient, publishing: Settings, repository: NotificationRepository
) -> None:
    response = await node.post("/api/events", json=claim_rejected("evt-1", "u1", "u2"), headers=headers())

    assert response.status == 202
    assert await response.json() == {"event_id": "evt-1", "status": "queued"}
    await run_worker_burst(publishing)
    for user_id in ("u1", "u2"):
        page = await repository.list_for_user(user_id, limit=5)
        assert [n.body for n in page.items] == ["Your claim for Dr. Smith has been rejected."]


async def test_the_same_event_id_twice_is_a_duplicate(node: TestClient) -> None:
    first = await node.post("/api/events", json=claim_rejected("evt-dup", "u1"), headers=headers())
    second = await node.post("/api/events", json=claim_rejected("evt-dup", "u1"), headers=headers())

    assert (await first.json())["status"] == "queued"
    assert second.status == 202 and await second.json() == {"event_id": "evt-dup", "status": "duplicate"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (claim_rejected("e", "u1", recipients=[]), "recipients: Shorter than minimum length 1."),
        (claim_rejected("e", "u1", event_type="NO_SUCH_TYPE"), "event_type: no template for 'NO_SUCH_TYPE'"),
        (claim_rejected("e", "u1", priority="CRITICAL"), "priority: Must be one of"),
        (claim_rejected("e", "u1", colour="red"), "colour: Unknown field."),
        (claim_rejected("e", "u1", data={"claim_id": "x"}), "data: "),
        ({"event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "u1"}]}, "event_id: Missing data"),
        ([1, 2], "event must be a JSON object"),
    ],
    ids=["no-recipients", "no-template", "bad-priority", "unknown-field", "missing-variable", "no-event-id",
         "not-an-object"],
)
async def test_an_invalid_event_is_400_naming_the_field_and_nothing_is_queued(
    node: TestClient, redis_client: Any, publishing: Settings, event: Any, message: str
) -> None:
    response = await node.post("/api/events", json=event, headers=headers())

    error = await error_of(response, 400)
    assert error["code"] == "invalid_event"
    assert error["message"].startswith(message), error
    assert await redis_client.zcard(publishing.queues.events) == 0


async def test_a_body_that_is_not_json_is_400(node: TestClient) -> None:
    error = await error_of(await node.post("/api/events", data=b"{oops", headers=headers()), 400)

    assert error == {"code": "bad_request", "message": "the body must be JSON"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413(node: TestClient, chunked: bool) -> None:
    body = orjson.dumps(claim_rejected("big", "u1", metadata={"pad": "x" * 9000}))

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = await node.post("/api/events", data=stream() if chunked else body, headers=headers())

    error = await error_of(response, 413)
    assert error["code"] == "payload_too_large" and "publish.max_body_bytes" in error["message"]


# ---------------------------------------------------------------- who may publish


@pytest.mark.parametrize(
    "extra",
    [{}, headers("nsk_wrong"), headers(""), headers("x" * 5000), {"X-API-Key": DIGEST}],
    ids=["none", "wrong", "empty", "huge", "the-digest-itself"],
)
async def test_publishing_needs_a_valid_api_key(node: TestClient, extra: dict[str, str]) -> None:
    response = await node.post("/api/events", json=claim_rejected("e", "u1"), headers=extra)

    error = await error_of(response, 401)
    assert error["code"] == "unauthorized"


async def test_no_user_session_or_cookie_publishes(node: TestClient, sessions: SessionStore) -> None:
    token = (await sessions.create("alice", ttl_s=3600)).token

    for extra in ({"Authorization": "Bearer " + token}, {"Cookie": "session_id=" + token}):
        response = await node.post("/api/events", json=claim_rejected("e", "u1"), headers=extra)
        assert response.status == 401


async def test_user_endpoints_accept_no_api_key(node: TestClient) -> None:
    for method, path in (("GET", "/api/notifications"), ("POST", "/api/notifications/read-all")):
        response = await node.request(method, path, headers=headers())
        assert response.status == 401


async def test_without_configured_keys_publishing_is_off(aiohttp_client, settings: Settings) -> None:
    client = await start_node(aiohttp_client, settings)

    response = await client.post("/api/events", json=claim_rejected("e", "u1"), headers=headers())

    assert response.status == 401


async def test_failed_api_keys_are_counted(node: TestClient) -> None:
    await node.post("/api/events", json={}, headers=headers("nope"))

    metrics = await (await node.get("/metrics")).text()

    assert 'notify_auth_failures_total{surface="publish"} 1.0' in metrics


def test_the_key_ring_compares_digests_not_keys() -> None:
    ring = ApiKeyRing([hash_api_key("k1"), hashlib.sha256(b"k2").hexdigest()])

    assert ring.accepts("k1") and ring.accepts("k2")
    assert not ring.accepts(hash_api_key("k1")) and not ring.accepts(None) and not ring.accepts("")
    assert not ApiKeyRing([]).accepts("k1")


# ---------------------------------------------------------------- batches


async def test_a_batch_answers_one_result_per_event_in_order(
    node: TestClient, publishing: Settings, repository: NotificationRepository
) -> None:
    await node.post("/api/events", json=claim_rejected("b-old", "u1"), headers=headers())
    events = [
        claim_rejected("b-1", "u1"),
        claim_rejected("b-2", "u1", recipients=[]),
        claim_rejected("b-old", "u1"),
        {"no": "id"},
        claim_rejected("b-3", "u2"),
        claim_rejected("b-1", "u1"),
    ]

    response = await node.post("/api/events/batch", json={"events": events}, headers=headers())

    assert response.status == 202
    results = (await response.json())["results"]
    assert [(r["event_id"], r["status"]) for r in results] == [
        ("b-1", "queued"), ("b-2", "rejected"), ("b-old", "duplicate"), (None, "rejected"), ("b-3", "queued"),
        ("b-1", "duplicate"),
    ]
    assert results[1]["error"] == {"code": "invalid_event", "message": "recipients: Shorter than minimum length 1."}
    assert results[3]["error"]["message"].startswith("event_id: Missing data")
    await run_worker_burst(publishing)
    assert (await repository.count_unread("u1"), await repository.count_unread("u2")) == (2, 1)
    metrics = await (await node.get("/metrics")).text()
    assert 'notify_published_events_total{status="queued"} 3.0' in metrics
    assert 'notify_published_events_total{status="rejected"} 2.0' in metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": []}, "events: Length must be between 1 and 1000."),
        ({"events": [claim_rejected(f"e{i}", "u1") for i in range(1001)]},
         "events: Length must be between 1 and 1000."),
        ({"events": "many"}, "events: Not a valid list."),
        ({}, "events: Missing data for required field."),
        ({"events": [claim_rejected("e", "u1")], "extra": 1}, "extra: Unknown field."),
        ([claim_rejected("e", "u1")], 'the body must be a JSON object: {"events": [...]}'),
    ],
    ids=["empty", "too-many", "not-a-list", "missing", "extra-key", "bare-list"],
)
async def test_a_malformed_batch_is_400(
    aiohttp_client, settings: Settings, body: Any, message: str
) -> None:
    roomy = settings.replace(publish={"api_key_hashes": (DIGEST,)})  # the 1,001 events need room
    client = await start_node(aiohttp_client, roomy)

    error = await error_of(await client.post("/api/events/batch", json=body, headers=headers()), 400)

    assert error["code"] == "bad_request" and message in error["message"], error


async def test_a_full_batch_of_1000_events_is_queued_in_one_call(
    aiohttp_client, settings: Settings, redis_client: Any
) -> None:
    client = await start_node(aiohttp_client, settings.replace(publish={"api_key_hashes": (DIGEST,)}))
    events = [claim_rejected(f"full-{i}", f"u{i % 7}") for i in range(1000)]

    response = await client.post("/api/events/batch", json={"events": events}, headers=headers())

    assert response.status == 202
    assert {r["status"] for r in (await response.json())["results"]} == {"queued"}
    assert await redis_client.zcard(settings.queues.events) == 1000


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("TRACE", "/api/events", {"POST"}),
    ("GET", "/api/events/batch", {"POST"}),
    ("DELETE", "/api/notifications/read-all", {"POST"}),
])
async def test_a_405_names_the_allowed_methods(node: TestClient, method: str, path: str, allowed: set[str]) -> None:
    """RFC 9110 §15.5.6: a 405 carries Allow, with the JSON error body of every other API error."""
    response = await node.request(method, path, headers=headers())

    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert {m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()} == allowed
