"""`arq workers.settings.WorkerSettings`: arq's own worker, configured like every other command.

The Redis URL, queue name, tries, timeouts and concurrency come from the same settings loader
(`NOTIFY_CONFIG`, `NOTIFY_*`, config.yaml) as `notify-server`, read when arq imports this module (arq
reads a settings class's attributes); a bad configuration stops it with one line, as the CLI does.
Import `workers.arq_worker` instead to build arq options for settings of your own.
"""

from __future__ import annotations

import sys
from typing import Any

from notify_server.core.settings import ConfigError, load_settings
from workers.arq_worker import arq_worker_options


def _load() -> dict[str, Any]:
    try:
        return arq_worker_options(load_settings())
    except ConfigError as exc:
        print(f"notify-server: config error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


WorkerSettings = type("WorkerSettings", (), _load())
