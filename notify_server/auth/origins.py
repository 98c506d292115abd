"""The Origin check of WebSocket upgrades (cross-site WebSocket hijacking)."""

from __future__ import annotations

from collections.abc import Collection


def origin_allowed(origin: str | None, allowed: Collection[str]) -> bool:
    """An absent Origin (non-browser client) is allowed; a present one must be listed exactly."""
    if origin is None:
        return True
    return origin.rstrip("/") in allowed or "*" in allowed
