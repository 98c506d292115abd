"""Small helpers the tests share."""

from __future__ import annotations

from typing import Any

from notify_server.settings import Settings
from workers.consumer import EventConsumer
from workers.settings import build_worker


async def run_worker_burst(settings: Settings, **overrides: Any) -> EventConsumer:
    """Run the real worker (the batched consumer) until the event queue is empty, then close it;
    returns it for its counters (jobs_complete, jobs_failed, jobs_retried)."""
    options: dict[str, Any] = {"burst": True, "poll_delay": 0, "handle_signals": False, "max_tries": 5}
    options.update(overrides)
    worker = build_worker(settings, **options)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker
