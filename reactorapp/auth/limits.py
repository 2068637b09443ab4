"""Limits on what one client may take: connections and publish rate.

Plain objects with an injected clock, so they are tested without a reactor.
"""

from __future__ import annotations


class ConnectionLimiter:
    """Counts open connections, in total and per source address.

    ``admit`` takes a slot or says no; every admitted connection gives its
    slot back with ``release``. A limit of 0 means no limit.
    """

    def __init__(self, max_total: int = 0, max_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.refused = 0

    def admit(self, address: str) -> bool:
        if self.max_total and self.total >= self.max_total:
            self.refused += 1
            return False
        count = self.by_address.get(address, 0)
        if self.max_per_address and count >= self.max_per_address:
            self.refused += 1
            return False
        self.total += 1
        self.by_address[address] = count + 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)


class TokenBucket:
    """A rate of ``rate`` per second with bursts of up to ``burst``.

    `take` never refuses: it spends a token, going into debt if need be, and
    returns how many seconds the caller should wait before taking more. A
    publisher over its rate is slowed down by not reading from it for that
    long, so nothing it sent is lost.
    """

    __slots__ = ("rate", "burst", "clock", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, clock) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock.seconds()

    def take(self, n: float = 1.0) -> float:
        now = self.clock.seconds()
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        tokens -= n
        self.tokens = tokens
        return 0.0 if tokens >= 0 else -tokens / self.rate
