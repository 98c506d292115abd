"""Where the command line finds the worker program, without importing `workers/`.

Imports run one way: `workers/` uses the server's code, never the other way round. So the worker package
declares itself in setup.py under the entry-point group `notify_server.worker` (name `program`), and
`notify-server worker` and `notify-server dev` load it by that name — the usual way a lower package
reaches a plugin above it (pytest's plugins, Flask's commands).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Protocol

from notify_server.core.settings import Settings

ENTRY_POINT_GROUP = "notify_server.worker"
ENTRY_POINT_NAME = "program"


class InProcessWorker(Protocol):
    """A worker run inside another command's event loop (`dev`): main() until stopped, then close()."""

    async def main(self) -> None: ...

    def stop(self) -> None: ...

    async def close(self) -> None: ...


class WorkerProgram(Protocol):
    def run(self, settings: Settings) -> int:
        """`notify-server worker`: blocks until SIGTERM / SIGINT; returns the exit code."""

    def in_process(self, settings: Settings) -> InProcessWorker:
        """A worker for `dev`, which runs it beside the node and handles the signals itself."""


class WorkerProgramMissing(RuntimeError):
    """The installed distribution declares no worker program (an install without `workers/`)."""


def worker_program() -> WorkerProgram:
    found = entry_points(group=ENTRY_POINT_GROUP, name=ENTRY_POINT_NAME)
    for entry_point in found:
        program: WorkerProgram = entry_point.load()
        return program
    raise WorkerProgramMissing(
        f"no worker program is installed (entry point {ENTRY_POINT_GROUP}:{ENTRY_POINT_NAME}); "
        "reinstall notify-server (`pip install -e .`)"
    )
