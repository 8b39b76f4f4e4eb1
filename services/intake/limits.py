"""Per-partner rate limits and a short-lived cache of authenticated keys. Pure: the clock is
passed in, no I/O."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per partner: ``per_minute`` events a minute, bursts up to a minute's worth.

    A request larger than the bucket (a batch of 500 under a limit of 100 a minute) waits for a
    full bucket and then passes, so no valid request is refused forever.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.capacity = float(max(per_minute, 1))
        self.rate = self.capacity / 60.0
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, partner: str) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get(partner)
        if bucket is None:
            bucket = self._buckets[partner] = _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def peek(self, partner: str, cost: int = 1) -> float:
        """Like :meth:`take` without taking: 0.0 when ``cost`` tokens are there now."""
        bucket = self._bucket(partner)
        needed = min(float(cost), self.capacity)
        return 0.0 if bucket.tokens >= needed else max((needed - bucket.tokens) / self.rate, 0.001)

    def take(self, partner: str, cost: int = 1) -> float:
        """Take ``cost`` tokens; 0.0 when allowed, else the seconds to wait (nothing taken)."""
        bucket = self._bucket(partner)
        needed = min(float(cost), self.capacity)
        if bucket.tokens >= needed:
            bucket.tokens -= needed
            return 0.0
        return max((needed - bucket.tokens) / self.rate, 0.001)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class TtlCache(Generic[T]):
    """Authenticated keys for ``ttl`` seconds, keyed by a hash of the presented secret (the
    secret itself is never held). A revoked key stops working within ``ttl`` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self._items: OrderedDict[bytes, tuple[float, T]] = OrderedDict()

    @staticmethod
    def _key(secret: str) -> bytes:
        return hashlib.sha256(secret.encode()).digest()

    def get(self, secret: str) -> T | None:
        if self.ttl <= 0:
            return None
        key = self._key(secret)
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            del self._items[key]
            return None
        return item[1]

    def put(self, secret: str, value: T) -> None:
        if self.ttl <= 0:
            return
        self._items[self._key(secret)] = (self.clock() + self.ttl, value)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
