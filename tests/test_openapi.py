"""`GET /api/openapi.json` (issue 12): a valid OpenAPI 3.1 document that cannot drift from the code.

The document is validated with openapi-spec-validator; its paths are exactly the app's REST routes; and
real responses of a real node — every documented status of every operation, success and error alike,
503s from a node whose stores are away — are checked against its schemas, and each must be documented.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from notify_server.core.settings import Settings
from notify_server.core.vapid_keys import b64url, create_key_file, public_key_bytes
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient
from notify_server.storage.sessions import SessionStore
from notify_server.web.app import create_app
from notify_server.web.inbox import BULK_MAX_BODY_BYTES
from notify_server.web.openapi import OPENAPI_PATH, build_document
from tests.fakes import claim_rejected, start_node
from tests.helpers import insert
from tests.test_api import store
from tests.test_publish import DIGEST, KEY
from tests.tokens import hs256_key

DOCUMENT_URI = "urn:notify-server:openapi"
# Not REST: the streaming transports (described in the README, like their frames) and the browser client.
NOT_REST = {"/ws/notifications", "/sse/notifications", "/static/notify-client.js",
            "/static/notify-sw.js"}  # the last: the Web Push service worker (issue 20)
UNREACHABLE = {"database": {"url": "postgresql://postgres@127.0.0.1:1/none"}, "redis": {"url": "redis://127.0.0.1:1/0"}}


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class Conformance:
    """Checks real responses against the document and remembers which (path, method, status) it saw."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self.seen: set[tuple[str, str, str]] = set()

    def documented(self) -> set[tuple[str, str, str]]:
        return {(path, method, status) for path, operations in self.document["paths"].items()
                for method, operation in operations.items() for status in operation["responses"]}

    async def check(self, path: str, method: str, pending: Awaitable[ClientResponse]) -> ClientResponse:
        response = await pending
        status = str(response.status)
        responses = self.document["paths"][path][method]["responses"]
        assert status in responses, f"{method.upper()} {path} answered {status}: undocumented ({await response.text()})"
        content = responses[status]["content"]
        assert response.content_type in content, f"{method.upper()} {path} {status}: {response.content_type}"
        body: Any = await response.json() if response.content_type == "application/json" else await response.text()
        pointer = _pointer("paths", path, method, "responses", status, "content", response.content_type, "schema")
        validator = Draft202012Validator({"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=self.registry,
                                         format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, f"{method.upper()} {path} {status}: {errors[0].message} in {body!r}"
        self.seen.add((path, method, status))
        return response


@pytest.fixture
def configured(settings: Settings, tmp_path: Path) -> Settings:
    return hs256_key().settings(settings, tmp_path).replace(publish={"api_key_hashes": (DIGEST,),
                                                                     "max_body_bytes": 4096})


async def test_the_served_document_is_valid_openapi_3_1(aiohttp_client, configured: Settings) -> None:
    client = await aiohttp_client(create_app(configured))

    response = await client.get(OPENAPI_PATH)

    assert response.status == 200 and response.content_type == "application/json"
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    validate_spec(document)
    assert document == build_document(configured)


def test_every_rest_route_is_documented_and_nothing_else(configured: Settings) -> None:
    app = create_app(configured)
    routes = {(resource.canonical, route.method.lower())
              for resource in app.router.resources() for route in resource
              if route.method != "HEAD" and resource.canonical not in NOT_REST}

    documented = {(path, method) for path, operations in build_document(configured)["paths"].items()
                  for method in operations}

    assert routes == documented


async def test_real_responses_of_every_documented_status_conform(
    aiohttp_client, configured: Settings, sessions: SessionStore, repository: NotificationRepository
) -> None:
    node = await start_node(aiohttp_client, configured)
    away = await aiohttp_client(create_app(configured.replace(**UNREACHABLE), node_id="away"))
    conformance = Conformance(build_document(configured))
    check = conformance.check
    token = (await sessions.create("alice", ttl_s=3600)).token
    user = {"Authorization": "Bearer " + token}
    cookie_from_elsewhere = {"Cookie": "session_id=" + token, "Origin": "http://evil.example"}
    publisher = {"X-API-Key": KEY}
    (notification_id,) = await store(repository, "alice", 1)
    oversized = b"x" * (configured.limits.request_max_bytes + 1)
    over_publish = b"x" * (configured.publish.max_body_bytes + 1)

    # The user API.
    listed = await check("/api/notifications", "get", node.get("/api/notifications", headers=user))
    assert len((await listed.json())["items"]) == 1
    await check("/api/notifications", "get", node.get("/api/notifications?limit=0", headers=user))
    await check("/api/notifications", "get", node.get("/api/notifications"))
    await check("/api/notifications", "get", away.get("/api/notifications", headers=user))
    for url in ("/api/notifications/unread-count",):
        await check(url, "get", node.get(url, headers=user))
        await check(url, "get", node.get(url))
        await check(url, "get", away.get(url, headers=user))
    for action in ("read", "unread", "seen", "archive", "unarchive"):
        path, url = f"/api/notifications/{{notification_id}}/{action}", f"/api/notifications/{notification_id}/{action}"
        await check(path, "post", node.post(url, headers=user))
        await check(path, "post", node.post(url))
        await check(path, "post", node.post(url, headers=cookie_from_elsewhere))
        await check(path, "post", node.post(f"/api/notifications/{uuid.uuid4()}/{action}", headers=user))
        await check(path, "post", node.post(url, headers=user, data=oversized))
        await check(path, "post", away.post(url, headers=user))
    for route in ("read-all", "seen-all", "archive-all"):
        path = f"/api/notifications/{route}"
        await check(path, "post", node.post(path, headers=user))
        await check(path, "post", node.post(path, headers=user, json={"filter": {"priority": "HIGH,URGENT"}}))
        await check(path, "post", node.post(path, headers=user, json={"filter": {"priority": ["NOW"]}}))
        await check(path, "post", node.post(path))
        await check(path, "post", node.post(path, headers=cookie_from_elsewhere))
        await check(path, "post", node.post(path, headers=user, data=oversized))
        await check(path, "post", away.post(path, headers=user))
    bulk = "/api/notifications/bulk"
    body = {"action": "unarchive", "notification_ids": [notification_id, str(uuid.uuid4())]}
    answered = await check(bulk, "post", node.post(bulk, headers=user, json=body))
    assert await answered.json() == {"updated": 1}
    await check(bulk, "post", node.post(bulk, headers=user, json={**body, "action": "delete"}))
    await check(bulk, "post", node.post(bulk, json=body))
    await check(bulk, "post", node.post(bulk, headers=cookie_from_elsewhere, json=body))
    await check(bulk, "post", node.post(bulk, headers=user, data=b"x" * (BULK_MAX_BODY_BYTES + 1)))
    await check(bulk, "post", away.post(bulk, headers=user, json=body))
    counts = "/api/notifications/counts"
    answered = await check(counts, "get", node.get(counts + "?event_type=CLAIM_REJECTED", headers=user))
    assert await answered.json() == {"unread": 0, "unseen": 0, "total": 1}  # read, seen, archived, unarchived
    await check(counts, "get", node.get(counts + "?priority=NOW", headers=user))
    await check(counts, "get", node.get(counts))
    await check(counts, "get", away.get(counts, headers=user))
    await check("/api/notifications", "get", node.get("/api/notifications?archived=all&read=false&seen=true"
                                                      "&event_type=CLAIM_REJECTED&priority=HIGH", headers=user))

    # The publish API.
    event = claim_rejected("oas-1", "alice")
    await check("/api/events", "post", node.post("/api/events", json=event, headers=publisher))
    await check("/api/events", "post", node.post("/api/events", json={**event, "priority": "NOW"}, headers=publisher))
    await check("/api/events", "post", node.post("/api/events", json=event))
    await check("/api/events", "post", node.post("/api/events", data=over_publish, headers=publisher))
    await check("/api/events", "post", away.post("/api/events", json=event, headers=publisher))
    batch = {"events": [event, claim_rejected("oas-2", "alice"), {"event_id": "bad"}]}
    answered = await check("/api/events/batch", "post", node.post("/api/events/batch", json=batch, headers=publisher))
    assert [r["status"] for r in (await answered.json())["results"]] == ["duplicate", "queued", "rejected"]
    await check("/api/events/batch", "post", node.post("/api/events/batch", json={"events": []}, headers=publisher))
    await check("/api/events/batch", "post", node.post("/api/events/batch", json=batch))
    await check("/api/events/batch", "post", node.post("/api/events/batch", data=over_publish, headers=publisher))
    await check("/api/events/batch", "post", away.post("/api/events/batch", json=batch, headers=publisher))

    # ---- issue 19: the preferences.
    prefs = "/api/preferences"
    await check(prefs, "get", node.get(prefs, headers=user))
    await check(prefs, "get", node.get(prefs))
    await check(prefs, "get", away.get(prefs, headers=user))
    change = {"categories": {"claims": {"in_app": False}}, "event_types": {"COMMENT_ADDED": {"in_app": None}}}
    changed = await check(prefs, "patch", node.patch(prefs, headers=user, json=change))
    assert (await changed.json())["categories"]["claims"] == {"in_app": False, "web_push": True}
    await check(prefs, "patch", node.patch(prefs, headers=user, json={"channels": {"sms": False}}))
    await check(prefs, "patch", node.patch(prefs, json={}))
    await check(prefs, "patch", node.patch(prefs, headers=cookie_from_elsewhere, json={}))
    await check(prefs, "patch", node.patch(prefs, headers=user, data=oversized))
    await check(prefs, "patch", away.patch(prefs, headers=user, json={}))
    # ---- end issue 19

    # Health, readiness, metrics, the document itself.
    await check(OPENAPI_PATH, "get", node.get(OPENAPI_PATH))
    await check("/healthz", "get", node.get("/healthz"))
    deadline = time.monotonic() + 10
    while (await node.get("/readyz")).status != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the node's loops report in
    await check("/readyz", "get", node.get("/readyz"))
    await check("/readyz", "get", away.get("/readyz"))
    await check("/metrics", "get", node.get("/metrics"))

    unseen = {seen for seen in conformance.documented() - conformance.seen if not seen[0].startswith(PUSH_PATHS)}
    assert unseen == set(), "documented but never seen in a real response (web push: the test below)"


# ---- web push (issue 20)
PUSH_PATHS = "/api/push/"


async def test_real_responses_of_the_web_push_routes_conform(
    aiohttp_client, configured: Settings, sessions: SessionStore, tmp_path: Path
) -> None:
    key_file = str(tmp_path / "vapid.pem")
    create_key_file(key_file)
    on = configured.replace(web_push={"enabled": True, "vapid_private_key_file": key_file,
                                      "subject": "mailto:ops@example.com",
                                      "allowed_hosts": ("fcm.googleapis.com",)})
    node = await start_node(aiohttp_client, on)
    off = await aiohttp_client(create_app(configured, node_id="off"))
    away = await aiohttp_client(create_app(on.replace(**UNREACHABLE), node_id="away"))
    conformance = Conformance(build_document(on))
    check = conformance.check
    user = {"Authorization": "Bearer " + (await sessions.create("alice", ttl_s=3600)).token}
    forged = {"Cookie": "session_id=" + user["Authorization"][7:], "Origin": "http://evil.example"}
    browser = ec.generate_private_key(ec.SECP256R1())
    subscription = {"endpoint": "https://fcm.googleapis.com/fcm/send/oas", "expirationTime": None,
                    "keys": {"p256dh": b64url(public_key_bytes(browser)), "auth": b64url(os.urandom(16))}}
    oversized = b"x" * (configured.limits.request_max_bytes + 1)
    key_path, subs = "/api/push/vapid-public-key", "/api/push/subscriptions"

    await check(key_path, "get", node.get(key_path))
    await check(key_path, "get", off.get(key_path))
    for client, kwargs in (
        (node, {"json": subscription, "headers": user}),  # 201
        (node, {"json": subscription, "headers": user}),  # 200
        (node, {"json": {**subscription, "endpoint": "https://evil.example/x"}, "headers": user}),
        (node, {"json": subscription}), (node, {"json": subscription, "headers": forged}),
        (off, {"json": subscription, "headers": user}), (node, {"data": oversized, "headers": user}),
        (away, {"json": subscription, "headers": user}),
    ):
        await check(subs, "post", client.post(subs, **kwargs))
    for client, kwargs in (
        (node, {"json": {}, "headers": user}), (node, {"json": {"endpoint": "x"}}),
        (node, {"json": {"endpoint": "x"}, "headers": forged}), (off, {"json": {"endpoint": "x"}, "headers": user}),
        (node, {"data": oversized, "headers": user}), (away, {"json": {"endpoint": "x"}, "headers": user}),
    ):
        await check(subs, "delete", client.delete(subs, **kwargs))
    deleted = await node.delete(subs, json={"endpoint": subscription["endpoint"]}, headers=user)
    assert deleted.status == 204 and "204" in conformance.document["paths"][subs]["delete"]["responses"]
    conformance.seen.add((subs, "delete", "204"))  # no body to check

    push = {seen for seen in conformance.documented() if seen[0].startswith(PUSH_PATHS)}
    assert push - conformance.seen == set(), "documented but never seen in a real response"
# ---- end web push


async def test_an_item_without_optional_values_conforms(
    aiohttp_client, configured: Settings, sessions: SessionStore, repository: NotificationRepository
) -> None:
    """A notification with every optional column empty (no action_url, read) still conforms."""
    node = await start_node(aiohttp_client, configured)
    token = (await sessions.create("bob", ttl_s=3600)).token
    (stored,) = await insert(repository, NewNotifications(
        event_id="bare", event_type="COMMENT_ADDED", title="t", body="b", priority="LOW", action_url=None,
        metadata={}, recipients=[Recipient("bob")]))
    conformance = Conformance(build_document(configured))
    headers = {"Authorization": "Bearer " + token}

    await conformance.check("/api/notifications/{notification_id}/read", "post",
                            node.post(f"/api/notifications/{stored.notification_id}/read", headers=headers))
    await conformance.check("/api/notifications", "get", node.get("/api/notifications?unread_only=true",
                                                                   headers=headers))
