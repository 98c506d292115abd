"""Token buckets (notify_server.core.ratelimit), on a clock the test moves."""

from __future__ import annotations

from notify_server.core.ratelimit import KeyedBuckets, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=3, per_s=2.0, clock=clock)

    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s() == 1
    clock.now += 0.5  # one token back
    assert [bucket.take(), bucket.take()] == [True, False]
    clock.now += 3600  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_a_slow_bucket_says_how_long_to_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=1, per_s=0.1, clock=clock)

    assert bucket.take() and not bucket.take()
    assert bucket.wait_s() == 10
    clock.now += 10
    assert bucket.take()


def test_keyed_buckets_count_each_key_alone_and_keep_at_most_max_keys() -> None:
    clock = Clock()
    buckets = KeyedBuckets(burst=2, per_s=0.001, max_keys=100, clock=clock)

    assert [buckets.take("a"), buckets.take("a"), buckets.take("a")] == [True, True, False]
    assert buckets.take("b")
    for n in range(10_000):  # a flood of new addresses
        buckets.take(f"10.0.{n // 256}.{n % 256}")
    assert len(buckets) == 100
    assert buckets.take("a")  # forgotten, so full again: the price of bounded memory


def test_a_key_in_use_is_not_the_one_forgotten() -> None:
    buckets = KeyedBuckets(burst=1, per_s=0.001, max_keys=2, clock=Clock())

    buckets.take("busy")
    buckets.take("x")
    buckets.take("busy")  # used again: now the most recent
    buckets.take("y")  # evicts x, not busy

    assert not buckets.take("busy")
