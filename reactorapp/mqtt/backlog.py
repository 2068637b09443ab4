"""What a session holds for its client beyond the in-flight window, bounded.

The policy, for one session (docs/configuration.md has the knobs,
docs/security.md the whole story):

- QoS 1/2 messages wait in memory, up to ``max_queued_messages`` and
  ``max_queued_bytes``. QoS 0 messages wait too while the client is connected
  but not reading (its connection paused us), sharing the same bounds.
- Over the bounds, the oldest waiting QoS 0 messages are dropped first
  (counted). A QoS 0 message that still does not fit is dropped itself.
- A QoS 1/2 message that does not fit in memory goes to a spill file on disk,
  up to ``max_spill_bytes`` for the session and ``max_spill_total_bytes`` for
  all of them; from then on newer ones follow it there, so the order is
  kept, and they are read back as memory frees up.
- When memory and disk are both full, a connected session still takes the
  message (it was already accepted from its publisher), and hands the hub a
  Deferred that fires when the session has drained to half its bounds: the
  publisher's PUBACK/PUBREC waits for it, so the publisher's own in-flight
  window stops it, and a publisher that goes on regardless is no longer read
  from. An offline session refuses the message instead (counted), so a client
  that never comes back cannot stop publishers for ever.

Sizes are approximate: payload and topic plus a fixed overhead per message.
"""

from __future__ import annotations

import math
from collections import deque

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from reactorapp.mqtt.spill import SpillFile

log = Logger()

#: Bytes counted for a queued message on top of its topic and payload.
OVERHEAD = 64


def _size(message) -> int:
    return len(message.payload) + len(message.topic) + OVERHEAD


class Backlog:
    """A session's queue: a deque of ``(message, qos, retained, seq)`` for
    QoS 1/2, bounded in memory and continued on disk, plus the QoS 0
    messages held while the connection cannot take them."""

    def __init__(self, settings, stats) -> None:
        self.settings = settings
        self.stats = stats
        self._memory: deque = deque()
        #: QoS 0 messages held for a paused connection, as (message, retained).
        #: (A deque once needed: thousands of idle clients need none.)
        self.held0: deque | tuple = ()
        #: Approximate bytes in memory, both queues.
        self.bytes = 0
        self._spill: SpillFile | None = None
        self._spill_failed = False
        #: Deferreds of publishers waiting for room, fired all at once.
        self._waiters: list[Deferred] = []
        #: When `drop_expired` last looked (the session's clock).
        self._expiry_looked_at = -math.inf

    def __len__(self) -> int:
        spill = self._spill
        return len(self._memory) + (spill.count if spill is not None else 0)

    def __bool__(self) -> bool:
        """Whether an entry can be taken. With memory empty and entries on
        disk, this reads some back, so that `popleft` always finds one (and
        a spill file that cannot be read makes the queue empty, not broken)."""
        if self._memory:
            return True
        spill = self._spill
        if spill is None or not spill.count:
            return False
        self._refill()
        return bool(self._memory)

    # -- bounds ------------------------------------------------------------

    def _over(self, extra: int = 0) -> bool:
        settings = self.settings
        if len(self._memory) + len(self.held0) >= settings.max_queued_messages:
            return True
        limit = settings.max_queued_bytes
        return bool(limit) and self.bytes + extra > limit

    def _spill_room(self) -> bool:
        settings = self.settings
        if not settings.spill_directory or not settings.max_spill_bytes or self._spill_failed:
            return False
        total = settings.max_spill_total_bytes
        if total and self.stats.spill_bytes >= total:
            return False
        return self._spill is None or self._spill.size < settings.max_spill_bytes

    def _make_room(self, extra: int) -> None:
        """Drop the oldest held QoS 0 messages while over the bounds."""
        held0 = self.held0
        while held0 and self._over(extra):
            message, _ = held0.popleft()
            self.bytes -= _size(message)
            self._dropped0()

    def _dropped0(self) -> None:
        self.stats.queue_dropped_qos0 += 1
        self.stats.publish_dropped += 1

    def full(self, message=None) -> bool:
        """No room for a QoS 1/2 message in memory nor on disk, even after
        dropping held QoS 0 messages."""
        extra = _size(message) if message is not None else 0
        self._make_room(extra)
        return self._over(extra) and not self._spill_room()

    def drop_expired(self, now: float) -> list[int]:
        """Take out the QoS 1/2 entries in memory whose Message Expiry
        Interval has passed, and return their numbers: a full queue of an
        absent client makes room before it refuses a message. It looks at
        most once a second, so a publisher to a full queue does not pay a
        walk of it per message."""
        if now - self._expiry_looked_at < 1.0:
            return []
        self._expiry_looked_at = now
        memory = self._memory
        if not any(entry[0].expires is not None and now >= entry[0].expires
                   for entry in memory):
            return []
        kept: deque = deque()
        gone = []
        for entry in memory:
            message = entry[0]
            if message.expires is not None and now >= message.expires:
                gone.append(entry[3])
                self.bytes -= _size(message)
            else:
                kept.append(entry)
        self._memory = kept
        return gone

    # -- QoS 1/2 -------------------------------------------------------------

    def append(self, entry) -> None:
        """Queue an entry: in memory if it fits and nothing is on disk, else
        on disk if there is room there, else in memory over the bound (the
        caller holds the publisher back)."""
        message = entry[0]
        size = len(message.payload) + len(message.topic) + OVERHEAD
        if self.held0:
            self._make_room(size)
        spill = self._spill
        # Once entries are on disk, newer ones follow them there (past the
        # quota too, while publishers are held back), or the order breaks.
        if spill is not None and spill.count and not self._spill_failed:
            if self._spill_entry(entry):
                return
        elif self._over(size) and self._spill_room():
            if self._spill_entry(entry):
                return
        self._memory.append(entry)
        self.bytes += size

    def _spill_entry(self, entry) -> bool:
        if self._spill is None:
            self._spill = SpillFile(self.settings.spill_directory)
        try:
            self.stats.spill_bytes += self._spill.append(entry)
        except (OSError, ValueError) as e:
            log.error("Cannot spill to {directory} ({error}); keeping messages in memory"
                      " and holding publishers back instead",
                      directory=self._spill.directory, error=e)
            self._spill_failed = True
            return False
        self.stats.queue_spilled += 1
        return True

    def popleft(self):
        memory = self._memory
        if not memory:
            bool(self)  # reads back from disk, if anything is there
        entry = memory.popleft()  # IndexError when empty, as for a deque
        message = entry[0]
        self.bytes -= len(message.payload) + len(message.topic) + OVERHEAD
        spill = self._spill
        if spill is not None and spill.count and \
                len(memory) * 2 <= self.settings.max_queued_messages:
            self._refill()
        if self._waiters and self._relieved():
            self.release()
        return entry

    def _refill(self) -> None:
        """Read spilled entries back, up to the memory bounds (at least one)."""
        settings = self.settings
        room = max(1, settings.max_queued_messages - len(self._memory) - len(self.held0))
        limit = settings.max_queued_bytes
        room_bytes = limit - self.bytes if limit else 1 << 62
        before = self._spill.size
        try:
            entries = self._spill.read(room, max(1, room_bytes))
        except (OSError, ValueError, EOFError, TypeError) as e:
            log.error("Cannot read back a spill file in {directory} ({error});"
                      " its messages are lost", directory=self._spill.directory, error=e)
            self.stats.publish_dropped += self._spill.count
            self.stats.spill_bytes -= before
            self._spill.close()
            self._spill_failed = True
            return
        self.stats.spill_bytes -= before - self._spill.size
        for entry in entries:
            self._memory.append(entry)
            self.bytes += _size(entry[0])

    # -- back-pressure -----------------------------------------------------------

    def wait(self) -> Deferred:
        """A Deferred for a publisher to wait on until there is room again."""
        self.stats.publishers_held += 1
        d = Deferred()
        self._waiters.append(d)
        return d

    def _relieved(self) -> bool:
        """Drained to half the bounds (so publishers do not stop and go for
        every single message)."""
        settings = self.settings
        if self._spill_room():
            spill = self._spill
            return spill is None or spill.size * 2 <= settings.max_spill_bytes
        if (len(self._memory) + len(self.held0)) * 2 > settings.max_queued_messages:
            return False
        limit = settings.max_queued_bytes
        return not limit or self.bytes * 2 <= limit

    def release(self) -> None:
        """Let every waiting publisher go on."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # -- QoS 0 for a paused connection --------------------------------------------

    def hold0(self, message, retained) -> None:
        """Keep a QoS 0 message until the connection can take it; the oldest
        go first when there is no room."""
        size = _size(message)
        self._make_room(size)
        if self._over(size):
            self._dropped0()
            return
        if type(self.held0) is tuple:
            self.held0 = deque()
        self.held0.append((message, retained))
        self.bytes += size

    def popleft0(self):
        message, retained = self.held0.popleft()
        self.bytes -= _size(message)
        return message, retained

    def drop_held0(self) -> None:
        """The client left: QoS 0 is not kept for absent clients."""
        while self.held0:
            self.popleft0()
            self._dropped0()

    def clear(self) -> None:
        """Forget everything (the session ends) and let publishers go on."""
        self._memory.clear()
        self.held0 = ()
        self.bytes = 0
        if self._spill is not None:
            self.stats.spill_bytes -= self._spill.size
            self._spill.close()
            self._spill = None
        self.release()
