"""Background loops that must live: run, restart with backoff after any exception, say when one is down.

A node runs its push consumer, presence refresher, revocation listener, session re-check and heartbeat
sweep under one `Supervisor`; the worker runs its main loop under one too. A loop that raises is
restarted after a backoff (0.1 s doubling up to `backoff_max_s`); the first failure of an outage is
logged with its traceback (one line when it is a store going away, which is expected in operation),
repeats of the same error are one line each, and the recovery is logged.
While a loop is down — from a failure until it reports progress again with `LoopHealth.ok()` — it is
named by `down()`, which `/readyz` turns into a 503. `restarts` counts restarts per loop (a metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from notify_server.core.stores import Fault, classify, describe

logger = logging.getLogger("notify.supervisor")


StateHook = Callable[[str, bool], None]


class LoopHealth:
    """What a supervised loop tells its supervisor: `ok()` after each round that worked."""

    __slots__ = ("name", "up", "failures", "last_error", "on_change")

    def __init__(self, name: str, on_change: StateHook | None = None) -> None:
        self.name = name
        self.up = True
        self.failures = 0  # consecutive failures of the current outage
        self.last_error = ""
        self.on_change = on_change  # told (name, up) when the loop goes down or comes back

    def ok(self) -> None:
        if not self.up:
            logger.info("%s recovered after %d restart(s)", self.name, self.failures)
            if self.on_change is not None:
                self.on_change(self.name, True)
        self.up = True
        self.failures = 0
        self.last_error = ""

    def failed(self, error: str) -> None:
        if self.up and self.on_change is not None:
            self.on_change(self.name, False)
        self.up = False
        self.failures += 1
        self.last_error = error


Loop = Callable[[LoopHealth], Awaitable[None]]
FailureHook = Callable[[BaseException], Awaitable[None]]


class Supervisor:
    def __init__(
        self, restarts: Counter | None = None, *, backoff_max_s: float = 2.0, on_failure: FailureHook | None = None,
        on_change: StateHook | None = None,
    ) -> None:
        self._restarts = restarts
        self._on_failure = on_failure
        self._on_change = on_change
        self._backoff_max_s = backoff_max_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._health: dict[str, LoopHealth] = {}

    def start(self, name: str, loop: Loop) -> None:
        """Run `loop(health)` until stop(); a loop that returns is a failure too (it should not end)."""
        if name in self._tasks:
            raise ValueError(f"loop {name!r} is already running")
        health = self._health[name] = LoopHealth(name, self._on_change)
        self._tasks[name] = asyncio.get_running_loop().create_task(self._run(name, loop, health), name=name)

    def down(self) -> dict[str, str]:
        """{loop name: its last error} for every loop that is down now."""
        return {name: health.last_error for name, health in self._health.items() if not health.up}

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _run(self, name: str, loop: Loop, health: LoopHealth) -> None:
        backoff = Backoff(self._backoff_max_s)
        while True:
            started = time.monotonic()
            try:
                await loop(health)
                error: BaseException = RuntimeError("the loop returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stopping(exc)
                error = exc
            if time.monotonic() - started > 30:
                backoff.reset()  # it ran for a while: a new outage, not the same one
            delay_s = backoff.next()
            report_failure(name, health, error, delay_s)
            if self._restarts is not None:
                self._restarts.labels(name).inc()
            if self._on_failure is not None:
                with contextlib.suppress(Exception):
                    await self._on_failure(error)
            await asyncio.sleep(delay_s)


class Backoff:
    """0.1 s, doubling, up to max_s; reset() after a success."""

    def __init__(self, max_s: float, first_s: float = 0.1) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._next_s = first_s

    def next(self) -> float:
        delay_s, self._next_s = self._next_s, min(self._max_s, self._next_s * 2)
        return delay_s

    def reset(self) -> None:
        self._next_s = self._first_s


def stopping(exc: BaseException | None = None) -> None:
    """Raise CancelledError when this task is being cancelled but the cancel got lost on the way: on
    Python 3.11, asyncio.wait_for (aiopg wraps every statement in it) can swallow a cancel that arrives
    as the statement completes, and aiopg's transactions can turn it into another error (`exc`;
    gh-86296, fixed in 3.12). A loop that took that for a failure would restart instead of stopping, and
    one that went on would never see the stop; both call this."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def report_failure(name: str, health: LoopHealth, error: BaseException, delay_s: float) -> None:
    """Log a loop's failure: with its traceback the first time, one line while the same error repeats."""
    summary = describe(error)
    repeated = not health.up and health.last_error == summary
    health.failed(summary)
    if repeated:
        logger.warning("%s still failing (%s, %d times); retrying in %.1fs", name, summary, health.failures, delay_s)
    elif classify(error) is Fault.TRANSIENT:  # expected in operation: one line, no traceback
        logger.warning("%s lost its store (%s: %s); retrying in %.1fs", name, summary, _first_line(error), delay_s)
    else:
        logger.error("%s failed (%s); retrying in %.1fs", name, summary, delay_s, exc_info=error)
