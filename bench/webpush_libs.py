"""Which Web Push library: CPU per message and event-loop stalls of each way of sending (issue 20).

Needs the candidates beside the project: `pip install pywebpush` (brings py-vapid, http-ece, requests).

    python -m bench.webpush_libs [--messages 2000]

Measured, per message (median of --messages, one process, nothing else running in it):
- ours: notify_server.transport.webpush_encryption.encrypt (cryptography) + the cached VAPID header;
- http_ece: http_ece.encrypt with a fresh ECDH key (what pywebpush calls) + the cached VAPID header;
- pywebpush: WebPusher.encode + Vapid.sign per message (what `webpush()` / `webpush_async()` compute);
and, sending 300 messages to a push service on loopback (in a process of its own) from an event loop
with a 1 ms ticker on it, the loop's longest stall and the wall time:
- pywebpush.webpush (requests: blocking) called on the loop;
- pywebpush.webpush_async (aiohttp), 50 at a time;
- ours on aiohttp (notify_server.transport.webpush_sender's request), 50 at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from notify_server.core.vapid_keys import b64url, public_key_bytes
from notify_server.transport.webpush_encryption import encrypt
from notify_server.transport.webpush_vapid import VapidSigner

PAYLOAD = (b'{"type":"notification","data":{"notification_id":"4f0c3f7e-8a4b-4c55-9d1e-6a3f0b2f1c9d","title":'
           b'"Claim Rejected","body":"Your claim for Dr. Smith has been rejected.","priority":"HIGH","action_url":'
           b'"/claims/abc123","event_type":"CLAIM_REJECTED","metadata":{},"created_at":"2026-12-06T10:00:00.000Z"}}')


def per_message_us(candidates: dict[str, Callable[[], Any]], count: int, rounds: int = 5) -> dict[str, float]:
    """Median µs per call of each candidate, the candidates interleaved round by round (the machine is
    shared: a busy minute then weighs on all of them alike)."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, action in candidates.items():
            for _ in range(count // rounds):
                started = time.perf_counter()
                action()
                samples[name].append((time.perf_counter() - started) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def _serve(port_out: Any) -> None:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201)

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/push/{token}", accept)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(run())


def serve_in_process() -> tuple[str, Callable[[], None]]:
    """A push service answering 201 to everything, in a process of its own (not sharing our GIL)."""
    ports: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    process.start()
    port = ports.get(timeout=30)

    def stop() -> None:
        process.terminate()
        process.join(5)

    return f"http://127.0.0.1:{port}/push/x", stop


async def with_ticker(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(longest stall of a 1 ms ticker in ms, wall seconds) while `work` runs on this loop."""
    longest = 0.0
    running = True

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, (now - last) * 1000 - 1)
            last = now

    ticker = asyncio.get_running_loop().create_task(tick())
    await asyncio.sleep(0.01)  # the ticker is ticking
    started = time.perf_counter()
    await work()
    wall = time.perf_counter() - started
    running = False
    await ticker
    return longest, wall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sends", type=int, default=300)
    args = parser.parse_args()

    import http_ece
    import pywebpush
    from py_vapid import Vapid

    browser = ec.generate_private_key(ec.SECP256R1())
    p256dh, auth = public_key_bytes(browser), os.urandom(16)
    vapid_key = ec.generate_private_key(ec.SECP256R1())
    signer = VapidSigner(vapid_key, "mailto:bench@example.com")
    endpoint, stop = serve_in_process()
    subscription = {"endpoint": endpoint, "keys": {"p256dh": b64url(p256dh), "auth": b64url(auth)}}
    vapid = Vapid.from_string(private_key=b64url(vapid_key.private_numbers().private_value.to_bytes(32, "big")))

    def with_http_ece() -> None:
        http_ece.encrypt(PAYLOAD, private_key=ec.generate_private_key(ec.SECP256R1()), dh=p256dh,
                         auth_secret=auth, version="aes128gcm")
        signer.authorization(endpoint)

    def with_pywebpush() -> None:
        pywebpush.WebPusher(subscription).encode(PAYLOAD, "aes128gcm")
        vapid.sign({"sub": "mailto:bench@example.com", "aud": "http://127.0.0.1", "exp": int(time.time()) + 3600})

    rows = per_message_us({
        "ours (cryptography)": lambda: (encrypt(PAYLOAD, p256dh, auth), signer.authorization(endpoint)),
        "http_ece + cached VAPID": with_http_ece,
        "pywebpush encode + py_vapid sign": with_pywebpush,
    }, args.messages)
    print("CPU per message (median µs):")
    for name, value in rows.items():
        print(f"  {name:<34} {value:7.0f}")

    claims = {"sub": "mailto:bench@example.com"}

    async def blocking() -> None:
        for _ in range(args.sends):
            pywebpush.webpush(subscription, PAYLOAD.decode(), vapid_private_key=vapid, vapid_claims=dict(claims),
                              ttl=60)
            await asyncio.sleep(0)  # the loop runs between two calls, never during one

    async def pywebpush_async() -> None:
        async with aiohttp.ClientSession() as http:
            slots = asyncio.Semaphore(50)

            async def one() -> None:
                async with slots:
                    await pywebpush.webpush_async(subscription, PAYLOAD.decode(), vapid_private_key=vapid,
                                                  vapid_claims=dict(claims), ttl=60, aiohttp_session=http)

            await asyncio.gather(*(one() for _ in range(args.sends)))

    async def ours(one_per_turn: bool) -> None:
        async with aiohttp.ClientSession() as http:
            slots = asyncio.Semaphore(50)

            async def one() -> None:
                body = encrypt(PAYLOAD, p256dh, auth)
                headers = {"Authorization": signer.authorization(endpoint), "TTL": "60",
                           "Content-Encoding": "aes128gcm", "Urgency": "normal"}
                async with slots, http.post(endpoint, data=body, headers=headers, allow_redirects=False) as r:
                    await r.content.read(1024)

            if not one_per_turn:
                await asyncio.gather(*(one() for _ in range(args.sends)))
                return
            tasks = []
            for _ in range(args.sends):  # as the sender starts them: one message per loop turn
                tasks.append(asyncio.get_running_loop().create_task(one()))
                await asyncio.sleep(0)
            await asyncio.gather(*tasks)

    print(f"{args.sends} messages to a loopback push service, a 1 ms ticker on the loop:")
    for name, work in (("pywebpush.webpush (requests)", blocking), ("pywebpush.webpush_async", pywebpush_async),
                       ("ours, all started at once", lambda: ours(False)),
                       ("ours, one started per turn", lambda: ours(True))):
        stall_ms, wall_s = await with_ticker(work)
        print(f"  {name:<30} longest stall {stall_ms:7.1f} ms, {wall_s:5.2f} s, "
              f"{args.sends / wall_s:6.0f} messages/s")
    stop()


if __name__ == "__main__":
    asyncio.run(main())
