"""Embedded Postgres and Redis for test runs on machines that have neither (see tests/services.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from notify_server.ops import embedded


@contextmanager
def embedded_postgres() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="notify-test-pg-"))
    try:
        with embedded.embedded_postgres(root) as url:
            yield url
    finally:
        shutil.rmtree(embedded.postgres_data_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def embedded_redis() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="notify-test-redis-"))
    try:
        with embedded.embedded_redis(root) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)
