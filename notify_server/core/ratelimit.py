"""Token buckets: how often something may happen — per socket, per client address, per node — in
bounded memory.

A bucket holds up to `burst` tokens and regains `per_s` of them a second; each event takes one. So a
client may do `burst` things back to back, then `per_s` a second for as long as it keeps going.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    __slots__ = ("_burst", "_clock", "_per_s", "_stamp", "_tokens")

    def __init__(self, burst: int, per_s: float, clock: Clock = time.monotonic) -> None:
        self._burst = float(burst)
        self._per_s = per_s
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        """One token if there is one (True), else False and nothing changes."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._per_s)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait_s(self) -> int:
        """Whole seconds until the next token (for a Retry-After header); at least 1."""
        missing = max(0.0, 1.0 - self._tokens)
        return max(1, math.ceil(missing / self._per_s)) if self._per_s > 0 else 3600


class KeyedBuckets:
    """One bucket per key (a client address). At most max_keys are kept: past that the least recently
    used is forgotten, so a flood of new keys costs bounded memory (a forgotten key starts full again)."""

    def __init__(self, burst: int, per_s: float, max_keys: int, clock: Clock = time.monotonic) -> None:
        self._burst = burst
        self._per_s = per_s
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._burst, self._per_s, self._clock)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()

    def wait_s(self, key: str) -> int:
        bucket = self._buckets.get(key)
        return bucket.wait_s() if bucket is not None else 1
