"""The reference peer: python-socketio's AsyncServer on aiohttp with AsyncRedisManager.

Auth: the token (Socket.IO connect auth {"token": T}, or ?token=T) is `<user_id>.<hmac>`, checked with
the shared secret (no store, so this is cheaper than notify-server's session lookup); the socket joins
room `user:<user_id>`. Producers emit to that room from another process through
`AsyncRedisManager(write_only=True)` on the same channel. No compression (HTTP or permessage-deflate:
the bench client does not offer it). uvloop when installed, like `notify-server serve` (`--loop asyncio`
for the default loop).

    .venv/bin/python -m bench.peer_socketio --port 8090 --redis-url redis://127.0.0.1:6379/3 \
        --channel bench-sio --secret s3cret
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
from urllib.parse import parse_qs

import socketio
from aiohttp import web


def make_token(secret: str, user_id: str) -> str:
    mac = hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{user_id}.{mac}"


def user_of(secret: str, token: str | None) -> str | None:
    if not token or "." not in token:
        return None
    user_id = token.rsplit(".", 1)[0]
    return user_id if hmac.compare_digest(make_token(secret, user_id), token) else None


def build_app(redis_url: str, channel: str, secret: str) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url, channel=channel)
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=manager, cors_allowed_origins="*",
        http_compression=False, logger=False, engineio_logger=False,
    )

    @sio.event
    async def connect(sid: str, environ: dict, auth: dict | None) -> bool:
        token = (auth or {}).get("token") if isinstance(auth, dict) else None
        if token is None:
            token = (parse_qs(environ.get("QUERY_STRING", "")).get("token") or [None])[0]
        user_id = user_of(secret, token)
        if user_id is None:
            raise socketio.exceptions.ConnectionRefusedError("unauthorized")
        await sio.enter_room(sid, f"user:{user_id}")
        return True

    app = web.Application()
    sio.attach(app)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", default="socketio")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.loop == "uvloop":
        try:
            import asyncio

            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    web.run_app(build_app(args.redis_url, args.channel, args.secret), host=args.host, port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
