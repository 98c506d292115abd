"""CPU and memory of processes from /proc: utime+stime deltas and VmRSS (Linux only)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """VmRSS of one process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pids_named(*names: str) -> list[int]:
    """Pids whose /proc/<pid>/comm is one of these names (e.g. "redis-server", "postgres")."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _comm(int(entry)) in names:
            found.append(int(entry))
    return found


def postgres_pids() -> list[int]:
    """Every postgres process (postmaster and backends) on the machine."""
    return pids_named("postgres", "postmaster")


def redis_pids() -> list[int]:
    return pids_named("redis-server", "valkey-server")


class CpuMeter:
    """CPU seconds used by named groups of processes between start() and stop().

    Groups are re-resolved at stop() for postgres (backends come and go): a backend that exited in
    between is missed, one that started is counted from zero; both are small next to the totals.
    """

    def __init__(self, groups: Mapping[str, Iterable[int]], dynamic_postgres: bool = True) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.dynamic_postgres = dynamic_postgres
        self._start: dict[int, float] = {}
        self._t0 = 0.0
        self.seconds: dict[str, float] = {}
        self.wall_s = 0.0

    def _all_pids(self) -> set[int]:
        pids = {pid for group in self.groups.values() for pid in group}
        if self.dynamic_postgres:
            pids |= set(postgres_pids())
        return pids

    def start(self) -> CpuMeter:
        import time

        self._t0 = time.monotonic()
        self._start = {pid: cpu_seconds(pid) for pid in self._all_pids()}
        self._machine0 = machine_busy_seconds()
        return self

    def stop(self) -> dict[str, float]:
        """{group: % of one core over the interval} (also kept in .seconds as CPU seconds), plus
        "others": what the rest of the machine used meanwhile (other test runs on a shared box)."""
        import time

        self.wall_s = time.monotonic() - self._t0
        groups = dict(self.groups)
        if self.dynamic_postgres:
            groups["postgres"] = postgres_pids()
        self.seconds = {
            name: sum(max(0.0, cpu_seconds(pid) - self._start.get(pid, 0.0)) for pid in pids)
            for name, pids in groups.items()
        }
        ours = sum(self.seconds.values())
        self.seconds["others"] = max(0.0, machine_busy_seconds() - self._machine0 - ours)
        return {name: 100.0 * s / self.wall_s for name, s in self.seconds.items()} if self.wall_s else {}


def wait_quiet(own_pids: Iterable[int] = (), busy_max_pct: float = 50.0, window_s: float = 1.0,
               max_wait_s: float = 30.0) -> float:
    """Wait (at most max_wait_s) until the rest of the machine uses under busy_max_pct of one core over
    a window, so a step does not start in the middle of another test run's burst. Returns the last
    reading (% of one core used by processes other than own_pids)."""
    import time

    own = list(own_pids)
    deadline = time.monotonic() + max_wait_s
    while True:
        m0, o0 = machine_busy_seconds(), sum(cpu_seconds(p) for p in own)
        time.sleep(window_s)
        others = 100.0 * ((machine_busy_seconds() - m0) - (sum(cpu_seconds(p) for p in own) - o0)) / window_s
        if others <= busy_max_pct or time.monotonic() >= deadline:
            return others
