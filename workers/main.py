"""The worker process's composition root: what `notify-server worker` and `dev` run.

setup.py declares `PROGRAM` under the entry point `notify_server.worker:program`; the command line loads
it from there (notify_server/ops/worker_program.py), so `notify_server/` never imports this package.
"""

from __future__ import annotations

from notify_server.core.settings import Settings
from workers.consumer import EventConsumer


class _Program:
    def run(self, settings: Settings) -> int:
        EventConsumer(settings).run()
        return 0

    def in_process(self, settings: Settings) -> EventConsumer:
        return EventConsumer(settings, handle_signals=False)


PROGRAM = _Program()
