"""What decoding one job costs (issue 17): CPU microseconds per job, in process, for the job shapes a
worker meets, against the decoder of the previous release.

For each shape — arq's own pickle (what `create_pool().enqueue_job("process_event", event)` writes) with
1, 2, 10, 100 and 1,000 recipients, and the JSON job `enqueue_event` writes — three ways are timed:

- `before`: the previous release's decoder (the C unpickler, `find_class` refused; rebuilt here, five
  lines, as the baseline): unbounded — it is what the poison payloads went through;
- `decode`: `jobcodec.decode`, what `read_job` runs now (a pickle takes the fast path: grammar, C
  unpickler, a bounded re-pickle when memo references are present, orjson, jsonshape);
- `exact`: the exact reader alone (plainpickle._exact), which a pickle reaches only when the fast path
  cannot prove it (strings of 1 KiB or more, more than one tuple, over 512 KiB, anything refused).

The ways alternate round by round (each round times a loop of jobs), so the machine's other load falls
on all alike; the figure is the median over rounds (with the lowest round beside it: the least disturbed).

    .venv/bin/python -m bench.decode [--rounds 40] [--seconds 0.05]
"""

from __future__ import annotations

import argparse
import io
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from notify_server.ingest import plainpickle
from notify_server.ingest.jobcodec import MAX_JOB_DEPTH, MAX_JOB_NODES, decode


class _BeforeUnpickler(pickle.Unpickler):
    """The previous release's reader: any global refused, nothing else bounded."""

    def find_class(self, module: str, name: str) -> Any:
        raise ValueError(f"{module}.{name}")


def before(payload: bytes) -> Any:
    if payload[:1] == b"\x80":
        data = _BeforeUnpickler(io.BytesIO(payload)).load()
    else:
        data = orjson.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return data


def event(recipients: int) -> dict[str, Any]:
    return {
        "event_id": "claim-abc123-rejected",
        "event_type": "CLAIM_REJECTED",
        "recipients": [{"user_id": f"user-{n}", "email": f"user-{n}@example.com"} for n in range(recipients)],
        "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"},
    }


def shapes() -> dict[str, bytes]:
    now = int(time.time() * 1000)
    jobs = {
        f"pickle, {n} recipient{'s' if n > 1 else ''}": pickle.dumps(
            {"t": None, "f": "process_event", "a": (event(n),), "k": {}, "et": now})  # arq's serialize_job
        for n in (1, 2, 10, 100, 1000)
    }
    jobs["json, 1 recipient"] = orjson.dumps({"t": None, "f": "process_event", "a": [event(1)], "k": {}, "et": now})
    return jobs


def per_job_us(way: Callable[[bytes], Any], payload: bytes, seconds: float) -> float:
    """CPU µs per call, over a loop of at least `seconds`."""
    calls = 0
    started = time.process_time()
    while True:
        for _ in range(20):
            way(payload)
        calls += 20
        spent = time.process_time() - started
        if spent >= seconds:
            return spent / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=0.05, help="CPU seconds per way per round")
    args = parser.parse_args()
    ways: dict[str, Callable[[bytes], Any]] = {
        "before": before,
        "decode": lambda payload: decode(payload)[1],
        "exact": lambda payload: plainpickle._exact(payload, MAX_JOB_DEPTH, MAX_JOB_NODES),
    }
    print(f"{'job':<26} {'bytes':>7} " + " ".join(f"{name + ' µs':>20}" for name in ways))
    for shape, payload in shapes().items():
        applicable = {name: way for name, way in ways.items() if name != "exact" or payload[:1] == b"\x80"}
        for way in applicable.values():
            assert way(payload) == before(payload)
        samples: dict[str, list[float]] = {name: [] for name in applicable}
        for _ in range(args.rounds):
            for name, way in applicable.items():
                samples[name].append(per_job_us(way, payload, args.seconds))
        cells = [
            f"{statistics.median(samples[name]):>10.2f} ({min(samples[name]):>6.2f})" if name in samples else f"{'-':>20}"
            for name in ways
        ]
        print(f"{shape:<26} {len(payload):>7} " + " ".join(cells))
    print("median over rounds (lowest round); CPU time of this process")


if __name__ == "__main__":
    main()
