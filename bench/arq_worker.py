"""A plain arq worker running `process_event` one job at a time: the reference for the batched consumer.

    NOTIFY_DATABASE_URL=… NOTIFY_REDIS_URL=… .venv/bin/python -m bench.arq_worker

The same as `arq workers.settings.WorkerSettings` (which reads the same configuration).
"""

from __future__ import annotations

from arq import Worker

from notify_server.core.logs import configure_logging
from notify_server.core.settings import load_settings
from workers.arq_worker import arq_worker_options

if __name__ == "__main__":
    settings = load_settings()
    configure_logging(settings.log.level, settings.log.format)
    Worker(**arq_worker_options(settings)).run()
