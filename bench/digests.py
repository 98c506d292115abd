"""How late digest windows end under load (issue 19: "on time within a second, whatever the load, across
any number of workers").

Private Postgres and Redis (bench.budget's), W `notify-server worker` processes with a DOCUMENT_REQUESTED
window of `--window-s`. For `--seconds`: single-recipient CLAIM_REJECTED events at `--rate` per second
to 1,000 users, a 10,000-recipient event every `--fanout-every-s`, and `--users` users each receiving a
DOCUMENT_REQUESTED every `--doc-every-s` (so each opens a window, has events held in it, and gets a
digest when it ends, over and over). Then, from Postgres: each digest's lateness (its row's created_at,
the start of the flush that stored it, minus the window's end, which its event id carries), and that
every document was delivered exactly once (at once, or counted in exactly one digest).

    .venv/bin/python -m bench.digests [--workers 2] [--rate 500] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import aiopg
import yaml
from redis.asyncio import Redis

from bench.budget import private_stores
from bench.stack import Processes, env_for, percentile
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.digests import DIGEST_EVENT_PREFIX
from tests.processes import REPO_ROOT


def claim(event_id: str, *users: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": u} for u in users],
            "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"}}


def document(event_id: str, user: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "DOCUMENT_REQUESTED", "recipients": [{"user_id": user}],
            "data": {"requester_name": "Dr. Jones", "document_name": "x-ray", "request_id": event_id}}


async def paced(redis: Redis, per_s: float, seconds: float, make: Any) -> int:
    """Enqueue make(n) at per_s a second for `seconds`; returns how many."""
    started = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * per_s) + 1
        while sent < due:
            await enqueue_event(redis, make(sent))
            sent += 1
        await asyncio.sleep(0.002)
    return sent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0, help="single-recipient events per second")
    parser.add_argument("--fanout-every-s", type=float, default=5.0, help="a 10,000-recipient event this often")
    parser.add_argument("--users", type=int, default=200, help="users receiving digest-type events")
    parser.add_argument("--doc-every-s", type=float, default=0.5, help="a DOCUMENT_REQUESTED per user this often")
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    config = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    config["templates"]["DOCUMENT_REQUESTED"]["digest_window_s"] = args.window_s
    config_path = Path(tempfile.mkdtemp(prefix="notify-digests-")) / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with private_stores() as (database_url, redis_url, _redis_pid, _data_dir), Processes() as children:
        env = env_for(database_url, redis_url, NOTIFY_CONFIG=str(config_path))
        for n in range(args.workers):
            children.start(f"worker-{n}", ["worker"], env)
        redis = Redis.from_url(redis_url)
        await asyncio.sleep(3.0)
        users = [f"doc-user-{i}" for i in range(args.users)]
        fanout_users = [f"fan-{i}" for i in range(10_000)]
        load, fanouts, docs = await asyncio.gather(
            paced(redis, args.rate, args.seconds, lambda n: claim(f"load-{n}", f"load-user-{n % 1000}")),
            paced(redis, 1 / args.fanout_every_s, args.seconds, lambda n: claim(f"fan-{n}", *fanout_users)),
            paced(redis, args.users / args.doc_every_s, args.seconds,
                  lambda n: document(f"doc-{n}", users[n % len(users)])),
        )
        async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # every queued event processed, every window ended
                await cur.execute("SELECT count(*) FROM digest_held WHERE delivered_at IS NULL")
                pending = (await cur.fetchone())[0]
                if pending == 0 and await redis.zcard("notify:events") == 0:
                    break
                await asyncio.sleep(0.5)
            await cur.execute(
                "SELECT event_id, created_at, (metadata->>'digest_count')::int FROM notifications"
                " WHERE event_type = 'DOCUMENT_REQUESTED'")
            rows = await cur.fetchall()
        await redis.aclose()
    late: list[float] = []
    folded = immediate = 0
    for event_id, created_at, count in rows:
        if event_id.startswith(DIGEST_EVENT_PREFIX):
            due = dt.datetime.fromisoformat(event_id[len(DIGEST_EVENT_PREFIX):].split(":", 1)[1].rsplit(":", 1)[0])
            late.append((created_at - due).total_seconds())
            folded += count
        else:
            immediate += 1
    late.sort()
    print(f"{args.workers} workers, {args.seconds:.0f} s: {load} single-recipient events ({args.rate:.0f}/s),"
          f" {fanouts} events of 10,000 recipients, {docs} digest-type events to {args.users} users"
          f" (window {args.window_s:g} s)")
    print(f"documents: {immediate} delivered at once + {folded} folded into {len(late)} digests ="
          f" {immediate + folded} of {docs} sent ({'exactly once' if immediate + folded == docs else 'MISMATCH'})")
    if late:
        print(f"a digest stored after its window's end: p50 {percentile(late, 50) * 1000:.0f} ms,"
              f" p99 {percentile(late, 99) * 1000:.0f} ms, max {late[-1] * 1000:.0f} ms;"
              f" {sum(1 for s in late if s > 1.0)} of {len(late)} later than 1 s")


if __name__ == "__main__":
    asyncio.run(main())
