"""Several processes of one command on one host (`serve --processes N`, `worker --processes N`), supervised.

The parent starts N children, `python -m notify_server <command> ... --process-index i`: each one a whole
node or worker (its own node id, presence, push stream, pools and event loop; nodes share the port
through SO_REUSEPORT, the kernel spreads new connections over them). The parent only supervises:

- a child that exits is started again after a backoff (0.5 s doubling up to 10 s; back to 0.5 s once a
  child ran 30 s), and the exit is logged;
- a child of the first start that exits within STARTUP_FAILURE_S with 1 or 2 (a bad config or argument,
  a port it cannot bind: every child would do the same) stops the group: the parent exits with its code;
- SIGTERM or SIGINT to the parent: every child gets SIGTERM once and drains as a single process would
  (nodes close their sockets with 1001); children still running after `stop_timeout_s` are killed;
  a second signal kills them at once;
- the children get SIGTERM if the parent dies (PR_SET_PDEATHSIG), so none is left orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

logger = logging.getLogger("notify.processes")

STARTUP_FAILURE_S = 5.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0
POLL_S = 0.1
EXPECTED_FAILURES = (1, 2)  # the CLI's exit codes for expected failures and bad arguments

_PR_SET_PDEATHSIG = 1


def cpu_count() -> int:
    """`--processes auto`: the cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """Run in the child between fork and exec: SIGTERM when the parent goes, however it goes."""

    def arrange() -> None:
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            return
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # it died before prctl took effect
            os._exit(1)

    return arrange


@dataclasses.dataclass
class Child:
    index: int
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    restart_at: float | None = None
    backoff_s: float = BACKOFF_FIRST_S
    terminated: bool = False  # sent SIGTERM (once: a second one would cut a node's drain short)


class ProcessGroup:
    """N children of one command line; `run()` blocks until they are all stopped, returns the exit code."""

    def __init__(self, command: str, child_args: Sequence[str], count: int, *, stop_timeout_s: float) -> None:
        self.command = command
        self.child_args = list(child_args)
        self.children = [Child(index) for index in range(count)]
        self.stop_timeout_s = stop_timeout_s
        self._signals = 0

    def argv(self, child: Child) -> list[str]:
        return [sys.executable, "-m", "notify_server", self.command, *self.child_args,
                "--process-index", str(child.index)]

    def _start(self, child: Child) -> None:
        child.popen = subprocess.Popen(self.argv(child), start_new_session=True,
                                       preexec_fn=_die_with_parent(os.getpid()))
        child.terminated = False
        child.started_at = time.monotonic()
        child.starts += 1
        child.restart_at = None
        logger.info("%s process %d started (pid %d)", self.command, child.index, child.popen.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("%s: stopping %d process(es)", signal.Signals(signum).name, len(self.children))
            self._terminate_all()
        else:
            self._send(signal.SIGKILL)

    def _running(self) -> list[Child]:
        return [c for c in self.children if c.popen is not None and c.popen.poll() is None]

    def _terminate_all(self) -> None:
        for child in self._running():
            if not child.terminated:
                child.terminated = True
                assert child.popen is not None
                child.popen.send_signal(signal.SIGTERM)

    def _send(self, signum: int) -> None:
        for child in self._running():
            assert child.popen is not None
            child.popen.send_signal(signum)

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            for child in self.children:
                if not self._signals:
                    self._start(child)
            code = self._supervise()
            self._stop_all()
            return code
        finally:
            self._send(signal.SIGKILL)  # only those still running: after _stop_all, none
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _supervise(self) -> int:
        while not self._signals:
            now = time.monotonic()
            for child in self.children:
                code = self._exited(child)
                if code is not None:
                    failed = self._note_exit(child, code, now)
                    if failed is not None:
                        return failed
                if child.restart_at is not None and now >= child.restart_at and not self._signals:
                    self._start(child)
            time.sleep(POLL_S)
        return 0

    @staticmethod
    def _exited(child: Child) -> int | None:
        if child.popen is None or child.restart_at is not None:
            return None
        return child.popen.poll()

    def _note_exit(self, child: Child, code: int, now: float) -> int | None:
        """Schedule the restart; returns an exit code for the whole group when this exit ends it."""
        ran_s = now - child.started_at
        if child.starts == 1 and ran_s < STARTUP_FAILURE_S and code in EXPECTED_FAILURES:
            logger.error("%s process %d exited with %d at start-up: stopping the group", self.command,
                         child.index, code)
            return code
        if ran_s >= STABLE_AFTER_S:
            child.backoff_s = BACKOFF_FIRST_S
        child.restart_at = now + child.backoff_s
        logger.warning("%s process %d (pid %d) exited with %d after %.1fs; restarting it in %.1fs", self.command,
                       child.index, child.popen.pid if child.popen else -1, code, ran_s, child.backoff_s)
        child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)
        return None

    def _stop_all(self) -> None:
        """SIGTERM to every child still running (once), then wait; kill whoever outlives stop_timeout_s."""
        self._signals = max(self._signals, 1)
        self._terminate_all()
        deadline = time.monotonic() + self.stop_timeout_s
        for child in self.children:
            if child.popen is None:
                continue
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s process %d did not stop within %.0fs: killed", self.command, child.index,
                               self.stop_timeout_s)
                child.popen.kill()
                child.popen.wait()
        logger.info("%s: all %d process(es) stopped", self.command, len(self.children))


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (never listen on) host:port with SO_REUSEPORT for the group's life; yields the port (port 0:
    the one the kernel chose). Children bind the same port with SO_REUSEPORT and listen; a socket that
    does not listen takes no connections. Raises OSError when the port cannot be bound."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def run_group(command: str, child_args: Sequence[str], count: int, *, stop_timeout_s: float) -> int:
    """Blocking: run `count` supervised children of `python -m notify_server <command> <child_args>`."""
    return ProcessGroup(command, child_args, count, stop_timeout_s=stop_timeout_s).run()
