"""The batched event consumer behind `notify-server worker`.

It takes `process_event` jobs off the same arq queue, in arq's own key layout (so producers, `Job.result()`
and plain arq workers keep working beside it), but a whole batch at a time: arq claims and finishes jobs
one by one, about nine Redis round trips each, and that — not Postgres — bounded the pipeline near
500 events/s (docs/benchmarks.md). Here a batch of up to `worker.batch_max` jobs costs about four
round trips, one Postgres transaction and one push job per node.

A job's life, as in arq: claimed with `arq:in-progress:<id>` (SET NX, expiring), tried (`arq:retry:<id>`
counts tries), then finished in one MULTI (result stored under `arq:result:<id>` for `keep_result_s`,
job/retry/in-progress keys deleted, id removed from the queue) or rescheduled (score = now + backoff).
A worker killed mid-batch leaves in-progress keys that expire after the job timeout; the jobs are then
claimed again and, being idempotent, stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from aiohttp import web
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_result

from notify_server.constants import JOB_PROCESS_EVENT
from notify_server.metrics import CONTENT_TYPE_LATEST, WorkerMetrics, render
from notify_server.producer import deserialize_job, serialize_job, wake_key
from notify_server.settings import Settings
from workers import context
from workers.jobs import retry_delay_s
from workers.pipeline import TRANSIENT_ERRORS, EventFailed, process_events

logger = logging.getLogger("notify.worker")

RETRY_KEY_TTL_S = 88400  # as arq
KEEP_RESULT_S = 3600  # as arq: a duplicate event id is refused by enqueue for this long
CLAIM_PAGES = 4  # pages of the queue looked at before concluding that other workers hold every due job


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Claimed:
    __slots__ = ("job_id", "job_try", "enqueue_time_ms", "args", "failure")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.job_try = 1
        self.enqueue_time_ms = 0
        self.args: tuple[Any, ...] = ()
        self.failure: str | None = None


class EventConsumer:
    """Runs until stopped (or, with burst=True, until the queue is empty)."""

    def __init__(
        self,
        settings: Settings,
        *,
        burst: bool = False,
        poll_delay: float | None = None,
        batch_max: int | None = None,
        max_tries: int | None = None,
        handle_signals: bool = True,
        metrics_port: int | None = None,
    ) -> None:
        settings.require_services()
        self.settings = settings
        self.queue_name = settings.queues.events
        self._wake_key = wake_key(self.queue_name)
        self.burst = burst
        self.poll_delay_s = settings.worker.poll_delay_s if poll_delay is None else poll_delay
        self.batch_max = batch_max or settings.worker.batch_max
        self.max_tries = max_tries or settings.worker.max_tries
        self.job_timeout_s = settings.worker.job_timeout_s
        self.in_progress_ms = int((self.job_timeout_s + 10) * 1000)
        self.handle_signals = handle_signals
        self.metrics_port = settings.worker.metrics_port if metrics_port is None else metrics_port
        self.metrics = WorkerMetrics()
        self.ctx: dict[str, Any] = {context.SETTINGS: settings, context.METRICS: self.metrics}
        self.jobs_complete = 0
        self.jobs_failed = 0
        self.jobs_retried = 0
        self._stopping = asyncio.Event()
        self._redis: ArqRedis | None = None
        self._metrics_runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- lifecycle

    def run(self) -> None:
        """Blocking: `notify-server worker`. SIGTERM / SIGINT finish the batch in hand, then stop."""
        asyncio.run(self._run())

    async def _run(self) -> None:
        try:
            await self.main()
        finally:
            await self.close()

    def stop(self) -> None:
        self._stopping.set()

    async def main(self) -> None:
        from workers.settings import startup

        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.stop)
        self._redis = await create_pool(
            RedisSettings.from_dsn(self.settings.redis.url),
            job_serializer=serialize_job, job_deserializer=deserialize_job, default_queue_name=self.queue_name,
        )
        self.ctx[context.REDIS] = self._redis
        await startup(self.ctx)
        await self._start_metrics()
        logger.info("worker consuming %s (batches of up to %d)", self.queue_name, self.batch_max)
        delay_s = 0.1
        while not self._stopping.is_set():
            try:
                handled = await self.poll_once()
                delay_s = 0.1
            except TRANSIENT_ERRORS as exc:  # Redis away: keep trying, nothing is lost
                logger.warning("event queue unreachable (%s); retrying in %.1fs", type(exc).__name__, delay_s)
                await self._sleep(delay_s)
                delay_s = min(5.0, delay_s * 2)
                continue
            if handled:
                continue
            if self.burst and await self._redis.zcard(self.queue_name) == 0:
                break
            await self._wait_for_work(max(self.poll_delay_s, 0.005))

    async def _wait_for_work(self, seconds: float) -> None:
        """Until a producer's wake-up (BLPOP on the wake list), `seconds` pass, or stop() is called."""
        assert self._redis is not None  # noqa: S101
        wake = asyncio.ensure_future(self._redis.blpop([self._wake_key], timeout=seconds))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({wake, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (wake, stop):
                if not waiter.done():
                    waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, *TRANSIENT_ERRORS):
                await wake
            await asyncio.gather(stop, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def close(self) -> None:
        from workers.settings import shutdown

        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        await shutdown(self.ctx)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _start_metrics(self) -> None:
        if not self.metrics_port:
            return

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=render(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self._metrics_runner = web.AppRunner(app, access_log=None)
        await self._metrics_runner.setup()
        await web.TCPSite(self._metrics_runner, self.settings.server.host, self.metrics_port).start()

    # ---------------------------------------------------------------- one batch

    async def poll_once(self) -> int:
        """Claim, run and finish one batch of due jobs; returns how many jobs were handled."""
        redis = self._redis
        assert redis is not None  # main() opened it  # noqa: S101
        now = _now_ms()
        claimed: list[_Claimed] = []
        # Another worker may hold the head of the queue: look further down instead of sleeping.
        for page in range(CLAIM_PAGES):
            ids = await redis.zrangebyscore(
                self.queue_name, min=float("-inf"), max=now, start=page * self.batch_max, num=self.batch_max
            )
            if not ids:
                break
            claimed = await self._claim([job_id.decode() for job_id in ids], now)
            if claimed:
                break
        if not claimed:
            return 0
        await self._load(claimed)
        runnable = [job for job in claimed if job.failure is None]
        started_ms = _now_ms()
        try:
            results = await asyncio.wait_for(
                process_events(self.ctx, [job.args[0] for job in runnable]), self.job_timeout_s
            ) if runnable else []
        except (TimeoutError, *TRANSIENT_ERRORS) as exc:
            await self._retry(runnable, exc)
            await self._finish([job for job in claimed if job.failure is not None], [], started_ms)
            return len(claimed)
        await self._finish(claimed, results, started_ms)
        return len(claimed)

    async def _claim(self, job_ids: list[str], now: int) -> list[_Claimed]:
        redis = self._redis
        assert redis is not None  # noqa: S101
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.set(in_progress_key_prefix + job_id, b"1", px=self.in_progress_ms, nx=True)
                pipe.zscore(self.queue_name, job_id)
            replies = await pipe.execute()
        claimed, released = [], []
        for i, job_id in enumerate(job_ids):
            got, score = replies[2 * i], replies[2 * i + 1]
            if not got:
                continue  # another worker has it
            if score is None or score > now:
                released.append(job_id)  # finished (or rescheduled) meanwhile: not ours to run
                continue
            claimed.append(_Claimed(job_id))
        if released:
            await redis.delete(*(in_progress_key_prefix + job_id for job_id in released))
        return claimed

    async def _load(self, claimed: list[_Claimed]) -> None:
        redis = self._redis
        assert redis is not None  # noqa: S101
        async with redis.pipeline(transaction=False) as pipe:
            for job in claimed:
                pipe.get(job_key_prefix + job.job_id)
                pipe.incr(retry_key_prefix + job.job_id)
                pipe.expire(retry_key_prefix + job.job_id, RETRY_KEY_TTL_S)
            replies = await pipe.execute()
        for i, job in enumerate(claimed):
            raw, job.job_try = replies[3 * i], int(replies[3 * i + 1])
            if raw is None:
                job.failure = "job expired"
                continue
            try:
                data = deserialize_job(raw)
                function, args, kwargs = data["f"], data["a"], data.get("k") or {}
                job.enqueue_time_ms = int(data.get("et") or 0)
                enqueue_try = data.get("t")
            except (ValueError, TypeError, KeyError) as exc:
                job.failure = f"job is not arq JSON: {type(exc).__name__}"
                continue
            if isinstance(enqueue_try, int) and enqueue_try > job.job_try:
                job.job_try = enqueue_try
            if function != JOB_PROCESS_EVENT:
                job.failure = f"function {function!r} not found"
            elif not isinstance(args, list) or len(args) != 1 or kwargs:
                job.failure = "process_event takes exactly one positional argument, the event"
            elif job.job_try > self.max_tries:
                job.failure = f"max {self.max_tries} retries exceeded"
            else:
                job.args = tuple(args)

    async def _retry(self, jobs: list[_Claimed], exc: BaseException) -> None:
        """Reschedule the batch's jobs with backoff; their tries are already counted."""
        redis = self._redis
        assert redis is not None  # noqa: S101
        now = _now_ms()
        backoff_max_s = self.settings.worker.retry_backoff_max_s
        async with redis.pipeline(transaction=True) as pipe:
            for job in jobs:
                delay_ms = int(retry_delay_s(job.job_try, backoff_max_s) * 1000)
                pipe.zadd(self.queue_name, {job.job_id: now + delay_ms}, xx=True)
                pipe.delete(in_progress_key_prefix + job.job_id)
            await pipe.execute()
        self.jobs_retried += len(jobs)
        self.metrics.events_retried.inc(len(jobs))
        logger.warning("%d event(s) retried after %s (tries: %s)", len(jobs), type(exc).__name__,
                       ",".join(str(job.job_try) for job in jobs[:5]))

    async def _finish(self, claimed: list[_Claimed], results: list[Any], started_ms: int) -> None:
        """Store each job's result and take it off the queue, in one MULTI."""
        redis = self._redis
        assert redis is not None  # noqa: S101
        finished_ms = _now_ms()
        outcome = iter(results)
        async with redis.pipeline(transaction=True) as pipe:
            for job in claimed:
                if job.failure is not None:
                    success, result = False, {"status": "failed", "reason": job.failure}
                    logger.error("job %s failed: %s", job.job_id, job.failure)
                else:
                    value = next(outcome)
                    success = not isinstance(value, EventFailed)
                    result = value if success else {"status": "failed", "reason": str(value)}
                if success:
                    self.jobs_complete += 1
                else:
                    self.jobs_failed += 1
                data = serialize_result(
                    JOB_PROCESS_EVENT, job.args, {}, job.job_try, job.enqueue_time_ms, success, result,
                    started_ms, finished_ms, f"{job.job_id}:{JOB_PROCESS_EVENT}", self.queue_name,
                    job_id=job.job_id, serializer=serialize_job,
                )
                if data is not None:
                    pipe.set(result_key_prefix + job.job_id, data, px=KEEP_RESULT_S * 1000)
                pipe.delete(
                    retry_key_prefix + job.job_id, job_key_prefix + job.job_id, in_progress_key_prefix + job.job_id
                )
                pipe.zrem(self.queue_name, job.job_id)
            await pipe.execute()
