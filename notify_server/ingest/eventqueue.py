"""The event queue: arq's key layout, spoken in one place — enqueue, claim, retry, finish, results.

Producers (arq's `enqueue_job` among them) and `Job.result()` keep working with `notify-server worker`,
because every key is arq's own:

- `arq:job:<id>` holds the job (JSON or arq's pickle, notify_server.ingest.jobcodec), `<queue>` (a sorted set)
  its due time in ms; the event id is the job id, so a duplicate is refused while either the job or its
  result exists;
- a worker claims a job with `SET arq:in-progress:<id> NX PX (job_timeout + 10 s)`, counts the try in
  `arq:retry:<id>`, and either finishes it (result under `arq:result:<id>` for KEEP_RESULT_S; job, retry
  and in-progress keys deleted; id taken off the queue) or reschedules it (score = now + backoff);
- a worker killed mid-batch leaves in-progress keys that expire; the jobs are then claimed again.

Whatever bytes sit under a job's key, the job ends: a job that cannot run (undecodable, not arq's shape,
an `et` that is no time) is finished at once with a result naming why, and a result that cannot be
encoded is replaced by a small fixed one (jobcodec). A claim takes at most CLAIM_MAX_BYTES of jobs, and
never fetches one larger than MAX_JOB_BYTES (its size alone says why it fails).

Enqueue, claim and finish are server-side scripts: one round trip per call (or per batch of events)
instead of arq's WATCH/MULTI and its nine round trips per job. The retry policy lives here too (RetryPolicy).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Sequence
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from notify_server.core.constants import JOB_PROCESS_EVENT
from notify_server.ingest.jobcodec import (
    MAX_JOB_BYTES,
    JobFormat,
    UndecodableJob,
    decode,
    encode_job,
    encode_result_or_fixed,
    job_format,
    text_or,
)

logger = logging.getLogger("notify.eventqueue")

DEFAULT_QUEUE = "notify:events"
WAKE_SUFFIX = ":wake"
KEEP_RESULT_S = 3600  # as arq: a duplicate event id is refused by enqueue for this long after processing
RETRY_KEY_TTL_S = 88400  # as arq
JOB_EXPIRES_MS = 86_400_000  # as arq's expires_extra_ms: a job not started within a day is dropped
CLAIM_GRACE_S = 10  # as arq: an in-progress key outlives the job timeout by this much
CLAIM_SCAN_PAGES = 4  # pages of due jobs looked at before concluding that other workers hold them all
CLAIM_MAX_BYTES = 32 * 1024 * 1024  # jobs one claim takes at most (one job larger than this alone)
FINISH_MAX_BYTES = 8 * 1024 * 1024  # results one finish call writes at most (one larger result alone)
MAX_ENQUEUE_TIME_MS = 253_402_300_799_999  # 9999-12-31: an `et` beyond is no time arq can read back
MAX_JOB_TRY = 2**31 - 1

# KEYS: queue, wake list, then (job key, result key) per job. ARGV: now_ms, expires_ms, then (id, job)
# per job. Returns 1 per job queued, 0 per duplicate (job or result still there).
_ENQUEUE = """
local queued = {}
for i = 1, (#KEYS - 2) / 2 do
  local job_key, result_key = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  if redis.call('EXISTS', job_key, result_key) > 0 then
    queued[i] = 0
  else
    redis.call('SET', job_key, ARGV[2 + 2 * i], 'PX', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1 + 2 * i])
    queued[i] = 1
  end
end
redis.call('LPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], 0, 0)
return queued
"""

# KEYS: queue. ARGV: now_ms, batch_max, scan_pages, in_progress_ms, retry_ttl_s, then the key prefixes
# (in-progress, job, retry), max_job_bytes, max_claim_bytes. Claims up to batch_max due jobs that no other
# worker holds, up to max_claim_bytes of them (the first one whatever its size), and counts their try;
# returns (id, try, job) triples: the job's bytes, false when its key is gone, its size when it is larger
# than max_job_bytes (not fetched: its size is why it fails), or -1 when the key holds no string. Keys of
# another type are anyone's to write: pcall, so that no key fails the whole claim.
_CLAIM = """
local now, want, pages = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_job, max_claim = tonumber(ARGV[9]), tonumber(ARGV[10])
local claimed = {}
local n, bytes = 0, 0
for page = 0, pages - 1 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', page * want, want)
  for _, id in ipairs(ids) do
    local size = redis.pcall('STRLEN', ARGV[7] .. id)
    if type(size) ~= 'number' then size = -1 end
    local counted = math.max(0, math.min(size, max_job))
    if n > 0 and bytes + counted > max_claim then
      return claimed
    end
    if redis.call('SET', ARGV[6] .. id, '1', 'NX', 'PX', ARGV[4]) then
      local try = redis.pcall('INCR', ARGV[8] .. id)
      if type(try) ~= 'number' then  -- not a counter: it starts again
        redis.call('DEL', ARGV[8] .. id)
        try = redis.call('INCR', ARGV[8] .. id)
      end
      redis.call('EXPIRE', ARGV[8] .. id, ARGV[5])
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = try
      if size < 0 or size > max_job then
        claimed[#claimed + 1] = size
      else
        claimed[#claimed + 1] = redis.call('GET', ARGV[7] .. id)
      end
      n = n + 1
      bytes = bytes + counted
      if n >= want then
        return claimed
      end
    end
  end
  if n > 0 or #ids < want then break end
end
return claimed
"""


# KEYS: queue. ARGV: keep_result_ms, then the key prefixes (result, job, retry, in-progress), then
# (id, result) per job. Stores each result and takes its job off the queue, atomically as a MULTI would.
_FINISH = """
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  redis.call('SET', ARGV[2] .. id, ARGV[i + 1], 'PX', ARGV[1])
  redis.call('DEL', ARGV[3] .. id, ARGV[4] .. id, ARGV[5] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ARGV
"""


class NotReplicated(RedisError):
    """Fewer replicas than `redis.min_replicas_acked` confirmed an enqueue in time. Its message starts
    with NOREPLICAS, Redis's own word for a write refused for want of replicas, so notify_server.core.stores
    classifies it as transient (the publish API answers 503; the producer retries with the same event id)."""

    def __init__(self, acked: int, required: int, timeout_ms: int) -> None:
        super().__init__(f"NOREPLICAS {acked} of {required} required replica(s) confirmed the enqueue within "
                         f"{timeout_ms} ms (redis.min_replicas_acked)")
        self.acked = acked
        self.required = required


def wake_key(queue_name: str) -> str:
    """A list an idle worker blocks on (BLPOP), so it takes a new event at once instead of at its next
    poll; producers that skip it are still served within `worker.poll_delay_s`."""
    return queue_name + WAKE_SUFFIX


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- retries


class RetryPolicy:
    """When a job runs again. A store fault never uses the job up: it waits (with backoff) until the
    store is back. Any other failure of one event is tried `max_tries` times, then given up (logged,
    result written) so that a poison event cannot circle for ever."""

    def __init__(self, max_tries: int, backoff_max_s: float) -> None:
        self.max_tries = max_tries
        self.backoff_max_s = backoff_max_s

    def delay_s(self, job_try: int) -> float:
        """Exponential backoff with full jitter: up to 0.5 s, 1 s, 2 s, … capped at backoff_max_s."""
        return random.uniform(0, min(self.backoff_max_s, 0.5 * 2 ** min(job_try - 1, 30)))

    def gives_up(self, job_try: int, *, store_fault: bool) -> bool:
        return not store_fault and job_try >= self.max_tries


# ---------------------------------------------------------------- jobs in hand


@dataclasses.dataclass(slots=True)
class ClaimedJob:
    """A job this worker holds. `failure` is set when it cannot run at all (its result says why).

    `job_id` is the id as Redis holds it, read with surrogateescape (any bytes round-trip through `key_id`)."""

    job_id: str
    job_try: int
    fmt: JobFormat = JobFormat.JSON
    enqueue_time_ms: int = 0
    args: tuple[Any, ...] = ()
    failure: str | None = None

    @property
    def event(self) -> Any:
        return self.args[0]

    @property
    def key_id(self) -> bytes:
        """The id's bytes, as they sit in the queue and in the job's keys."""
        return self.job_id.encode("utf-8", "surrogateescape")

    @property
    def log_id(self) -> str:
        """The id for a log line: printable, one line, at most 200 characters."""
        return self.job_id[:200].encode("unicode_escape").decode("ascii")


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended: a result for `Job.result()`; success False writes a failed result."""

    job: ClaimedJob
    success: bool
    result: Any


def read_job(job_id: str, job_try: int, payload: bytes | int | None) -> ClaimedJob:
    """Decode a claimed job and check that it is a `process_event(event)` job. Never raises: a job that
    cannot run comes back with `failure` saying why, in one line that holds nothing of the job's content.
    `payload` is the job's bytes, None when its key is gone, its size when it was too large to fetch, or
    -1 when its key holds no string (a list, a hash: anyone can write arq's keys)."""
    job = ClaimedJob(job_id, job_try)
    if payload is None:
        job.failure = "job expired"
        return job
    if isinstance(payload, int):
        job.failure = "job key holds no string" if payload < 0 else f"job is {payload} bytes; at most {MAX_JOB_BYTES}"
        return job
    job.fmt = job_format(payload)  # a job refused below still gets its result in the format its producer reads
    try:
        job.fmt, data = decode(payload)
        function, args, kwargs = data["f"], data["a"], data.get("k") or {}
    except UndecodableJob as exc:
        job.failure = str(exc)
        return job
    except (KeyError, TypeError, AttributeError) as exc:
        job.failure = f"job is not an arq job: {type(exc).__name__}"
        return job
    enqueue_time_ms = _enqueue_time_ms(data.get("et"))
    enqueue_try = data.get("t")
    if type(enqueue_try) is int and job.job_try < enqueue_try <= MAX_JOB_TRY:
        job.job_try = enqueue_try
    if enqueue_time_ms is None:
        job.failure = "job's et (enqueue time) is not a time in milliseconds"
    elif function != JOB_PROCESS_EVENT:
        job.failure = f"function {_short_repr(function)} not found"
    elif not isinstance(args, (list, tuple)) or len(args) != 1 or kwargs:
        job.failure = "process_event takes exactly one positional argument, the event"
    else:
        job.enqueue_time_ms = enqueue_time_ms
        job.args = tuple(args)
    return job


def _enqueue_time_ms(value: Any) -> int | None:
    """arq's `et` as whole milliseconds (missing: 0), or None when it is no time arq could read back."""
    if value is None:
        return 0
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_ENQUEUE_TIME_MS:
        return None
    return int(value)


def _short_repr(value: Any) -> str:
    """A job field for a reason: strings as repr, at most 100 characters; anything else by its type."""
    if isinstance(value, str):
        text = repr(value[:100])
        return text if len(value) <= 100 else text + "…"
    return f"<{type(value).__name__}>"


class EventQueue:
    """One arq queue of `process_event` jobs, over any redis.asyncio client."""

    def __init__(self, redis: Redis, queue_name: str = DEFAULT_QUEUE, *, job_timeout_s: float = 60.0) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.wake_key = wake_key(queue_name)
        self.claim_ms = int((job_timeout_s + CLAIM_GRACE_S) * 1000)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)

    # ---------------------------------------------------------------- producer side

    async def enqueue(
        self, jobs: Sequence[tuple[str, bytes]], *, min_replicas: int = 0, replica_timeout_ms: int = 1000
    ) -> list[bool]:
        """Queue (job id, encoded job) pairs and wake an idle worker, in one round trip. One bool per
        job: False when that id is still queued or its result is still kept (a duplicate).

        min_replicas > 0: return only once that many replicas hold the jobs (WAIT, in the same round
        trip), else raise NotReplicated after replica_timeout_ms. The jobs are then on the primary and
        may or may not survive a fail-over: the producer retries with the same ids, and a retry that
        finds them queued waits for the replicas all the same (WAIT covers every earlier write)."""
        if not jobs:
            return []
        keys = [self.queue_name, self.wake_key]
        argv: list[Any] = [now_ms(), JOB_EXPIRES_MS]
        for job_id, payload in jobs:
            keys += [job_key_prefix + job_id, result_key_prefix + job_id]
            argv += [job_id, payload]
        if min_replicas <= 0:
            replies = await self._enqueue(keys=keys, args=argv)
        else:
            replies = await self._enqueue_and_wait(keys, argv, min_replicas, replica_timeout_ms)
        return [bool(int(reply)) for reply in replies]

    async def _enqueue_and_wait(
        self, keys: list[str], argv: list[Any], min_replicas: int, timeout_ms: int
    ) -> list[Any]:
        """The enqueue script and WAIT on one connection (a pipeline: WAIT counts that connection's
        writes). EVALSHA, not a registered Script: a pipeline with scripts checks SCRIPT EXISTS first,
        one more round trip per call. After a NOSCRIPT (a new, restarted or promoted server has not seen
        the script) the same pipeline runs with EVAL, which sends the script itself and caches it there."""
        replies, acked = await self._script_and_wait(False, keys, argv, min_replicas, timeout_ms)
        if isinstance(replies, NoScriptError):
            replies, acked = await self._script_and_wait(True, keys, argv, min_replicas, timeout_ms)
        for reply in (replies, acked):
            if isinstance(reply, Exception):
                raise reply
        if int(acked) < min_replicas:
            raise NotReplicated(int(acked), min_replicas, timeout_ms)
        return list(replies)

    async def _script_and_wait(
        self, send_script: bool, keys: list[str], argv: list[Any], min_replicas: int, timeout_ms: int
    ) -> tuple[Any, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            if send_script:
                pipe.eval(_ENQUEUE, len(keys), *keys, *argv)
            else:
                pipe.evalsha(self._enqueue.sha, len(keys), *keys, *argv)
            pipe.execute_command("WAIT", min_replicas, timeout_ms)
            replies, acked = await pipe.execute(raise_on_error=False)
        return replies, acked

    @staticmethod
    def encode_event(event: dict[str, Any]) -> bytes:
        return encode_job({"t": None, "f": JOB_PROCESS_EVENT, "a": [event], "k": {}, "et": now_ms()})

    # ---------------------------------------------------------------- worker side

    async def claim(self, batch_max: int) -> list[ClaimedJob]:
        """Claim up to batch_max due jobs that no other worker holds (one round trip), decoded."""
        replies = await self._claim(
            keys=[self.queue_name],
            args=[now_ms(), batch_max, CLAIM_SCAN_PAGES, self.claim_ms, RETRY_KEY_TTL_S,
                  in_progress_key_prefix, job_key_prefix, retry_key_prefix, MAX_JOB_BYTES, CLAIM_MAX_BYTES],
        )
        # An id is any bytes a producer put in the queue: surrogateescape keeps them as they are.
        return [
            read_job(replies[i].decode("utf-8", "surrogateescape"), int(replies[i + 1]), replies[i + 2])
            for i in range(0, len(replies), 3)
        ]

    async def depth(self) -> int:
        return int(await self.redis.zcard(self.queue_name))

    async def wait_for_work(self, timeout_s: float) -> None:
        """Block until a producer's wake-up or timeout_s (BLPOP on the wake list)."""
        await self.redis.blpop([self.wake_key], timeout=timeout_s)  # type: ignore[misc, arg-type]  # redis-py takes a float

    async def retry(self, jobs: Sequence[tuple[ClaimedJob, float]]) -> None:
        """Reschedule (job, delay in seconds) pairs and release their claims; their tries are counted."""
        if not jobs:
            return
        now = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            for job, delay_s in jobs:
                pipe.zadd(self.queue_name, {job.key_id: now + int(delay_s * 1000)}, xx=True)
                pipe.delete(in_progress_key_prefix.encode() + job.key_id)
            await pipe.execute()

    async def finish(self, outcomes: Sequence[Outcome], started_ms: int, *, fixed_reason: str | None = None) -> None:
        """Write each job's result (in its own format) and take it off the queue, in scripts of at most
        FINISH_MAX_BYTES of results (each atomic). A result that cannot be encoded is replaced by a small
        failed one naming why; `fixed_reason` writes that small one for every job (when even writing the
        batch failed)."""
        if not outcomes:
            return
        finished_ms = now_ms()
        head: list[Any] = [KEEP_RESULT_S * 1000, result_key_prefix, job_key_prefix, retry_key_prefix,
                           in_progress_key_prefix]
        argv, size = list(head), 0
        for outcome in outcomes:
            job = outcome.job
            record = {
                "t": job.job_try, "f": JOB_PROCESS_EVENT, "a": job.args, "k": {}, "et": job.enqueue_time_ms,
                "s": outcome.success, "r": outcome.result, "st": started_ms, "ft": finished_ms,
                "q": self.queue_name, "id": text_or(job.job_id, "<unknown>"),
            }
            if fixed_reason is not None:
                record.update(a=(), s=False, r={"status": "failed", "reason": fixed_reason})
            result, fallback = encode_result_or_fixed(job.fmt, record)
            if fallback is not None:
                logger.error("job %s: %s; a failed result says so", job.log_id, fallback)
            if size and size + len(result) > FINISH_MAX_BYTES:
                await self._finish(keys=[self.queue_name], args=argv)
                argv, size = list(head), 0
            argv += [job.key_id, result]
            size += len(result)
        await self._finish(keys=[self.queue_name], args=argv)
