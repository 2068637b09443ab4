"""Timeouts that thousands of connections share: one timer for all of them.

Every connection has a CONNECT timeout, and most a keep-alive. A
``callLater`` each costs a DelayedCall, a push onto the reactor's heap
(compared in Python) and a cancellation, for a timer that almost never
fires; when a fleet reconnects at once that is a noticeable part of each
handshake. Here deadlines are rounded up to a tenth of a second and kept in
one dict per tick: adding and removing are dictionary operations, and one
DelayedCall waits for the earliest tick. A timeout fires up to 0.1 s late,
never early.
"""

from __future__ import annotations

import math

#: Ticks per second.
TICKS = 10


class Timeouts:
    """Callbacks due at deadlines, each under a key (one per key and tick)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        #: Tick -> {key: callback}.
        self._ticks: dict[int, dict] = {}
        self._call = None
        self._due: int | None = None

    def __len__(self) -> int:
        return sum(len(due) for due in self._ticks.values())

    def add(self, delay: float, key, callback) -> int:
        """Call ``callback()`` ``delay`` seconds from now, unless `remove` is
        called with the tick returned and ``key`` first."""
        tick = math.ceil((self.clock.seconds() + delay) * TICKS - 1e-6)
        due = self._ticks.get(tick)
        if due is None:
            due = self._ticks[tick] = {}
            if self._due is None or tick < self._due:
                self._schedule(tick)
        due[key] = callback
        return tick

    def remove(self, tick: int, key) -> None:
        due = self._ticks.get(tick)
        if due is not None:
            due.pop(key, None)
            if not due:
                del self._ticks[tick]
                if not self._ticks and self._call is not None:
                    # Nothing left to time: leave no timer behind.
                    if self._call.active():
                        self._call.cancel()
                    self._call = self._due = None

    def _schedule(self, tick: int) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._due = tick
        self._call = self.clock.callLater(max(0.0, tick / TICKS - self.clock.seconds()),
                                          self._fire)

    def _fire(self) -> None:
        self._call = self._due = None
        now = self.clock.seconds() * TICKS + 1e-6
        for tick in sorted(t for t in self._ticks if t <= now):
            # Callbacks may add (to later ticks) and remove as they run.
            for callback in list(self._ticks.pop(tick, {}).values()):
                callback()
        if self._ticks:
            first = min(self._ticks)
            if first != self._due:
                self._schedule(first)
