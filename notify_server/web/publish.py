"""The HTTP publish API (server to server): `POST /api/events` and `POST /api/events/batch`.

A producer in any language sends events in the existing contract (SPEC §5) with `X-API-Key`. Each event
is validated by the worker's own rules (notify_server.ingest.events.parse_event) and enqueued through the same
producer path (notify_server.ingest.producer.enqueue_events: one round trip for a whole batch). No user session
or cookie is accepted here; the API key is the only credential, and it authenticates nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from notify_server.auth.apikeys import ApiKeyRing
from notify_server.core.schemas import MAX_EVENT_ID_CHARS, first_error
from notify_server.ingest.events import EventRejected, event_id_for_log, parse_event
from notify_server.ingest.producer import NotReplicated, enqueue_events
from notify_server.web import appkeys
from notify_server.web.api import json_error
from notify_server.web.bodies import read_json_body

logger = logging.getLogger("notify.publish")

API_KEY_HEADER = "X-API-Key"
BATCH_MAX_EVENTS = 1000

QUEUED = "queued"
DUPLICATE = "duplicate"
REJECTED = "rejected"


class BatchSchema(Schema):
    class Meta:
        unknown = RAISE

    events = fields.List(fields.Raw(allow_none=True), required=True,
                         validate=validate.Length(min=1, max=BATCH_MAX_EVENTS))


_BATCH = BatchSchema()


def _require_api_key(request: web.Request) -> None:
    if not request.app[appkeys.API_KEYS].accepts(request.headers.get(API_KEY_HEADER)):
        request.app[appkeys.METRICS].auth_failures.labels("publish").inc()
        raise web.HTTPUnauthorized(reason=f"a valid {API_KEY_HEADER} header is required")


async def _json_body(request: web.Request) -> Any:
    """The body as JSON, read up to `publish.max_body_bytes` (413 beyond, whatever Content-Length says)."""
    raw = await read_json_body(request, request.app[appkeys.SETTINGS].publish.max_body_bytes,
                               "publish.max_body_bytes")
    if raw is None:  # an empty body is not an event
        raise web.HTTPBadRequest(reason="the body must be JSON")
    return raw


def _echoed_id(raw: Any) -> str | None:
    """The event id to name in a rejection, when the event has a usable one."""
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return event_id if isinstance(event_id, str) and 0 < len(event_id) <= MAX_EVENT_ID_CHARS else None


async def _publish(request: web.Request, raw_events: Sequence[Any]) -> list[dict[str, Any]]:
    """One result per event, in order: valid ones enqueued together, invalid ones rejected alone."""
    app = request.app
    settings = app[appkeys.SETTINGS]
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, dict[str, Any]]] = []
    for index, raw in enumerate(raw_events):
        try:
            parse_event(raw, settings.templates)
        except EventRejected as exc:
            logger.info("publish: event rejected event_id=%s reason=%s", event_id_for_log(raw), exc)
            results.append({"event_id": _echoed_id(raw), "status": REJECTED,
                            "error": {"code": "invalid_event", "message": str(exc)}})
            continue
        valid.append((index, raw))
        results.append({"event_id": raw["event_id"], "status": QUEUED})
    if valid:
        try:
            jobs = await enqueue_events(
                app[appkeys.REDIS], [raw for _, raw in valid], queue_name=settings.queues.events,
                min_replicas_acked=settings.redis.min_replicas_acked,
                replica_ack_timeout_ms=settings.redis.replica_ack_timeout_ms,
            )
        except NotReplicated as exc:  # queued on the primary, maybe not on a replica: the producer retries
            logger.warning("publish: %d event(s) not confirmed by enough replicas (%d of %d)", len(valid),
                           exc.acked, exc.required)
            raise web.HTTPServiceUnavailable(reason=(
                f"not confirmed by enough Redis replicas ({exc.acked} of {exc.required}); retry with the same "
                "event_id (a retry of an event that was queued answers duplicate)")) from None
        for (index, _), job in zip(valid, jobs, strict=True):
            if job is None:
                results[index]["status"] = DUPLICATE
    for result in results:
        app[appkeys.METRICS].published.labels(result["status"]).inc()
    return results


async def publish_event(request: web.Request) -> web.Response:
    """`POST /api/events`: 202 {"event_id", "status": "queued" | "duplicate"}; 400 naming the field."""
    _require_api_key(request)
    raw = await _json_body(request)
    (result,) = await _publish(request, [raw])
    if result["status"] == REJECTED:
        return json_error(400, result["error"]["code"], result["error"]["message"])
    return web.json_response(result, status=202)


async def publish_batch(request: web.Request) -> web.Response:
    """`POST /api/events/batch` {"events": [...]}: 202 {"results": [one per event, in order]}."""
    _require_api_key(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        return json_error(400, "bad_request", 'the body must be a JSON object: {"events": [...]}')
    try:
        events = _BATCH.load(body)["events"]
    except ValidationError as exc:
        return json_error(400, "bad_request", first_error(exc.messages))
    return web.json_response({"results": await _publish(request, events)}, status=202)


def add_routes(app: web.Application) -> None:
    app[appkeys.API_KEYS] = ApiKeyRing(app[appkeys.SETTINGS].publish.api_key_hashes)
    app.router.add_post("/api/events", publish_event)
    app.router.add_post("/api/events/batch", publish_batch)
