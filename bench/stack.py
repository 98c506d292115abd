"""A throw-away stack for benchmarks: its own database and Redis db, real `serve` / `worker` processes."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.processes import Process
from tests.services import postgres_server, redis_server, throwaway_database, throwaway_redis_db


@contextlib.contextmanager
def stores() -> Iterator[tuple[str, str]]:
    """(database URL, Redis URL), both new and empty, removed afterwards."""
    with postgres_server() as pg, throwaway_database(pg) as database_url:
        with redis_server() as rs, throwaway_redis_db(rs) as redis_url:
            yield database_url, redis_url


def env_for(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(NOTIFY_DATABASE_URL=database_url, NOTIFY_REDIS_URL=redis_url, NOTIFY_LOG_LEVEL="WARNING", **extra)
    return env


class Processes:
    """Children started for one run; all stopped when the block ends."""

    def __init__(self) -> None:
        self.logs = Path(tempfile.mkdtemp(prefix="notify-bench-"))
        self.started: list[Process] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> Process:
        process = Process(args, env, self.logs / f"{name}.log")
        self.started.append(process)
        return process

    def start_module(self, name: str, module: str, env: dict[str, str], args: Sequence[str] = ()) -> Process:
        """`python -m <module> [args]` instead of `python -m notify_server …`."""
        process = Process(args, env, self.logs / f"{name}.log", module=module)
        self.started.append(process)
        return process

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.started:
            process.stop()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
