"""Request bodies read as JSON, bounded while they are read: 413 past the limit, whatever
Content-Length says (a client can lie about it, or send chunks)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

READ_CHUNK_BYTES = 65536


async def read_json_body(request: web.Request, limit: int, setting: str) -> Any:
    """The body as JSON, None when it is empty; 413 naming `setting` over `limit` bytes, 400 when it is
    not JSON (orjson refuses nesting past 1,024 levels on its own)."""
    too_large = f"the body is over {limit} bytes ({setting})"
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length, reason=too_large)
    body = bytearray()
    async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body), reason=too_large)
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(reason="the body must be JSON") from None
