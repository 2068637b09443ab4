"""Retained messages removed when their MQTT 5 Message Expiry Interval
passes, on the hub's clock, without anybody asking for them.

One timer for all of them, armed for the earliest deadline (a heap). A
retained message replaced before its deadline leaves a stale entry, which is
skipped when its time comes; the heap is rebuilt from the messages still
retained when stale entries outnumber live ones, so a publisher replacing
retained messages quickly cannot grow it without bound.
"""

from __future__ import annotations

import heapq
import itertools


class Deadlines:
    """Calls ``expire(message)`` once each message's ``expires`` has passed,
    unless ``current(message)`` says it is no longer the one kept."""

    def __init__(self, clock, expire, current, everything, count) -> None:
        self._clock = clock
        self._expire = expire
        self._current = current
        #: Every message kept now (to rebuild the heap from), and how many.
        self._everything = everything
        self._count = count
        self._heap: list[tuple[float, int, object]] = []
        self._order = itertools.count()
        self._call = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, message) -> None:
        heap = self._heap
        heapq.heappush(heap, (message.expires, next(self._order), message))
        if len(heap) > 64 and len(heap) > 2 * self._count():
            self._rebuild()
        self._arm()

    def _rebuild(self) -> None:
        self._heap = [(m.expires, next(self._order), m)
                      for m in self._everything() if m.expires is not None]
        heapq.heapify(self._heap)

    def _arm(self) -> None:
        heap = self._heap
        call = self._call
        if not heap:
            if call is not None and call.active():
                call.cancel()
            self._call = None
            return
        when = heap[0][0]
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.cancel()
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, message = heapq.heappop(heap)
            if self._current(message):
                self._expire(message)
        self._arm()

    def stop(self) -> None:
        """Cancel the timer (the hub is going away)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
