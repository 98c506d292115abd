"""One `notify-server dev` per data directory: the lock file `<dev.data_dir>/dev.lock`.

The lock is an flock(2) on that file, held for the life of the process: the kernel drops it when the
process ends, however it ends (SIGKILL included), so a lock can never outlive its holder — no pid check
that a reused pid could fool. The file's content ({"pid", "url"}) only tells a second `dev` whom it
met. It is emptied, never removed, on exit: removing it would let a third process lock a new file while
a second still holds the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = "dev.lock"
MAX_LOCK_BYTES = 4096


class AlreadyRunning(Exception):
    """Another `dev` holds this data directory; the message names its pid and page."""


def _holder(fd: int) -> dict[str, Any]:
    try:
        found = json.loads(os.pread(fd, MAX_LOCK_BYTES, 0) or b"{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


@contextlib.contextmanager
def dev_lock(data_dir: Path, url: str) -> Iterator[None]:
    """Hold data_dir for this process while the block runs; raises AlreadyRunning when another has it."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # CLOEXEC: no child inherits the lock
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            pid, page = holder.get("pid", "?"), holder.get("url") or "its page"
            raise AlreadyRunning(
                f"notify-server dev is already running in {data_dir} (pid {pid}): open {page}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "url": url}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
