"""A node process's own port (`server.metrics_port`): /metrics, /healthz and /readyz of this process only.

With `serve --processes N` every process shares the main port and the kernel hands each connection to one
of them, so a scrape of the main port's /metrics reads a different process each time. Each process
therefore also listens on `server.metrics_port + its index`, serving nothing else: scrape every one
(README "Every core"). The handlers are the main app's own, over the same pools and metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from notify_server.web import api, appkeys

# What the three handlers read from their app: the side app shares these objects with the main one.
_SHARED_KEYS = (appkeys.SETTINGS, appkeys.NODE_ID, appkeys.DB, appkeys.REDIS, appkeys.SUPERVISOR, appkeys.METRICS)


async def process_port_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context, after the node's own: opens the side port when `server.metrics_port` is set."""
    settings = app[appkeys.SETTINGS].server
    if not settings.metrics_port:
        yield
        return
    side = web.Application()
    for key in _SHARED_KEYS:
        side[key] = app[key]  # type: ignore[misc]  # each AppKey to a value of its own type
    side.router.add_get("/metrics", api.metrics)
    side.router.add_get("/healthz", api.healthz)
    side.router.add_get("/readyz", api.readyz)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.metrics_port).start()
        yield
    finally:
        await runner.cleanup()
