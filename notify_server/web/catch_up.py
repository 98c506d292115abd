"""What a connection gets first: its unread count, then the notifications it missed (`?since=` or
`Last-Event-ID`), oldest first — or one `resync` frame when it missed too many to replay."""

from __future__ import annotations

from aiohttp import web

from notify_server.storage.notifications import NotificationRepository, UnknownCursor
from notify_server.transport.connections import WebSocketLike
from notify_server.transport.frames import RESYNC_FRAME, notification_frame, unread_count_frame
from notify_server.web import appkeys


async def send_first_frames(
    request: web.Request, ws: WebSocketLike, user_id: str, since: str | None = None
) -> None:
    """The unread count, then (with `since`, default ?since=) the missed notifications, then whatever
    was held."""
    app = request.app
    settings = app[appkeys.SETTINGS]
    repository = app[appkeys.NOTIFICATIONS]
    unread = await repository.unread_state(user_id)
    first_frames = [unread_count_frame(unread.count, unread.version, unread.unseen)]
    replayed: set[str] = set()
    since = since or request.query.get("since")
    if since:
        first_frames += await catch_up(repository, user_id, since, settings.recovery.max_replay, replayed)
    app[appkeys.MANAGER].release(
        ws, first_frames, unread_version=unread.version, already_sent=replayed,
        already_sent_ttl_s=settings.push.job_expiry_s,
    )


async def catch_up(
    repository: NotificationRepository, user_id: str, since: str, max_replay: int, replayed: set[str]
) -> list[str]:
    """Frames of the notifications stored after `since`, oldest first; a single `resync` frame when
    `since` is unknown or more than max_replay were missed (the client then refetches over REST)."""
    try:
        missed = await repository.list_since(user_id, since, limit=max_replay + 1)
    except UnknownCursor:
        return [RESYNC_FRAME]
    if len(missed) > max_replay:
        return [RESYNC_FRAME]
    replayed.update(n.notification_id for n in missed)
    return [notification_frame(n) for n in missed]
