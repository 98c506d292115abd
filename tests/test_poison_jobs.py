"""Poison jobs (issue 17): whatever bytes sit under a job's key, the job ends with a result naming why,
the worker goes on, and the next good event is stored and pushed.

Payloads are put raw into Redis in arq's layout (`arq:job:<id>` and the queue's sorted set), as any
writer of those keys could, each followed by a good event from arq's own producer; the real worker (the
batched consumer, in process, or the `notify-server worker` process) takes them. The decoder's own
properties are checked beside: both pickle readers against CPython's pickles, generated opcode streams
and JSON texts against the bounds, the fast path's grammar against pickletools.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import pickle
import pickletools
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from arq import create_pool
from arq.connections import ArqRedis
from arq.connections import RedisSettings as ArqRedisSettings
from arq.jobs import Job
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from notify_server.core.schemas import MAX_DATA_BYTES
from notify_server.core.settings import Settings
from notify_server.ingest import jsonshape, plainpickle
from notify_server.ingest.eventqueue import ClaimedJob, EventQueue, Outcome, now_ms, read_job
from notify_server.ingest.events import EventRejected, parse_event
from notify_server.ingest.jobcodec import MAX_JOB_BYTES, MAX_JOB_DEPTH, MAX_JOB_NODES, JobFormat
from notify_server.storage.sessions import SessionStore
from notify_server.transport.presence import Presence
from notify_server.transport.push import decode_job, stream_key
from tests import test_faults
from tests.helpers import run_worker_burst
from tests.test_faults import Processes, connect, next_notification
from workers.consumer import EventConsumer

processes = test_faults.processes

NODE = "poison-node"

# ---------------------------------------------------------------- payloads, assembled opcode by opcode


def text(value: str) -> bytes:
    """SHORT_BINUNICODE + MEMOIZE, as CPython writes a string."""
    raw = value.encode()
    return b"\x8c" + bytes((len(raw),)) + raw + b"\x94"


def arq_pickle(event_ops: bytes, *, et_ops: bytes = b"J" + struct.pack("<i", 1_700_000_000), proto: int = 4) -> bytes:
    """A job as arq writes one ({t, f, a: (event,), k, et}), its event built by `event_ops`."""
    return (b"\x80" + bytes((proto,)) + b"}\x94(" + text("t") + b"N" + text("f") + text("process_event") + text("a")
            + event_ops + b"\x85\x94" + text("k") + b"}\x94" + text("et") + et_ops + b"u.")


def event_ops(event_id: str, data_ops: bytes = b"}\x94") -> bytes:
    """An event dict whose `data` is built by `data_ops` (a well-formed event otherwise)."""
    return (b"}\x94(" + text("event_id") + text(event_id) + text("event_type") + text("CLAIM_REJECTED")
            + text("recipients") + b"]\x94}\x94" + text("user_id") + text("alice") + b"sa"
            + text("data") + data_ops + b"u")


def shared_lists_job(event_id: str, levels: int = 40) -> bytes:
    """data = {"x": L40}, L_k = [L_k-1, L_k-1]: one list referenced twice at each level through the memo."""
    prefix = arq_pickle(event_ops(event_id, b"}\x94" + text("x") + b"@@" + b"s"))
    first = prefix.split(b"@@")[0].count(b"\x94")  # the memo index the first list gets (all strings are ASCII)
    lists = b"]\x94" * (levels + 1)  # L40 .. L0, memo first .. first + levels
    lists += b"".join(b"ah" + bytes((first + levels - k + 1,)) + b"a" for k in range(1, levels + 1))
    return prefix.replace(b"@@", lists)


def json_job(event_id: str, data: bytes = b'{"provider_name":"Dr. Smith","claim_id":"c1"}', *,
             et: bytes = b"1700000000000", t: bytes = b"null") -> bytes:
    return (b'{"t":' + t + b',"f":"process_event","a":[{"event_id":"' + event_id.encode()
            + b'","event_type":"CLAIM_REJECTED","recipients":[{"user_id":"alice"}],"data":' + data + b'}],"k":{},"et":'
            + et + b"}")


def recursive_list() -> bytes:
    """A list that holds itself (CPython writes it with a memo reference to the list being filled)."""
    cycle: list[Any] = [1]
    cycle.append(cycle)
    return pickle.dumps(cycle)


def tuple_key_job() -> bytes:
    """A dict keyed by t40, t_k = (t_k-1, t_k-1) through the memo: hashing it walks 2**40 tuples."""
    return b"\x80\x04})" + b"".join(b"\x94h" + bytes((k,)) + b"\x86" for k in range(40)) + b"K\x01s."


def in_data(key: str, value_ops: bytes) -> bytes:
    """data = {key: <value_ops>}."""
    return b"}\x94" + text(key) + value_ops + b"s"


def plain_job(event: Any, **options: Any) -> bytes:
    """arq's own job layout, pickled by CPython, holding `event` (whatever it is)."""
    return pickle.dumps({"t": None, "f": "process_event", "a": (event,), "k": {}, "et": 1}, **options)


NESTED_1000 = b"]" * 1000 + b"a" * 999  # 1,000 lists, each appended into the one below
MEMORYVIEW = b"\x96" + struct.pack("<Q", 8) + b"abcdefgh\x98"  # BYTEARRAY8, READONLY_BUFFER: a read-only memoryview
# (job id, payload, what its failed result must say). The first six are the issue's.
POISON = [
    ("poison-memoryview", arq_pickle(event_ops("poison-memoryview", in_data("blob", MEMORYVIEW)), proto=5),
     "a bytearray (BYTEARRAY8)"),
    ("poison-deep-pickle", arq_pickle(event_ops("poison-deep-pickle", in_data("x", NESTED_1000))),
     "nests deeper than 64 levels"),
    ("poison-deep-json-255", json_job("poison-deep-json-255", b'{"x":' + b"[" * 255 + b"]" * 255 + b"}"),
     "nests deeper than 64 levels"),
    ("poison-deep-json-1020", json_job("poison-deep-json-1020", b'{"x":' + b"[" * 1018 + b"]" * 1018 + b"}"),
     "nests deeper than 64 levels"),
    ("poison-shared-40", shared_lists_job("poison-shared-40"),
     "holds more than 100000 values (shared ones counted each time)"),
    ("poison-shared-30", shared_lists_job("poison-shared-30", levels=30),  # shallow enough for the schema to walk
     "holds more than 100000 values (shared ones counted each time)"),
    ("poison-et-inf", arq_pickle(event_ops("poison-et-inf"), et_ops=b"G" + struct.pack(">d", math.inf)),
     "not finite (inf)"),
    ("poison-et-nan", arq_pickle(event_ops("poison-et-nan"), et_ops=b"G" + struct.pack(">d", math.nan)),
     "not finite (nan)"),
    ("poison-et-1e300", arq_pickle(event_ops("poison-et-1e300"), et_ops=b"G" + struct.pack(">d", 1e300)),
     "et (enqueue time) is not a time"),
    ("poison-et-json-1e29", json_job("poison-et-json-1e29", et=b"1e29"), "et (enqueue time) is not a time"),
    ("poison-et-json-infinity", json_job("poison-et-json-infinity", et=b"Infinity"), "job is not arq json"),
    ("poison-et-json-1e400", json_job("poison-et-json-1e400", et=b"1e400"), "job is not arq json"),
    ("poison-et-json-u64", json_job("poison-et-json-u64", et=b"18446744073709551615", t=b"99999999999999999999"),
     "et (enqueue time) is not a time"),
    ("poison-huge-int", arq_pickle(event_ops("poison-huge-int", in_data("n", b"\x8a\x20" + b"\xff" * 31 + b"\x7f"))),
     "integer wider than 64 bits"),
    ("poison-long4-et", arq_pickle(event_ops("poison-long4-et"), et_ops=b"\x8b" + struct.pack("<i", 9) + b"\x01" * 9),
     "integer wider than 64 bits"),
    ("poison-memo-bomb", b"\x80\x04Nr" + struct.pack("<I", 2**30) + b".", "memo entries out of order"),
    ("poison-tuple-key", tuple_key_job(), "holds more than 100000 values"),
    ("poison-set", plain_job({1, 2}), "a set (EMPTY_SET)"),
    ("poison-frozenset", plain_job(frozenset({1})), "a frozenset"),
    ("poison-bytearray", plain_job(bytearray(b"x"), protocol=5), "a bytearray (BYTEARRAY8)"),
    ("poison-global", plain_job(time.sleep), "refers to time.sleep"),
    ("poison-ext", b"\x80\x04\x82\x01.", "an extension code (EXT1)"),
    ("poison-persid", b"\x80\x04\x8c\x01x\x94Q.", "a persistent id (BINPERSID)"),
    ("poison-recursive", recursive_list(), "grows a container after sharing it"),
    ("poison-truncated", pickle.dumps({"t": None, "f": "process_event", "a": ({"event_id": "x"},)})[:-9],
     "truncated or malformed"),
    ("poison-not-json", b'{"t": null, "f": "process_event", "a": [NaN]}', "job is not arq json"),
    ("poison-empty", b"", "job is not arq json"),
    ("poison-not-a-mapping", b"[1, 2, 3]", "not a mapping"),
]


# ---------------------------------------------------------------- Redis and the database


async def put_raw(redis: Redis, queue: str, job_id: str | bytes, payload: bytes, score: float | None = None) -> None:
    """A job as any writer of arq's keys can put one: its bytes under arq:job:<id>, its id on the queue."""
    key_id = job_id.encode() if isinstance(job_id, str) else job_id
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(b"arq:job:" + key_id, payload, px=86_400_000)
        pipe.zadd(queue, {key_id: now_ms() - 1 if score is None else score})
        await pipe.execute()


async def result_of(redis: Redis, job_id: str | bytes) -> dict[str, Any] | None:
    """The result record the worker wrote (our own bytes: pickle.loads is safe on them)."""
    key_id = job_id.encode() if isinstance(job_id, str) else job_id
    raw = await redis.get(b"arq:result:" + key_id)
    if raw is None:
        return None
    record: dict[str, Any] = pickle.loads(raw) if raw[:1] == b"\x80" else orjson.loads(raw)
    return record


def reason_of(record: dict[str, Any]) -> str:
    result = record["r"]
    return str(result) if isinstance(result, BaseException) else str(result.get("reason"))


def good_event(event_id: str, user_id: str = "alice") -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": user_id}],
            "data": {"provider_name": "Dr. Smith", "claim_id": event_id}}


def good_json_job(event_id: str) -> bytes:
    """A good event as the README's raw JSON producers write it."""
    return orjson.dumps({"t": None, "f": "process_event", "a": [good_event(event_id)], "k": {}, "et": now_ms()})


@pytest.fixture
async def arq_producer(settings: Settings) -> AsyncIterator[ArqRedis]:
    """arq's own producer with its default serializer (pickle), as our users' background jobs have it."""
    pool = await create_pool(ArqRedisSettings.from_dsn(settings.redis.url))
    yield pool
    await pool.aclose()


async def stored_event_ids(db_pool: Any) -> set[str]:
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT DISTINCT event_id FROM notifications")
        return {row[0] for row in await cur.fetchall()}


async def pushed_to(redis: Redis, node_id: str) -> list[str]:
    """The notification ids pushed to a node (its push stream), in order."""
    entries = await redis.xrange(stream_key(node_id))
    return [item.notification_id or "" for _, fields in entries for item in decode_job(fields[b"j"]).items
            if item.frame is not None]


def lines_naming(caplog: pytest.LogCaptureFixture, text_: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("notify.") and text_ in r.getMessage()]


# ---------------------------------------------------------------- each payload, then a good event


@pytest.mark.parametrize(("job_id", "payload", "why"), POISON, ids=[p[0] for p in POISON])
async def test_a_poison_job_ends_with_a_result_naming_why_and_the_next_event_is_stored_and_pushed(
    settings: Settings, redis_client: Redis, db_pool: Any, arq_producer: ArqRedis, caplog: pytest.LogCaptureFixture,
    job_id: str, payload: bytes, why: str,
) -> None:
    caplog.set_level(logging.INFO, logger="notify")
    queue = settings.queues.events
    await Presence(redis_client, ttl_s=60).add(NODE, ["alice"])  # alice has a tab on NODE: pushes go to its stream
    await put_raw(redis_client, queue, job_id, payload)
    good = good_event("good-after")
    assert await arq_producer.enqueue_job("process_event", good, _queue_name=queue, _job_id=good["event_id"])

    worker = await run_worker_burst(settings)

    record = await result_of(redis_client, job_id)
    assert record is not None, "the poison job has no result"
    assert record["s"] is False and why in reason_of(record), reason_of(record)
    assert await redis_client.zscore(queue, job_id) is None and not await redis_client.exists(f"arq:job:{job_id}")
    good_job = Job(good["event_id"], arq_producer, _queue_name=queue)
    assert await good_job.result(timeout=5) == {"status": "stored", "recipients": 1, "stored": 1, "muted": 0}
    assert good["event_id"] in await stored_event_ids(db_pool)
    assert len(await pushed_to(redis_client, NODE)) == 1, "the good event was not pushed to alice's node"
    assert (worker.jobs_failed, worker.jobs_complete, worker.jobs_retried) == (1, 1, 0)
    named = lines_naming(caplog, job_id)
    assert len(named) == 1 and why in named[0].getMessage(), [r.getMessage() for r in named]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_every_poison_job_at_once_with_good_events_between_them_in_one_worker_run(
    settings: Settings, redis_client: Redis, db_pool: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """The same payloads in one queue, a good event after each, other odd ids and scores among them: one
    burst settles every poison job (one line each) and stores every good event."""
    caplog.set_level(logging.INFO, logger="notify")
    queue = settings.queues.events
    base = now_ms() - 10_000
    for n, (job_id, payload, _) in enumerate(POISON):
        await put_raw(redis_client, queue, job_id, payload, score=base + 2 * n)
        await put_raw(redis_client, queue, f"good-{n}", good_json_job(f"good-{n}"), score=base + 2 * n + 1)
    odd_id = b"poison-\xff\xfe-not-utf8"
    await put_raw(redis_client, queue, odd_id, json_job("whatever", et=b"1e29"), score=-math.inf)
    await put_raw(redis_client, queue, "poison-oversized", b"\x80\x04" + b"N" * (MAX_JOB_BYTES + 1), score=-(2.0**70))
    await redis_client.zadd(queue, {"poison-no-job-key": base})

    worker = await run_worker_burst(settings, batch_max=7)

    assert await redis_client.zcard(queue) == 0
    assert await stored_event_ids(db_pool) == {f"good-{n}" for n in range(len(POISON))}
    for job_id, _, why in POISON:
        record = await result_of(redis_client, job_id)
        assert record is not None and why in reason_of(record), (job_id, record and reason_of(record))
        assert len(lines_naming(caplog, job_id)) == 1, job_id
    odd = await result_of(redis_client, odd_id)
    assert odd is not None and "et (enqueue time)" in reason_of(odd)
    assert len(lines_naming(caplog, "poison-\\udcff\\udcfe-not-utf8")) == 1  # escaped in its log line
    oversized = await result_of(redis_client, "poison-oversized")
    assert oversized is not None and f"at most {MAX_JOB_BYTES}" in reason_of(oversized)
    missing = await result_of(redis_client, "poison-no-job-key")
    assert missing is not None and reason_of(missing) == "job expired"
    assert worker.jobs_complete == len(POISON) and worker.jobs_retried == 0


async def test_a_job_key_of_another_type_or_a_garbage_retry_counter_fails_that_job_alone(
    settings: Settings, redis_client: Redis, db_pool: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """arq's keys hold what any writer put there: a job key that is a Redis list, a retry counter that is
    a hash. The claim (one script for the whole batch) must not fail on them, or no job is ever claimed."""
    caplog.set_level(logging.INFO, logger="notify")
    queue = settings.queues.events
    base = now_ms() - 10_000
    await redis_client.rpush("arq:job:poison-list-key", b"not a string")
    await redis_client.zadd(queue, {"poison-list-key": base})
    await put_raw(redis_client, queue, "poison-hash-retry", json_job("poison-hash-retry"), score=base + 1)
    await redis_client.hset("arq:retry:poison-hash-retry", "n", "x")
    await put_raw(redis_client, queue, "good-after-odd-keys", good_json_job("good-after-odd-keys"), score=base + 2)

    await run_worker_burst(settings)

    record = await result_of(redis_client, "poison-list-key")
    assert record is not None and "holds no string" in reason_of(record), record
    assert len(lines_naming(caplog, "poison-list-key")) == 1
    assert await stored_event_ids(db_pool) == {"poison-hash-retry", "good-after-odd-keys"}
    assert await redis_client.zcard(queue) == 0


# ---------------------------------------------------------------- settling never stops the line


async def test_a_result_that_cannot_be_encoded_is_replaced_by_a_small_failed_one_naming_why(
    settings: Settings, redis_client: Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    queue = EventQueue(redis_client, settings.queues.events)
    for fmt in JobFormat:
        job_id = f"unencodable-{fmt.value}"
        await put_raw(redis_client, queue.queue_name, job_id, b"{}")
        job = ClaimedJob(job_id, 1, fmt=fmt, args=(memoryview(b"x"),))
        await queue.finish([Outcome(job, False, {"status": "failed", "reason": object()})], now_ms())
        record = await result_of(redis_client, job_id)
        assert record is not None and "its result could not be written (" in reason_of(record), record
        assert record["a"] in ((), []) and not await redis_client.exists(f"arq:job:{job_id}")
    assert len(lines_naming(caplog, "its result could not be written")) == 2


async def test_a_batch_redis_refuses_for_no_outage_is_settled_once_not_kept_and_the_worker_goes_on(
    settings: Settings, redis_client: Redis, db_pool: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis refusing a batch's results for a reason that is no outage (here: the queue key is no sorted
    set) would refuse them every round: the batch is let go, not kept ahead of every new job."""
    queue_name = settings.queues.events
    worker = EventConsumer(settings, burst=True, poll_delay=0, handle_signals=False)
    try:
        await redis_client.set(queue_name, b"not a sorted set")
        job = ClaimedJob("refused-batch", 1)
        await worker._settle_in_redis([(ClaimedJob("refused-retry", 1), 0.1)], [Outcome(job, True, {})], now_ms())
        assert worker._unsettled is None
        assert lines_naming(caplog, "could not be settled (ResponseError)")
        await redis_client.delete(queue_name)
        await put_raw(redis_client, queue_name, "good-after-refusal", json_job("good-after-refusal"))
        await worker.main()
    finally:
        await worker.close()
    assert await stored_event_ids(db_pool) == {"good-after-refusal"}


# ---------------------------------------------------------------- the schema's walk is bounded


def test_a_shared_structure_in_an_event_is_refused_after_a_bounded_walk(settings: Settings) -> None:
    """An event built in process (no decoder in front) holding one list shared twice at each of 30
    levels (2**31 paths, shallower than the depth limit): refused after at most MAX_DATA_BYTES values,
    where walking every path would take hours (the test's timeout would fail it)."""
    shared: list[Any] = []
    for _ in range(30):
        shared = [shared, shared]
    with pytest.raises(EventRejected, match=f"more than {MAX_DATA_BYTES} bytes of JSON"):
        parse_event({**good_event("shared-in-process"), "data": {"x": shared}}, settings.templates)


# ---------------------------------------------------------------- generated garbage, a real worker

_runs = itertools.count()


def _valid_pickle(proto: int) -> bytes:
    return plain_job(good_event("template"), protocol=proto)


_OPCODE_BYTES = sorted({op.code.encode("latin-1")[0] for op in pickletools.opcodes})
_PLAUSIBLE = [
    text("x"), text("event_id"), b"}\x94", b"]\x94", b"(", b"u", b"e", b"s", b"a", b"N", b"\x85\x94", b"\x86", b"t",
    b"h\x00", b"h\x05", b"j\x00\x00\x00\x00", b"K\x07", b"\x8a\x01\x07", b"G" + struct.pack(">d", 1.5), b"\x94",
    b"r\x00\x00\x01\x00", b"q\x03", b"2", b"0", b"\x95" + struct.pack("<Q", 5), b")", b"X\x02\x00\x00\x00ab",
]
_HEADERS = [b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"\x80\x04\x95" + bytes(8), b"\x80"]


@st.composite
def opcode_streams(draw: st.DrawFn) -> bytes:
    """Pickle-looking streams: a header, then opcodes with arguments of plausible or random bytes."""
    header = draw(st.sampled_from(_HEADERS))
    parts = draw(st.lists(st.one_of(
        st.sampled_from(_PLAUSIBLE),
        st.builds(lambda op, arg: bytes((op,)) + arg, st.sampled_from(_OPCODE_BYTES), st.binary(max_size=9)),
    ), max_size=80))
    return header + b"".join(parts) + draw(st.sampled_from([b".", b"", b"N."]))


@st.composite
def mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with a few bytes replaced, inserted or deleted."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if kind == "insert":
            data[at:at] = bytes((byte,))
        elif at < len(data):
            if kind == "replace":
                data[at] = byte
            else:
                del data[at]
    return bytes(data)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8),
                         st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)


@st.composite
def json_jobs(draw: st.DrawFn) -> bytes:
    """arq-shaped JSON with anything in its fields, or an event nested up to 1,100 levels deep."""
    depth = draw(st.integers(0, 1100))
    deep = b"[" * depth + b"]" * depth or b"{}"
    fields = {
        "t": draw(json_values), "f": draw(st.sampled_from(["process_event", "os.system"])), "k": draw(json_values),
        "et": draw(json_values), "a": draw(st.one_of(json_values, st.just([good_event("template")]))),
    }
    picked = {k: v for k, v in fields.items() if draw(st.booleans()) or k in ("f", "a")}
    text_ = orjson.dumps(picked)
    return text_.replace(b'{"user_id":"alice"}', b'{"user_id":' + deep + b"}", 1) if depth else text_


garbage = st.one_of(
    opcode_streams(),
    st.deferred(lambda: mutated_pickles),
    json_jobs(),
    mutations(orjson.dumps({"t": None, "f": "process_event", "a": [good_event("template")], "k": {}, "et": 1})),
    st.binary(max_size=64),
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=st.lists(garbage, min_size=1, max_size=6))
async def test_a_worker_stores_every_good_event_between_generated_garbage_and_settles_every_garbage_job(
    settings: Settings, redis_client: Redis, db_pool: Any, payloads: list[bytes],
) -> None:
    run = next(_runs)
    queue = settings.queues.events
    base = now_ms() - 10_000
    garbage_ids, good_ids = [], []
    for n, payload in enumerate(payloads):
        garbage_ids.append(f"garbage-{run}-{n}")
        good_ids.append(f"good-{run}-{n}")
        await put_raw(redis_client, queue, garbage_ids[-1], payload, score=base + 2 * n)
        await put_raw(redis_client, queue, good_ids[-1], good_json_job(good_ids[-1]), score=base + 2 * n + 1)

    await run_worker_burst(settings, batch_max=4)

    assert await redis_client.zcard(queue) == 0
    assert set(good_ids) <= await stored_event_ids(db_pool)
    for job_id in garbage_ids:
        assert await result_of(redis_client, job_id) is not None, job_id


# ---------------------------------------------------------------- the decoder's own properties


plain_keys = st.text(max_size=6)
plain_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=12),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(plain_keys, inner, max_size=5),
                            st.tuples(inner), st.tuples(inner, inner, inner, inner)),
    max_leaves=40,
)


@hypothesis_settings(max_examples=400, deadline=None)
@given(value=plain_values, proto=st.sampled_from([2, 3, 4, 5]))
def test_both_pickle_readers_read_what_cpython_writes_for_plain_data(value: Any, proto: int) -> None:
    data = pickle.dumps(value, protocol=proto)
    assert plainpickle.loads(data, max_depth=MAX_JOB_DEPTH, max_nodes=MAX_JOB_NODES) == value
    assert plainpickle._exact(data, MAX_JOB_DEPTH, MAX_JOB_NODES) == value


def test_a_key_set_twice_keeps_the_last_value_in_both_readers_as_in_json() -> None:
    twice = b"\x80\x04}\x94(" + text("a") + b"K\x01" + text("a") + b"K\x02u."
    assert plainpickle.loads(twice, max_depth=MAX_JOB_DEPTH, max_nodes=MAX_JOB_NODES) == {"a": 2}
    assert plainpickle._exact(twice, MAX_JOB_DEPTH, MAX_JOB_NODES) == {"a": 2} == orjson.loads(b'{"a":1,"a":2}')


def test_the_fast_path_takes_a_normal_arq_job_and_shared_strings_but_not_a_shared_list() -> None:
    event = {**good_event("fast"), "recipients": [{"user_id": f"u{n}", "email": f"u{n}@x.example"} for n in range(3)]}
    job = {"t": None, "f": "process_event", "a": (event,), "k": {}, "et": 1_700_000_000_000}
    for proto in (2, 3, 4, 5):
        assert plainpickle._proved(pickle.dumps(job, protocol=proto), MAX_JOB_DEPTH, MAX_JOB_NODES) == job
    shared = [1, 2]
    twice = pickle.dumps({**job, "a": ({**event, "data": {"a": shared, "b": shared}},)})
    assert plainpickle._proved(twice, MAX_JOB_DEPTH, MAX_JOB_NODES) == pickle.loads(twice)  # within the budget
    assert plainpickle._proved(shared_lists_job("x"), MAX_JOB_DEPTH, MAX_JOB_NODES) is plainpickle._UNPROVED


def _measure(value: Any) -> tuple[int, int]:
    """(values, depth) of decoded data, keys counted and shared parts counted each time, checking on the
    way that it is plain data (called on accepted jobs only, whose bounds keep it cheap)."""
    if isinstance(value, dict):
        assert all(type(key) is str for key in value)
        parts = [_measure(item) for item in value.values()]
        return 1 + len(value) + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0)
    if isinstance(value, (list, tuple)):
        parts = [_measure(item) for item in value]
        return 1 + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0)
    assert value is None or type(value) in (bool, str, int, float), type(value)
    assert not isinstance(value, float) or math.isfinite(value)
    assert not isinstance(value, int) or -(2**63) <= value <= 2**64 - 1
    return 1, 0


@hypothesis_settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=garbage)
def test_any_job_bytes_decode_to_plain_data_within_the_bounds_or_fail_with_a_one_line_reason(payload: bytes) -> None:
    job = read_job("generated", 1, payload)
    if job.failure is not None:
        assert "\n" not in job.failure and len(job.failure) < 300
        return
    values, depth = _measure(job.args)  # a part of the job: its bounds hold a fortiori
    assert values <= MAX_JOB_NODES and depth <= MAX_JOB_DEPTH


_FAST_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "MEMOIZE", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "EMPTY_DICT",
    "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "TUPLE", "SETITEM", "SETITEMS", "APPEND", "APPENDS",
    "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "SHORT_BINUNICODE",
    "BINUNICODE",
}
mutated_pickles = st.sampled_from([2, 3, 4, 5]).flatmap(lambda proto: mutations(_valid_pickle(proto)))


@hypothesis_settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.one_of(opcode_streams(), mutated_pickles))
def test_the_fast_paths_grammar_lets_the_c_unpickler_see_plain_data_opcodes_only(payload: bytes) -> None:
    """Whatever the grammar accepts, pickletools (which reads opcodes as the C unpickler does) finds only
    plain-data opcodes in it, memo indices below 65,536, at most one tuple built, no inf or nan; and
    what the fast path then proves, the exact reader reads the same."""
    if plainpickle.plain_stream().fullmatch(payload) is None:
        return
    ops: list[Any] = []
    try:
        ops.extend(pickletools.genops(payload))
    except UnicodeDecodeError:
        # A string that is not UTF-8: the C unpickler fails there too, or earlier (a FRAME longer than what is
        # left, which pickletools does not check; an opcode before it that fails on what it was given):
        # either way it ran no opcode that pickletools did not list before its error.
        try:
            pickle.loads(payload)
        except Exception:  # noqa: S110 - any error is the expected outcome here
            pass
        else:
            pytest.fail("the C unpickler read a stream pickletools could not")
    assert {op.name for op, _, _ in ops} <= _FAST_OPCODES
    proved = plainpickle._proved(payload, MAX_JOB_DEPTH, MAX_JOB_NODES)
    if proved is not plainpickle._UNPROVED:  # the two readers agree where both accept
        try:
            exact = plainpickle._exact(payload, MAX_JOB_DEPTH, MAX_JOB_NODES)
        except plainpickle.PickleRefused:
            pass  # stricter on what CPython never writes: empty fills, memo indices out of order, frames
        else:
            assert exact == proved
    assert sum(op.name in ("TUPLE1", "TUPLE2", "TUPLE3", "TUPLE") for op, _, _ in ops) <= 1
    for op, arg, _ in ops:
        if op.name == "LONG_BINPUT":
            assert arg < 65536
        if op.name == "BINFLOAT":
            assert math.isfinite(arg)
        if op.name == "LONG1":
            assert -(2**63) <= arg < 2**63


@hypothesis_settings(max_examples=800, deadline=None)
@given(value=json_values, spaced=st.booleans())
def test_a_json_texts_measure_is_exact_for_compact_json_and_never_too_low(value: Any, spaced: bool) -> None:
    raw = orjson.dumps(value, option=orjson.OPT_INDENT_2 if spaced else 0)
    values, depth = _measure(value)
    for max_depth, max_nodes in ((depth, values), (depth - 1, values), (depth, values - 1), (0, 1)):
        problem = jsonshape.problem(raw, max_depth=max_depth, max_nodes=max_nodes)
        if depth > max_depth or values > max_nodes:
            assert problem is not None
        elif not spaced:
            assert problem is None


# ---------------------------------------------------------------- the worker process


async def test_the_worker_process_stays_alive_through_every_poison_job_and_a_tab_gets_the_next_event(
    processes: Processes, settings: Settings, redis_client: Redis, sessions: SessionStore,
) -> None:
    queue = settings.queues.events
    _, port = await processes.serve("serve", NODE)
    worker = processes.start("worker", "worker")
    token = (await sessions.create("alice", 600)).token
    async with aiohttp.ClientSession() as http:
        tab = await connect(http, port, token)
        for job_id, payload, _ in POISON:
            await put_raw(redis_client, queue, job_id, payload)
        await put_raw(redis_client, queue, "poison-never-due", json_job("never"), score=math.inf)
        await put_raw(redis_client, queue, "good-after-poison", good_json_job("good-after-poison"))
        await redis_client.lpush(f"{queue}:wake", 1)
        notification = await next_notification(tab, timeout_s=20)
        assert notification["action_url"] == "/claims/good-after-poison"
        await tab.close()
    await _until(lambda: _settled(redis_client, [p[0] for p in POISON]), "every poison job settled")
    output = worker.output()
    assert worker.popen.poll() is None, output
    assert "Traceback" not in output, output[-3000:]
    for job_id, _, why in POISON:
        named = [line for line in output.splitlines() if job_id in line]
        assert len(named) == 1 and why in named[0], (job_id, named)


async def _settled(redis: Redis, job_ids: list[str]) -> bool:
    return all([await redis.exists(f"arq:result:{job_id}") for job_id in job_ids])


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.05)
