"""The batched event consumer behind `notify-server worker`.

It takes `process_event` jobs off the arq queue (notify_server.ingest.eventqueue speaks arq's key layout) a
whole batch at a time: one round trip claims up to `worker.batch_max` due jobs, the pipeline
(workers/pipeline.py) stores them in one Postgres transaction and writes one push job per node, and
one MULTI finishes them. arq's own worker claims and finishes jobs one by one, about nine Redis round
trips each.

Its main loop never ends on a store fault: a batch Postgres or Redis cannot take is rescheduled with
backoff (its events are never given up for that), a failing round is retried after a backoff, and
`/readyz` on `worker.metrics_port` says when the loop is down.

No job stops the line: one that cannot run gets a result naming why at once, and a batch whose results
Redis refuses for any reason but an outage is settled with small fixed results instead (or, should even
those be refused, left to its claims' expiry) — never kept and retried ahead of everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time

from aiohttp import web

from notify_server.core.metrics import CONTENT_TYPE_LATEST, WorkerMetrics, render
from notify_server.core.settings import Settings
from notify_server.core.stores import Fault, classify, describe, reconnect_if_stale
from notify_server.core.supervisor import Backoff, LoopHealth, Supervisor, report_failure, stopping
from notify_server.ingest.eventqueue import ClaimedJob, Outcome, now_ms
from workers.context import WorkerContext
from workers.digests import DIGEST_LOOP_NAME, DigestLoop
from workers.pipeline import Attempt, StoreUnavailable, Verdict, process_events
from workers.pruning import PRUNE_LOOP_NAME, PruneLoop
from workers.webpush import LOOP_NAME as WEB_PUSH_LOOP_NAME
from workers.webpush import build_sender as build_web_push_sender

logger = logging.getLogger("notify.worker")

LOOP_NAME = "event-consumer"
MISCONFIGURED_LOG_INTERVAL_S = 60.0
BACKGROUND_BACKOFF_MAX_S = 30.0  # longest wait before a failed background loop (the prune) runs again


class EventConsumer:
    """Runs until stopped (or, with burst=True, until the queue is empty)."""

    def __init__(
        self,
        settings: Settings,
        *,
        burst: bool = False,
        poll_delay: float | None = None,
        batch_max: int | None = None,
        handle_signals: bool = True,
        metrics_port: int | None = None,
        context: WorkerContext | None = None,
    ) -> None:
        self.context = context or WorkerContext.build(settings)
        self.settings = settings
        self.burst = burst
        self.poll_delay_s = settings.worker.poll_delay_s if poll_delay is None else poll_delay
        self.batch_max = batch_max or settings.worker.batch_max
        self.handle_signals = handle_signals
        self.metrics_port = settings.worker.metrics_port if metrics_port is None else metrics_port
        self.health = LoopHealth(LOOP_NAME)
        self.jobs_complete = 0
        self.jobs_failed = 0
        self.jobs_retried = 0
        self._stopping = asyncio.Event()
        self._metrics_runner: web.AppRunner | None = None
        self._misconfigured_logged_at = float("-inf")
        self._unsettled: tuple[list[tuple[ClaimedJob, float]], list[Outcome], int] | None = None
        # Loops beside the main one (the retention prune), each restarted after any failure.
        self.background = Supervisor(
            self.context.metrics.loop_restarts, backoff_max_s=BACKGROUND_BACKOFF_MAX_S,
            on_failure=functools.partial(reconnect_if_stale, self.context.redis),
        )
        self.prune_loop: PruneLoop | None = None
        self.web_push_started = False
        self.digest_loop: DigestLoop | None = None

    @property
    def metrics(self) -> WorkerMetrics:
        return self.context.metrics

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
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.stop)
        await self._start_metrics()
        self._start_background()
        logger.info("worker consuming %s (batches of up to %d)", self.context.queue.queue_name, self.batch_max)
        backoff = Backoff(max_s=5.0)
        while not self._stopping.is_set():
            try:
                handled = await self.poll_once()
                if not handled and self.burst and await self.context.queue.depth() == 0:
                    break
                if not handled:
                    await self._wait_for_work(max(self.poll_delay_s, 0.005))
            except Exception as exc:  # supervised: whatever happens, the loop goes on after a backoff
                stopping(exc)
                delay_s = backoff.next()
                report_failure(LOOP_NAME, self.health, exc, delay_s)
                self.metrics.loop_restarts.labels(LOOP_NAME).inc()
                with contextlib.suppress(Exception):
                    await reconnect_if_stale(self.context.redis, exc)
                await self._sleep(delay_s)
                continue
            self.health.ok()
            backoff.reset()

    async def _wait_for_work(self, seconds: float) -> None:
        """Until a producer's wake-up or `seconds` pass (a stop is seen within poll_delay_s). A plain
        BLPOP: racing it against the stop event cost two tasks per idle turn, a fifth of the worker's
        CPU at 500 events/s (bench/budget.py)."""
        await self.context.queue.wait_for_work(seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _start_background(self) -> None:
        """The periodic prune (retention.interval_s; none at 0), the digest loop and the web push sender;
        none in a burst run, which only drains."""
        self._start_web_push()
        if self.burst:
            return
        if self.digest_loop is None:
            self.digest_loop = DigestLoop(self.context)
            self.background.start(DIGEST_LOOP_NAME, self.digest_loop.run)
        if self.settings.retention.interval_s <= 0 or self.prune_loop is not None:
            return
        self.prune_loop = PruneLoop(self.context)
        self.background.start(PRUNE_LOOP_NAME, self.prune_loop.run)

    def _start_web_push(self) -> None:
        """The Web Push sender (when web_push.enabled; none in a burst run, which only drains)."""
        if self.burst or not self.settings.web_push.enabled or self.web_push_started:
            return
        self.web_push_started = True
        self.background.start(WEB_PUSH_LOOP_NAME, build_web_push_sender(self.context).run)

    async def close(self) -> None:
        await self.background.stop()  # a prune cut short rolls its batch back; the next one goes on
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        await self.context.close()

    async def _start_metrics(self) -> None:
        if not self.metrics_port:
            return

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=render(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def readyz(request: web.Request) -> web.Response:
            down = self.background.down()
            if not self.health.up:
                down[LOOP_NAME] = self.health.last_error
            if not down:
                return web.json_response({"ready": True})
            return web.json_response({"ready": False, "down": down}, status=503)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/readyz", readyz)
        self._metrics_runner = web.AppRunner(app, access_log=None)
        await self._metrics_runner.setup()
        await web.TCPSite(self._metrics_runner, self.settings.server.host, self.metrics_port).start()

    # ---------------------------------------------------------------- one batch

    async def poll_once(self) -> int:
        """Claim, run and finish one batch of due jobs; returns how many jobs were handled."""
        queue, policy = self.context.queue, self.context.policy
        if self._unsettled is not None:
            await self._settle_in_redis(*self._unsettled)  # before claiming anything new
        jobs = await queue.claim(self.batch_max)
        if not jobs:
            return 0
        started_ms = now_ms()
        outcomes: list[Outcome] = []
        retries: list[tuple[ClaimedJob, float]] = []
        runnable: list[ClaimedJob] = []
        for job in jobs:
            if job.failure is None:
                runnable.append(job)
            else:
                logger.error("job %s failed: %s", job.log_id, job.failure)
                outcomes.append(Outcome(job, False, {"status": "failed", "reason": job.failure}))
        if runnable:
            try:
                results = await asyncio.wait_for(
                    process_events(self.context, [Attempt(job.event, job.job_try) for job in runnable]),
                    self.settings.worker.job_timeout_s,
                )
            except (StoreUnavailable, TimeoutError) as exc:
                # Kept whole and retried until the store is back: never given up for this.
                retries = [(job, policy.delay_s(job.job_try)) for job in runnable]
                self._log_unavailable(exc, len(runnable))
                await reconnect_if_stale(self.context.redis, exc)
            except Exception as exc:
                if classify(exc) in (Fault.TRANSIENT, Fault.MISCONFIGURED):
                    raise  # not the pipeline's: the loop's backoff handles it, claims expire
                logger.error("batch of %d failed (%s); events retried", len(runnable), type(exc).__name__,
                             exc_info=exc)
                self._settle(runnable, ["internal error: " + type(exc).__name__] * len(runnable), outcomes, retries)
            else:
                for job, result in zip(runnable, results, strict=True):
                    if result.verdict is Verdict.RETRY:
                        self._settle([job], [result.result["reason"]], outcomes, retries)
                    else:
                        outcomes.append(Outcome(job, True, result.result))
        await self._settle_in_redis(retries, outcomes, started_ms)
        self.jobs_retried += len(retries)
        self.metrics.events_retried.inc(len(retries))
        for outcome in outcomes:
            if outcome.success:
                self.jobs_complete += 1
            else:
                self.jobs_failed += 1
        return len(jobs)

    async def _settle_in_redis(
        self, retries: list[tuple[ClaimedJob, float]], outcomes: list[Outcome], started_ms: int
    ) -> None:
        """Reschedule and finish a batch's jobs. When Redis cannot take them now (down, read-only during a
        fail-over), the batch's verdicts are kept and written first thing once it answers, instead of
        waiting for the claims to lapse (job timeout + 10 s) and running the jobs again. Any other refusal
        would come back every round: the batch is settled with small fixed results instead."""
        queue = self.context.queue
        self._unsettled = (retries, outcomes, started_ms)
        try:
            await queue.retry(retries)
            self._unsettled = ([], outcomes, started_ms)
            await queue.finish(outcomes, started_ms)
        except Exception as exc:
            if classify(exc) in (Fault.TRANSIENT, Fault.MISCONFIGURED):
                raise  # kept in _unsettled
            self._unsettled = None
            await self._settle_fixed(len(retries) + len(outcomes), outcomes, started_ms, exc)
            return
        self._unsettled = None

    async def _settle_fixed(self, count: int, outcomes: list[Outcome], started_ms: int, exc: BaseException) -> None:
        """After Redis refused a batch's results for a reason that is no outage: every finished job gets a
        small fixed failed result naming why; jobs that were to be retried keep their claims, which lapse
        and let them run again. Should Redis refuse even that, the claims lapse for all of them."""
        reason = f"its result could not be written ({describe(exc)})"
        logger.error("a batch of %d job(s) could not be settled (%s); failed results are written instead",
                     count, describe(exc), exc_info=exc)
        try:
            await self.context.queue.finish(outcomes, started_ms, fixed_reason=reason)
        except Exception as second:
            if classify(second) in (Fault.TRANSIENT, Fault.MISCONFIGURED):
                raise  # Redis went away meanwhile: the claims lapse and the jobs run again
            logger.error("even fixed results were refused (%s); %d job(s) run again once their claims lapse",
                         describe(second), len(outcomes))

    def _settle(
        self, jobs: list[ClaimedJob], reasons: list[str], outcomes: list[Outcome],
        retries: list[tuple[ClaimedJob, float]],
    ) -> None:
        """Jobs that failed for a reason that is no store fault: retried until max_tries, then failed."""
        policy = self.context.policy
        for job, reason in zip(jobs, reasons, strict=True):
            if policy.gives_up(job.job_try, store_fault=False):
                logger.error("event failed for good event_id=%s tries=%d reason=%s", job.job_id, job.job_try, reason)
                outcomes.append(Outcome(job, False, {"status": "failed", "reason": reason}))
            else:
                retries.append((job, policy.delay_s(job.job_try)))

    def _log_unavailable(self, exc: BaseException, count: int) -> None:
        if isinstance(exc, StoreUnavailable) and exc.fault is Fault.MISCONFIGURED:
            now = time.monotonic()
            if now - self._misconfigured_logged_at >= MISCONFIGURED_LOG_INTERVAL_S:
                self._misconfigured_logged_at = now
                detail = (getattr(exc.cause, "pgerror", None) or str(exc.cause)).strip().splitlines()
                logger.error(
                    "the database is not usable as configured (%s: %s): run `notify-server migrate` or grant the "
                    "role its privileges; %d event(s) kept and retried", exc, detail[0] if detail else "", count,
                )
            return
        logger.warning("%d event(s) kept for a retry: %s", count,
                       exc if isinstance(exc, StoreUnavailable) else "the batch timed out")
