"""Metrics move with connections and events; logs never carry tokens; JSON log lines parse."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from notify_server.core.logs import JsonFormatter, RedactingFormatter, redact
from notify_server.core.settings import Settings
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.sessions import SessionStore
from notify_server.web.app import create_app
from tests.helpers import run_worker_burst


def samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


async def metrics_of(client: TestClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return samples(await response.text())


async def test_metrics_count_connections_auth_failures_and_pushes(
    settings: Settings, aiohttp_client, sessions: SessionStore, redis_client
) -> None:
    client = await aiohttp_client(create_app(settings, node_id="metrics-node"))
    before = await metrics_of(client)
    assert before["notify_open_connections"] == 0

    token = (await sessions.create("alice", 60)).token
    ws = await client.ws_connect("/ws/notifications", params={"token": token})
    await ws.receive_json(timeout=5)
    refused = await client.ws_connect("/ws/notifications", params={"token": "not-a-session"})
    await refused.receive(timeout=5)
    await enqueue_event(redis_client, {
        "event_id": "metrics-1", "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "alice"}],
        "data": {"provider_name": "P", "claim_id": "1"},
    })
    await run_worker_burst(settings)
    assert (await ws.receive_json(timeout=5))["type"] == "notification"
    await ws.receive_json(timeout=5)  # its unread count

    during = await metrics_of(client)
    assert during["notify_open_connections"] == 1
    assert during["notify_connects_total"] == before["notify_connects_total"] + 1
    assert during["notify_auth_failures_total{surface=websocket}"] == 1
    assert during["notify_push_jobs_total"] >= 1
    assert during["notify_frames_pushed_total"] >= 3  # count on connect, the notification, the new count
    assert during["notify_push_latency_seconds_count"] >= 1

    await ws.close()
    for _ in range(50):
        after = await metrics_of(client)
        if after["notify_open_connections"] == 0:
            break
    assert after["notify_open_connections"] == 0
    assert after["notify_disconnects_total{code=1000}"] == 1
    assert after["notify_disconnects_total{code=4001}"] == 1


async def test_worker_metrics_count_processed_and_rejected_events(settings: Settings, redis_client) -> None:
    await enqueue_event(redis_client, {
        "event_id": "ok-1", "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "u1"}, {"user_id": "u2"}],
        "data": {"provider_name": "P", "claim_id": "1"},
    })
    await enqueue_event(redis_client, {"event_id": "bad-1", "event_type": "NO_SUCH_TYPE", "recipients": [{"user_id": "u1"}]})

    worker = await run_worker_burst(settings)

    found = samples(_render(worker))
    assert found["notify_events_processed_total"] == 1
    assert found["notify_notifications_stored_total"] == 2
    assert found["notify_events_rejected_total{reason=event_type}"] == 1
    assert found["notify_event_job_duration_seconds_count"] >= 1


def _render(worker) -> str:
    from notify_server.core.metrics import render

    return render(worker.metrics.registry).decode()


def test_tokens_are_redacted_from_access_log_lines_and_headers() -> None:
    line = '127.0.0.1 "GET /ws/notifications?token=abc.DEF-123_x&since=9 HTTP/1.1" 101 0'
    assert "abc.DEF-123_x" not in redact(line)
    assert "token=[redacted]" in redact(line)
    assert "since=9" in redact(line)
    assert "s3cr3t" not in redact("Authorization: Bearer s3cr3t")
    assert "s3cr3t" not in redact("Cookie: session_id=s3cr3t; theme=dark")


def test_redacting_formatter_rewrites_records_and_tracebacks_from_any_logger() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(JsonFormatter()))
    logger = logging.getLogger("aiohttp.access.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('%s "%s"', "127.0.0.1", "GET /ws/notifications?token=SECRETTOKEN HTTP/1.1")
        try:
            raise ValueError("Got more than 8190 bytes: b'Cookie: session_id=COOKIETOKEN; theme=dark'")
        except ValueError:
            logger.exception("Error handling request")
    finally:
        logger.removeHandler(handler)
    first, second = stream.getvalue().strip().splitlines()
    entry = orjson.loads(first)  # one JSON object per line
    assert entry["level"] == "WARNING" and entry["logger"] == "aiohttp.access.test"
    assert "SECRETTOKEN" not in first
    assert "COOKIETOKEN" not in second and "theme=dark" in orjson.loads(second)["exc"]


async def test_worker_serves_its_metrics_on_its_own_port(settings: Settings, redis_client) -> None:
    import aiohttp

    from tests.processes import free_port
    from workers.consumer import EventConsumer

    port = free_port()
    worker = EventConsumer(settings, poll_delay=0.01, handle_signals=False, metrics_port=port)
    running = asyncio.get_running_loop().create_task(worker.main())
    try:
        await enqueue_event(redis_client, {
            "event_id": "served-1", "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "u1"}],
            "data": {"provider_name": "P", "claim_id": "1"},
        })
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                        found = samples(await response.text())
                    if found.get("notify_events_processed_total") == 1:
                        break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.02)
        assert found["notify_events_processed_total"] == 1
    finally:
        worker.stop()
        await running
        await worker.close()


async def test_client_chosen_close_codes_share_one_disconnect_label(
    settings: Settings, aiohttp_client, sessions: SessionStore
) -> None:
    """A client picks its close code (any of 3000-65535): the metric must not grow a series per code."""
    client = await aiohttp_client(create_app(settings, node_id="labels-node"))
    token = (await sessions.create("alice", 60)).token
    for code in (3000, 3456, 4999, 5000, 65535):
        ws = await client.ws_connect("/ws/notifications", params={"token": token})
        await ws.receive_json(timeout=5)
        await ws.close(code=code)
    for _ in range(100):
        after = await metrics_of(client)
        if after.get("notify_disconnects_total{code=other}") == 5:
            break
        await asyncio.sleep(0.02)

    disconnects = {name: value for name, value in after.items() if name.startswith("notify_disconnects_total")}
    assert disconnects == {"notify_disconnects_total{code=other}": 5}, disconnects


def test_a_token_parameter_whose_name_is_percent_encoded_is_redacted() -> None:
    """aiohttp decodes parameter names (`?%74oken=` is `?token=`) and authenticates with them."""
    for query in ("%74oken=SECRET1", "t%6Fken=SECRET1", "%74%6F%6B%65%6E=SECRET1", "since=9&%54OKEN=SECRET1",
                  "tok%65n=SECRET1&since=9", "%73ession_id=SECRET1"):
        line = f'127.0.0.1 "GET /ws/notifications?{query} HTTP/1.1" 101 0'
        assert "SECRET1" not in redact(line), query
        assert "[redacted]" in redact(line), query
    kept = '127.0.0.1 "GET /api/notifications?before=%41bc&limit=5 HTTP/1.1" 200 10'
    assert redact(kept) == kept


def test_a_log_message_stays_on_one_line_whatever_its_values_hold() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s")))
    logger = logging.getLogger("notify.test.lines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("event rejected reason=%s", "x\nERROR notify.fake: forged\r\x1b[2J\u2028end")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed on %s", "a\nb")
    finally:
        logger.removeHandler(handler)
    first, second, *traceback = stream.getvalue().splitlines()
    assert first == "WARNING notify.test.lines: event rejected reason=x\\nERROR notify.fake: forged\\r\\x1b[2J\\u2028end"
    assert second == "ERROR notify.test.lines: failed on a\\nb"
    assert traceback[0] == "Traceback (most recent call last):"  # tracebacks keep their lines
