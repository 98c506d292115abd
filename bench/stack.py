"""A throw-away stack for benchmarks: its own database and Redis db, real `serve` / `worker` processes."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.processes import REPO_ROOT, Process
from tests.services import postgres_server, redis_server, throwaway_database, throwaway_redis_db

NODE_PEER = REPO_ROOT / "bench" / "peer_node"


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


class Command(Process):
    """Any program (e.g. `node bench/peer_node/server.js …`) as a `Process`: same log file, same stop."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(list(argv), env=env, cwd=REPO_ROOT, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)


def raise_open_files() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it: Node cannot raise its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def node_peer_argv(port: int, redis_url: str, secret: str, key: str) -> list[str]:
    """The command line of the Node.js socket.io peer; fails early when node or its packages are missing."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("the node peer needs Node.js (`node` on PATH)")
    if not (NODE_PEER / "node_modules" / "socket.io").is_dir():
        raise SystemExit(f"the node peer's packages are missing: npm ci --prefix {NODE_PEER.relative_to(REPO_ROOT)}")
    return [node, str(NODE_PEER / "server.js"), "--port", str(port), "--redis-url", redis_url,
            "--secret", secret, "--key", key]


def node_peer_versions() -> dict[str, str]:
    """Node.js and the peer's installed package versions (empty where missing), for the results file."""
    import json

    out: dict[str, str] = {}
    node = shutil.which("node")
    if node is not None:
        out["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    for name, label in (("socket.io", "socket.io"), ("@socket.io/redis-adapter", "@socket.io/redis-adapter"),
                        ("redis", "node-redis"), ("ws", "ws"), ("bufferutil", "bufferutil")):
        manifest = NODE_PEER / "node_modules" / name / "package.json"
        if manifest.exists():
            out[label] = json.loads(manifest.read_text())["version"]
    return out


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

    def start_command(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Process:
        """Any program, e.g. `node bench/peer_node/server.js …`."""
        raise_open_files()
        process = Command(argv, env, self.logs / f"{name}.log")
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
