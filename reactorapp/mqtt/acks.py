"""Acknowledgement ordering, sans I/O: what may go out once which wait fired.

A connection answers PUBLISH and PUBREL in the order they arrived
[MQTT-4.6.0-2] [MQTT-4.6.0-3], and each answer only once its message is
placed: a PUBACK promises the message is kept. Messages are placed in
different moments (a store batch, a subscriber over its bounds), so the
answers wait in a line here, each with the `reactorapp.hub.commit.Commit` of
its message (or None: placed already), and leave from the head of the line
only. This is bytes and Commits in, bytes out: tests drive it without a
transport, and `MQTTProtocol` writes what `ready` returns.
"""

from __future__ import annotations

from collections import deque


class AckLine(deque):
    """``[data, wait]`` entries in arrival order; ``wait`` is None or a
    `Commit`. A deque itself (no extra object, ``len`` stays in C): a
    connection makes one only once an acknowledgement has to wait."""

    __slots__ = ()

    def add(self, data: bytes, wait) -> bool:
        """Queue ``data`` behind what is waiting. Return True if the caller
        must register for ``wait`` (a Commit not yet seen at the tail: the
        acknowledgements of one store batch share it, so a connection waits
        once per batch, not once per message)."""
        new = wait is not None and (not self or self[-1][1] is not wait)
        self.append([data, wait])
        return new

    def ready(self) -> list[bytes]:
        """Take, in order, the acknowledgements at the head of the line whose
        wait is done; the first one still waiting stops the line."""
        ready = []
        while self:
            wait = self[0][1]
            if wait is not None and not wait.done:
                break
            ready.append(self.popleft()[0])
        return ready
