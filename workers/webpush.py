"""The worker's Web Push sender (issue 20), built from its context: one per `notify-server worker`.

Every worker runs one, supervised beside its event loop (workers/consumer.py); they share the queue's
consumer group, so each queued batch is sent by one of them.
"""

from __future__ import annotations

import os
import secrets
import socket

from notify_server.core.vapid_keys import load_private_key
from notify_server.storage.push_subscriptions import PushSubscriptionStore
from notify_server.transport.webpush_sender import LOOP_NAME, WebPushSender
from notify_server.transport.webpush_vapid import VapidSigner
from workers.context import WorkerContext

__all__ = ["LOOP_NAME", "build_sender"]


def build_sender(context: WorkerContext) -> WebPushSender:
    """The sender over the context's pools; the queue must be on (web_push.enabled)."""
    settings = context.settings.web_push
    if context.web_push is None:
        raise RuntimeError("web push is off (web_push.enabled): no sender to build")
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:32]
    return WebPushSender(
        settings,
        context.web_push,
        PushSubscriptionStore(context.db),
        context.router.online,
        context.metrics.web_push,
        signer=VapidSigner(load_private_key(settings.vapid_private_key_file), settings.subject),
        consumer=f"{host}-{os.getpid()}-{secrets.token_hex(3)}",
        channel_filter=context.channel_filter,
    )
