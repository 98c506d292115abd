"""Coalescing concurrent look-ups into one query: the connection storm's friend.

When thousands of clients connect at once, each needs its session validated, its unread count read
and its presence recorded. A `BatchLoader` gathers the keys asked for during one turn of the event loop
and answers them all with one call (`WHERE key = ANY(...)`, one Redis pipeline), so a storm costs a few
queries per loop turn instead of three per socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchLoader(Generic[K, V]):
    """`await loader.load(key)`; keys asked for in the same loop turn share one `load_many` call.
    A key missing from load_many's answer gets `default`. An exception fails every waiter of that batch."""

    def __init__(
        self, load_many: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]], *, default: V, max_batch: int = 1000
    ) -> None:
        self._load_many = load_many
        self._default = default
        self._max_batch = max_batch
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    async def load(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if not self._scheduled and not self._running:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        """Send what is pending. While a batch is in flight, keys pile up for the next one: a storm
        then costs one query per round trip, not one per loop turn."""
        self._scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        keys = list(pending)
        for start in range(0, len(keys), self._max_batch):
            chunk = {key: pending[key] for key in keys[start : start + self._max_batch]}
            task = asyncio.get_running_loop().create_task(self._resolve(chunk))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._running and self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    async def _resolve(self, waiting: dict[K, list[asyncio.Future[V]]]) -> None:
        try:
            found = await self._load_many(list(waiting))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for key, futures in waiting.items():
            value = found.get(key, self._default)
            for future in futures:
                if not future.done():
                    future.set_result(value)
