"""Sending Web Push: the loop, in every worker, that empties the Web Push queue into push services.

For each queued batch (recipients of one stored event, notify_server.transport.webpush_queue) it looks
up the recipients' subscriptions, keeps the users the channel filter allows on the `web_push` channel
and, under `web_push.when: away`, those with no open connection on any node (presence, read now: a
user who opened a tab since the event was stored got the WebSocket frame), and sends one encrypted
message per subscription (RFC 8291, notify_server.transport.webpush_encryption) with a VAPID header
(RFC 8292, notify_server.transport.webpush_vapid). The message is the WebSocket frame
`{"type": "notification", "data": {the eight keys}}`: no email, no recipient id.

The endpoint is user input: it is sent to only while it is on an allowed host (checked again here, the
config may have changed since the browser subscribed), redirects are not followed, at most
MAX_ANSWER_BYTES of an answer are read, and every request has `web_push.timeout_s`.
Answers: 2xx sent; 404/410 the subscription is gone and deleted; 413 logged; 429, 5xx and no answer
retried up to `web_push.max_attempts` tries, after Retry-After when the service gives one (up to
`web_push.retry_after_max_s`) or 1 s doubling; anything else logged and given up.
Each message is counted in `notify_web_push_total{result}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol

import aiohttp
import orjson
from prometheus_client import Counter
from yarl import URL

from notify_server.core.push_endpoints import AllowedHosts
from notify_server.core.settings import WEB_PUSH_AWAY, WebPushSettings
from notify_server.core.supervisor import LoopHealth
from notify_server.storage.push_subscriptions import PushSubscription, PushSubscriptionStore
from notify_server.transport.webpush_encryption import MAX_PLAINTEXT_BYTES, encrypt
from notify_server.transport.webpush_queue import CLAIM_IDLE_MS, PushBatch, WebPushQueue, age_s
from notify_server.transport.webpush_vapid import VapidSigner

logger = logging.getLogger("notify.webpush")

LOOP_NAME = "web-push-sender"
WEB_PUSH_CHANNEL = "web_push"  # the channel key of the user preferences, beside in_app
URGENCY = {"URGENT": "high", "HIGH": "normal", "NORMAL": "normal", "LOW": "low"}  # RFC 8030 §5.3
MAX_ANSWER_BYTES = 1024  # of a push service's answer body; only the status and Retry-After matter
ENTRIES_IN_FLIGHT = 8  # queue entries (up to 500 recipients each) one worker works on at once
READ_BLOCK_MS = 1000
RETRY_FIRST_S = 1.0  # without Retry-After: 1 s, then 2 s, 4 s … up to web_push.retry_after_max_s
_KEEP_CLAIMED_EVERY_S = CLAIM_IDLE_MS / 1000 / 3


class Result(enum.Enum):
    SENT = "sent"  # 2xx: the push service has it
    GONE = "gone"  # 404/410: the browser unsubscribed; the subscription is deleted
    TOO_LARGE = "too_large"  # 413
    REJECTED = "rejected"  # another 4xx (a 401/403 usually means the VAPID key changed), a 3xx
    FAILED = "failed"  # 429/5xx/unreachable after every try, or a Retry-After beyond retry_after_max_s
    REFUSED = "refused"  # the endpoint is not on an allowed host (any more): nothing sent
    EXPIRED = "expired"  # queued longer than web_push.ttl_s: nothing sent


class ChannelFilter(Protocol):
    """Which users want notifications of this event type on this channel (user preferences)."""

    async def allowed(self, channel: str, event_type: str, user_ids: Sequence[str]) -> set[str]: ...


class AllowEveryone:
    """The channel filter when no preferences are kept: everyone wants everything."""

    async def allowed(self, channel: str, event_type: str, user_ids: Sequence[str]) -> set[str]:
        return set(user_ids)


OnlineLookup = Callable[[Collection[str]], Awaitable[set[str]]]


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delay-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value[:9]))
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def message_for(data: dict[str, Any]) -> dict[str, Any] | None:
    """The frame's data, shortened when the frame would not fit in one push message (4,096-byte bodies):
    metadata dropped first, then the body cut with an ellipsis; None when even that does not fit.
    `notification_id` in `data` must already have its final length (all ids are UUIDs)."""

    def size(candidate: dict[str, Any]) -> int:
        return len(orjson.dumps({"type": "notification", "data": candidate}))

    if size(data) <= MAX_PLAINTEXT_BYTES:
        return data
    data = {**data, "metadata": {}}
    body = str(data["body"])
    while size(data) > MAX_PLAINTEXT_BYTES and body:
        # Cut the bytes over (and 3 for the ellipsis) off the UTF-8 body, never half a character. JSON
        # escapes (quotes, control characters) count double: a second turn takes what is left over.
        over = size(data) - MAX_PLAINTEXT_BYTES + len("…".encode())
        encoded = body.encode()
        body = encoded[: max(0, len(encoded) - over)].decode(errors="ignore")
        data = {**data, "body": body + "…" if body else ""}
    return data if size(data) <= MAX_PLAINTEXT_BYTES else None


class WebPushSender:
    def __init__(
        self,
        settings: WebPushSettings,
        queue: WebPushQueue,
        subscriptions: PushSubscriptionStore,
        online: OnlineLookup,
        results: Counter,
        *,
        signer: VapidSigner,
        consumer: str,
        channel_filter: ChannelFilter | None = None,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._subscriptions = subscriptions
        self._online = online
        self._results = results
        self._signer = signer
        self._consumer = consumer
        self._filter = channel_filter or AllowEveryone()
        self._hosts = AllowedHosts(settings.allowed_hosts)
        self._slots = asyncio.Semaphore(settings.concurrency)  # requests in flight
        # Messages encrypted and not finished (in flight or waiting for a retry): the encryption goes no
        # further ahead of the push services than this.
        self._pending = asyncio.Semaphore(settings.concurrency * 4)

    # ---------------------------------------------------------------- the loop

    async def run(self, health: LoopHealth) -> None:
        """Supervised (notify_server.core.supervisor): reads the queue for ever; entries whose delivery
        failed (Postgres or Redis away) stay pending and are taken again after CLAIM_IDLE_MS."""
        await self._queue.ensure_group()
        # Fresh bounds per run: places held by messages cancelled before they started are not lost.
        self._slots = asyncio.Semaphore(self._settings.concurrency)
        self._pending = asyncio.Semaphore(self._settings.concurrency * 4)
        in_flight: dict[bytes, asyncio.Task[None]] = {}
        async with self._client() as http:
            try:
                next_claim = 0.0
                while True:
                    batches: list[PushBatch] = []
                    room = ENTRIES_IN_FLIGHT - len(in_flight)
                    if time.monotonic() >= next_claim:
                        next_claim = time.monotonic() + _KEEP_CLAIMED_EVERY_S
                        await self._queue.keep_claimed(self._consumer, list(in_flight))
                        if room > 0:
                            batches = await self._queue.claim_stale(self._consumer, room)
                    if room <= 0:
                        await asyncio.wait(in_flight.values(), timeout=READ_BLOCK_MS / 1000,
                                           return_when=asyncio.FIRST_COMPLETED)
                    elif not batches:
                        batches = await self._queue.read(self._consumer, room, READ_BLOCK_MS)
                    health.ok()
                    for batch in batches:
                        if batch.entry_id not in in_flight:
                            in_flight[batch.entry_id] = self._start(http, batch, in_flight)
            finally:
                for task in in_flight.values():
                    task.cancel()
                await asyncio.gather(*in_flight.values(), return_exceptions=True)

    def _start(self, http: aiohttp.ClientSession, batch: PushBatch,
               in_flight: dict[bytes, asyncio.Task[None]]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self.deliver(http, batch))

        def finished(done: asyncio.Task[None]) -> None:
            in_flight.pop(batch.entry_id, None)
            if not done.cancelled() and done.exception() is not None:
                logger.warning("web push entry %s kept for a retry after %d s: %s", batch.entry_id.decode(),
                               CLAIM_IDLE_MS // 1000, done.exception())

        task.add_done_callback(finished)
        return task

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[aiohttp.ClientSession]:
        connector = aiohttp.TCPConnector(limit=self._settings.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        # trust_env=False: no proxy from the environment sees the endpoints; no cookies kept between services.
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield http

    # ---------------------------------------------------------------- one batch

    async def deliver(self, http: aiohttp.ClientSession, batch: PushBatch) -> None:
        """Send one queued batch to every subscription of its recipients that should get it, then
        acknowledge it. Raises (leaving it pending) when Postgres or Redis cannot serve."""
        notification_ids = dict(batch.recipients)
        subscriptions = await self._subscriptions.of_users(list(notification_ids))
        if subscriptions:
            await self._send_batch(http, batch, subscriptions, notification_ids)
        await self._queue.ack([batch.entry_id])

    async def _send_batch(
        self, http: aiohttp.ClientSession, batch: PushBatch, subscriptions: list[PushSubscription],
        notification_ids: dict[str, str],
    ) -> None:
        ttl_s = self._settings.ttl_s
        remaining_s = int(ttl_s - age_s(batch)) if ttl_s else 0
        if ttl_s and remaining_s <= 0:
            logger.info("web push entry %s expired unsent (queued over %d s)", batch.entry_id.decode(), ttl_s)
            self._results.labels(Result.EXPIRED.value).inc(len(subscriptions))
            return
        users = await self._filter.allowed(WEB_PUSH_CHANNEL, batch.event_type,
                                           list({s.user_id: None for s in subscriptions}))
        if users and self._settings.when == WEB_PUSH_AWAY:
            users -= await self._online(users)
        chosen = [s for s in subscriptions if s.user_id in users]
        if not chosen:
            return
        data = message_for({**batch.data, "notification_id": notification_ids[chosen[0].user_id]})
        if data is None:
            logger.warning("web push entry %s: the notification does not fit in a push message",
                           batch.entry_id.decode())
            self._results.labels(Result.TOO_LARGE.value).inc(len(chosen))
            return
        urgency = URGENCY.get(batch.priority, "normal")
        sends: list[asyncio.Task[Result]] = []
        try:
            for subscription in chosen:
                await self._pending.acquire()
                plaintext = orjson.dumps({"type": "notification",
                                          "data": {**data, "notification_id": notification_ids[subscription.user_id]}})
                sends.append(asyncio.get_running_loop().create_task(
                    self._send(http, subscription, plaintext, remaining_s, urgency)))
                # ~0.2 ms of encryption per message: one per loop turn, so that the worker's event consumer
                # (and every other message's answer) goes on between them. Started all at once, the
                # 500 messages of a batch held the loop ~100 ms (bench/webpush_libs.py shows such a stall).
                await asyncio.sleep(0)
            results = await asyncio.gather(*sends)
        except BaseException:
            for task in sends:
                task.cancel()
            raise
        gone = [s.subscription_id for s, result in zip(chosen, results, strict=True) if result is Result.GONE]
        await self._subscriptions.delete(gone)

    # ---------------------------------------------------------------- one message

    async def _send(
        self, http: aiohttp.ClientSession, subscription: PushSubscription, plaintext: bytes, ttl_s: int, urgency: str
    ) -> Result:
        """One message to one subscription, retried as the answers allow; counted by its result. Holds
        one of the `_pending` places from before it was started until it ends."""
        try:
            result = await self._attempts(http, subscription, plaintext, ttl_s, urgency)
        finally:
            self._pending.release()
        self._results.labels(result.value).inc()
        return result

    async def _attempts(
        self, http: aiohttp.ClientSession, subscription: PushSubscription, plaintext: bytes, ttl_s: int, urgency: str
    ) -> Result:
        try:
            endpoint = URL(subscription.endpoint, encoded=False)
        except (ValueError, TypeError):
            endpoint = None
        problem = self._hosts.problem(endpoint if endpoint is not None else subscription.endpoint)
        if problem is not None or endpoint is None:
            logger.warning("web push subscription %d refused: endpoint %s", subscription.subscription_id, problem)
            return Result.REFUSED
        try:
            body = encrypt(plaintext, subscription.p256dh, subscription.auth)
        except ValueError as exc:  # keys stored before a check existed, or altered in the table
            logger.warning("web push subscription %d: unusable keys (%s)", subscription.subscription_id, exc)
            return Result.REJECTED
        headers = {
            "Authorization": self._signer.authorization(endpoint),
            "TTL": str(ttl_s),
            "Urgency": urgency,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        host = endpoint.host or ""
        wait_s = RETRY_FIRST_S
        for attempt in range(1, self._settings.max_attempts + 1):
            async with self._slots:
                status, retry_after = await self._post(http, endpoint, body, headers)
            if status is not None and 200 <= status < 300:
                return Result.SENT
            if status in (404, 410):
                return Result.GONE
            if status == 413:
                logger.warning("web push to %s: 413 payload too large (%d bytes)", host, len(body))
                return Result.TOO_LARGE
            if status is not None and status != 429 and status < 500:
                hint = " (the VAPID key or subject is not the one this subscription was made with?)" \
                    if status in (401, 403) else ""
                logger.warning("web push to %s refused with %d%s", host, status, hint)
                return Result.REJECTED
            if attempt == self._settings.max_attempts:
                break
            delay_s = retry_after if retry_after is not None else wait_s
            wait_s *= 2
            if delay_s > self._settings.retry_after_max_s:
                logger.warning("web push to %s: asked to wait %.0f s (over web_push.retry_after_max_s); given up",
                               host, delay_s)
                return Result.FAILED
            await asyncio.sleep(delay_s)
        logger.warning("web push to %s failed after %d tries (last: %s)", host, self._settings.max_attempts,
                       status if status is not None else "no answer")
        return Result.FAILED

    async def _post(
        self, http: aiohttp.ClientSession, endpoint: URL, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, float | None]:
        """(status, Retry-After in seconds) of one request; (None, None) when no answer came in time."""
        try:
            async with http.post(endpoint, data=body, headers=headers, allow_redirects=False) as response:
                await response.content.read(MAX_ANSWER_BYTES)
                return response.status, retry_after_s(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("web push to %s: %s", endpoint.host, type(exc).__name__)
            return None, None
