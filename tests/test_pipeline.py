"""The event pipeline end to end (SPEC §5): producer -> Redis -> arq worker -> Postgres.

Events go through `notify_server.ingest.producer.enqueue_event` and the real worker in burst mode; a few
tests run the worker's pipeline on one event directly (tests.helpers.process_one) to run the same event
twice or to make the database unreachable.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.jobs import Job
from redis.asyncio import Redis

from notify_server.core.constants import JOB_PROCESS_EVENT
from notify_server.core.settings import Settings
from notify_server.core.stores import Fault
from notify_server.ingest.jobcodec import arq_deserializer
from notify_server.ingest.producer import arq_pool, enqueue_event
from notify_server.storage.notifications import NotificationRepository
from notify_server.transport.presence import Presence
from notify_server.transport.push import decode_job, stream_key
from tests.helpers import mark_all_read, process_one, run_worker_burst, worker_context
from workers.context import WorkerContext
from workers.pipeline import StoreUnavailable

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/x"


def claim_rejected(event_id: str = "evt-1", **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "event_type": "CLAIM_REJECTED",
        "recipients": [{"user_id": "u1", "email": "u1@example.com"}, {"user_id": "u2"}],
        "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"},
    }
    event.update(overrides)
    return event


async def stored_rows(pool: Any, event_id: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT recipient_id, recipient_email, event_id, event_type, title, body, priority, action_url,"
        " metadata, created_at, read_at FROM notifications"
    )
    params: tuple[Any, ...] = ()
    if event_id is not None:
        sql += " WHERE event_id = %s"
        params = (event_id,)
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql + " ORDER BY recipient_id", params)
        names = [column.name for column in cur.description]
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def row_count(pool: Any) -> int:
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM notifications")
        (count,) = await cur.fetchone()
    return int(count)


def job(redis_client: Redis, settings: Settings, job_id: str) -> Job:
    return Job(job_id, arq_pool(redis_client), _queue_name=settings.queues.events, _deserializer=arq_deserializer)


async def job_result(redis_client: Redis, settings: Settings, job_id: str) -> Any:
    return await job(redis_client, settings, job_id).result(timeout=5)


async def enqueue(redis_client: Redis, settings: Settings, event: Any) -> Job | None:
    return await enqueue_event(redis_client, event, queue_name=settings.queues.events)


async def enqueue_raw(redis_client: Redis, settings: Settings, payload: Any, job_id: str) -> None:
    """What a producer that skips the helper's checks puts on the queue (any language can write jobs)."""
    queued = await arq_pool(redis_client).enqueue_job(
        JOB_PROCESS_EVENT, payload, _job_id=job_id, _queue_name=settings.queues.events
    )
    assert queued is not None


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[WorkerContext]:
    async with worker_context(settings) as job_ctx:
        yield job_ctx


@pytest.fixture
async def unreachable_ctx(settings: Settings) -> AsyncIterator[WorkerContext]:
    """A worker ctx whose Postgres refuses connections (a real pool, pointed at a closed port)."""
    broken = settings.replace(database={"url": UNREACHABLE_DATABASE_URL, "pool_min_size": 0})
    async with worker_context(broken) as job_ctx:
        yield job_ctx


# ---------------------------------------------------------------- stored and rendered


async def test_two_recipients_get_two_rendered_rows(settings: Settings, redis_client: Redis, db_pool: Any) -> None:
    await enqueue(redis_client, settings, claim_rejected("evt-1"))

    await run_worker_burst(settings)

    assert await job_result(redis_client, settings, "evt-1") == {"status": "stored", "recipients": 2, "stored": 2, "muted": 0}
    rows = await stored_rows(db_pool)
    assert [(r["recipient_id"], r["recipient_email"]) for r in rows] == [("u1", "u1@example.com"), ("u2", None)]
    for row in rows:
        assert row["event_id"] == "evt-1"
        assert row["event_type"] == "CLAIM_REJECTED"
        assert row["title"] == "Claim Rejected"
        assert row["body"] == "Your claim for Dr. Smith has been rejected."
        assert row["priority"] == "HIGH"
        assert row["action_url"] == "/claims/abc123"
        assert row["metadata"] == {}
        assert row["read_at"] is None


async def test_event_priority_and_action_url_override_the_template(
    settings: Settings, redis_client: Redis, db_pool: Any
) -> None:
    await enqueue(redis_client, settings, claim_rejected("evt-1", priority="URGENT", action_url="/custom/1"))

    await run_worker_burst(settings)

    rows = await stored_rows(db_pool)
    assert {(r["priority"], r["action_url"]) for r in rows} == {("URGENT", "/custom/1")}


async def test_metadata_is_stored_as_sent(settings: Settings, redis_client: Redis, db_pool: Any) -> None:
    metadata = {"claim": {"id": "abc123", "lines": [1, 2.5, None, True]}, "é": "✓"}
    await enqueue(redis_client, settings, claim_rejected("evt-1", metadata=metadata))

    await run_worker_burst(settings)

    assert [r["metadata"] for r in await stored_rows(db_pool)] == [metadata, metadata]


async def test_braces_in_data_stay_literal(settings: Settings, redis_client: Redis, db_pool: Any) -> None:
    data = {"provider_name": "{claim_id} {provider_name.__class__}", "claim_id": "{{x}}"}
    await enqueue(redis_client, settings, claim_rejected("evt-1", data=data))

    await run_worker_burst(settings)

    [row, _] = await stored_rows(db_pool)
    assert row["body"] == "Your claim for {claim_id} {provider_name.__class__} has been rejected."
    assert row["action_url"] == "/claims/{{x}}"


async def test_recipient_listed_twice_gets_one_row(settings: Settings, redis_client: Redis, db_pool: Any) -> None:
    recipients = [{"user_id": "u1"}, {"user_id": "u1", "email": "u1@example.com"}]
    await enqueue(redis_client, settings, claim_rejected("evt-1", recipients=recipients))

    await run_worker_burst(settings)

    assert [r["recipient_id"] for r in await stored_rows(db_pool)] == ["u1"]


@pytest.mark.slow
async def test_ten_thousand_recipients_are_all_stored_in_one_transaction(
    settings: Settings, redis_client: Redis, db_pool: Any
) -> None:
    recipients = [{"user_id": f"user-{n}"} for n in range(10_000)]
    await enqueue(redis_client, settings, claim_rejected("evt-big", recipients=recipients))

    await run_worker_burst(settings)

    assert (await job_result(redis_client, settings, "evt-big"))["stored"] == 10_000
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT count(*), count(DISTINCT recipient_id), count(DISTINCT created_at) FROM notifications"
        )
        # One statement in one transaction: every row carries that transaction's now().
        assert await cur.fetchone() == (10_000, 10_000, 1)


# ---------------------------------------------------------------- idempotency


async def test_duplicate_event_enqueued_after_processing_is_not_queued_again(
    settings: Settings, redis_client: Redis, db_pool: Any
) -> None:
    await enqueue(redis_client, settings, claim_rejected("evt-1"))
    await run_worker_burst(settings)

    assert await enqueue(redis_client, settings, claim_rejected("evt-1")) is None
    await run_worker_burst(settings)

    assert await row_count(db_pool) == 2


async def test_duplicate_event_after_its_result_expired_stores_no_second_row(
    settings: Settings, redis_client: Redis, db_pool: Any
) -> None:
    await enqueue(redis_client, settings, claim_rejected("evt-1"))
    await run_worker_burst(settings)
    await redis_client.delete("arq:result:evt-1")  # what keep_result's expiry does, without waiting for it

    assert await enqueue(redis_client, settings, claim_rejected("evt-1")) is not None
    await run_worker_burst(settings)

    assert await job_result(redis_client, settings, "evt-1") == {"status": "stored", "recipients": 2, "stored": 0, "muted": 0}
    assert await row_count(db_pool) == 2


async def test_same_job_processed_twice_stores_no_second_row(ctx: WorkerContext, db_pool: Any) -> None:
    event = claim_rejected("evt-1")

    first = await process_one(ctx, copy.deepcopy(event))
    second = await process_one(ctx, copy.deepcopy(event), job_try=2)

    assert (first["stored"], second["stored"]) == (2, 0)
    assert await row_count(db_pool) == 2


async def test_same_job_processed_twice_at_once_stores_each_row_once(ctx: WorkerContext, db_pool: Any) -> None:
    event = claim_rejected("evt-1")

    results = await asyncio.gather(*(process_one(ctx, copy.deepcopy(event)) for _ in range(4)))

    assert sum(result["stored"] for result in results) == 2
    assert await row_count(db_pool) == 2


async def test_rows_read_before_a_duplicate_stay_read(ctx: WorkerContext, repository: NotificationRepository) -> None:
    await process_one(ctx, claim_rejected("evt-1"))
    assert await mark_all_read(repository, "u1") == 1

    await process_one(ctx, claim_rejected("evt-1"))

    assert await repository.count_unread("u1") == 0


# ---------------------------------------------------------------- malformed events


def without(key: str) -> dict[str, Any]:
    event = claim_rejected("bad")
    del event[key]
    return event


MALFORMED: list[tuple[str, Any, str]] = [
    ("missing-event-id", without("event_id"), "event_id"),
    ("event-id-too-long", claim_rejected("e" * 201), "event_id"),
    ("missing-event-type", without("event_type"), "event_type"),
    ("unknown-event-type", claim_rejected("bad", event_type="NO_SUCH_EVENT"), "event_type"),
    ("missing-template-variable", claim_rejected("bad", data={"claim_id": "abc123"}), "provider_name"),
    ("non-scalar-template-value", claim_rejected("bad", data={"provider_name": ["x"], "claim_id": "c"}),
     "provider_name"),
    ("missing-recipients", without("recipients"), "recipients"),
    ("recipients-empty", claim_rejected("bad", recipients=[]), "recipients"),
    ("recipients-10001", claim_rejected("bad", recipients=[{"user_id": f"u{n}"} for n in range(10_001)]),
     "recipients"),
    ("recipient-without-user-id", claim_rejected("bad", recipients=[{"email": "a@example.com"}]), "user_id"),
    ("bad-email", claim_rejected("bad", recipients=[{"user_id": "u1", "email": "not an email"}]), "email"),
    ("bad-priority", claim_rejected("bad", priority="CRITICAL"), "priority"),
    ("metadata-over-4kb", claim_rejected("bad", metadata={"blob": "x" * 4100}), "metadata"),
    ("metadata-not-object", claim_rejected("bad", metadata=["x"]), "metadata"),
    ("nul-in-data", claim_rejected("bad", data={"provider_name": "Dr.\x00Smith", "claim_id": "c"}), "data"),
    ("nul-in-user-id", claim_rejected("bad", recipients=[{"user_id": "u\x001"}]), "user_id"),
    ("non-dict-event", ["CLAIM_REJECTED", "u1"], "event"),
    ("string-event", "CLAIM_REJECTED", "event"),
    ("unknown-top-level-key", claim_rejected("bad", colour="red"), "colour"),
]


@pytest.mark.parametrize(("payload", "field"), [(p, f) for _, p, f in MALFORMED], ids=[i for i, _, _ in MALFORMED])
async def test_malformed_event_is_rejected_naming_the_field_and_the_next_event_is_processed(
    settings: Settings, redis_client: Redis, db_pool: Any, payload: Any, field: str
) -> None:
    await enqueue_raw(redis_client, settings, payload, job_id="bad-job")
    await enqueue(redis_client, settings, claim_rejected("evt-after"))

    await run_worker_burst(settings)

    rejected = await job_result(redis_client, settings, "bad-job")
    assert rejected["status"] == "rejected"
    assert field in rejected["reason"]
    info = await job(redis_client, settings, "bad-job").result_info()
    assert info is not None and info.job_try == 1  # not retried
    assert (await job_result(redis_client, settings, "evt-after"))["status"] == "stored"
    assert {r["event_id"] for r in await stored_rows(db_pool)} == {"evt-after"}


async def test_enqueue_event_refuses_an_event_without_event_id(settings: Settings, redis_client: Redis) -> None:
    with pytest.raises(ValueError, match="event_id"):
        await enqueue(redis_client, settings, without("event_id"))


async def test_rejected_event_stores_nothing_even_for_its_valid_recipients(ctx: WorkerContext, db_pool: Any) -> None:
    event = claim_rejected("evt-1", recipients=[{"user_id": "u1"}, {"user_id": ""}])

    result = await process_one(ctx, event)

    assert result["status"] == "rejected"
    assert "recipients.1.user_id" in result["reason"]
    assert await row_count(db_pool) == 0


# ---------------------------------------------------------------- transient failures


async def test_unreachable_database_raises_retry_and_stores_nothing(
    unreachable_ctx: WorkerContext, settings: Settings, db_pool: Any
) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await process_one(unreachable_ctx, claim_rejected("evt-1"))

    assert caught.value.fault is Fault.TRANSIENT  # kept and retried by the worker, never given up
    assert await row_count(db_pool) == 0


async def test_retried_event_is_stored_once_the_database_is_back(
    unreachable_ctx: WorkerContext, ctx: WorkerContext, db_pool: Any
) -> None:
    event = claim_rejected("evt-1")
    with pytest.raises(StoreUnavailable):
        await process_one(unreachable_ctx, copy.deepcopy(event))

    result = await process_one(ctx, copy.deepcopy(event), job_try=2)

    assert result["stored"] == 2
    assert await row_count(db_pool) == 2


async def test_a_large_event_stores_and_pushes_its_online_recipients_first(
    settings: Settings, redis_client: Redis, db_pool: Any
) -> None:
    """600 recipients, 5 of them held by a node: their rows are committed (lower seq) and pushed before
    the 595 offline ones are stored; every row is stored once and only the online ones are pushed."""
    recipients = [f"u{i:03d}" for i in range(600)]
    online = recipients[100:600:120]
    await Presence(redis_client, ttl_s=60).add("n1", online)
    event = claim_rejected("big", recipients=[{"user_id": u} for u in recipients])
    await enqueue(redis_client, settings, event)

    await run_worker_burst(settings)

    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT recipient_id FROM notifications WHERE event_id = 'big' ORDER BY seq")
        order = [row[0] for row in await cur.fetchall()]
    assert sorted(order) == recipients
    assert set(order[: len(online)]) == set(online)
    entries = await redis_client.xrange(stream_key("n1"))
    pushed = [item.user_id for _, fields in entries for item in decode_job(fields[b"j"]).items]
    assert sorted(pushed) == sorted(online)
    assert await job_result(redis_client, settings, "big") == {"status": "stored", "recipients": 600, "stored": 600, "muted": 0}
