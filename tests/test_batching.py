"""BatchLoader: concurrent look-ups share one call; keys asked for while one is in flight wait for the next."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from notify_server.core.batching import BatchLoader


async def test_keys_asked_for_together_share_one_call_and_missing_keys_get_the_default() -> None:
    calls: list[list[str]] = []

    async def load_many(keys: Sequence[str]) -> dict[str, int]:
        calls.append(list(keys))
        return {key: len(key) for key in keys if key != "gone"}

    loader: BatchLoader[str, int | None] = BatchLoader(load_many, default=None)
    results = await asyncio.gather(loader.load("a"), loader.load("bb"), loader.load("a"), loader.load("gone"))

    assert results == [1, 2, 1, None]
    assert calls == [["a", "bb", "gone"]]


async def test_keys_arriving_while_a_call_is_in_flight_go_in_one_next_call() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def load_many(keys: Sequence[int]) -> dict[int, int]:
        calls.append(list(keys))
        if len(calls) == 1:
            await release.wait()
        return {key: key * 10 for key in keys}

    loader: BatchLoader[int, int] = BatchLoader(load_many, default=0)
    first = asyncio.ensure_future(loader.load(1))
    await asyncio.sleep(0.01)  # the first call is in flight
    later = [asyncio.ensure_future(loader.load(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert calls == [[1]]
    release.set()

    assert await first == 10
    assert [await f for f in later] == [20, 30, 40]
    assert calls == [[1], [2, 3, 4]]


async def test_a_failing_call_fails_every_waiter_of_its_batch_and_the_next_batch_still_runs() -> None:
    attempts = 0

    async def load_many(keys: Sequence[str]) -> dict[str, str]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("store away")
        return {key: key.upper() for key in keys}

    loader: BatchLoader[str, str] = BatchLoader(load_many, default="")
    failed = await asyncio.gather(loader.load("x"), loader.load("y"), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in failed)
    assert await loader.load("z") == "Z"


@pytest.mark.parametrize("size", [1, 2500])
async def test_batches_are_cut_at_max_batch(size: int) -> None:
    sizes: list[int] = []

    async def load_many(keys: Sequence[int]) -> dict[int, int]:
        sizes.append(len(keys))
        return {key: key for key in keys}

    loader: BatchLoader[int, int] = BatchLoader(load_many, default=-1, max_batch=1000)
    assert await asyncio.gather(*(loader.load(n) for n in range(size))) == list(range(size))
    assert sum(sizes) == size and max(sizes) <= 1000
