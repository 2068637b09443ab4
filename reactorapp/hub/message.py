"""The one value that travels through the hub."""

from __future__ import annotations

import itertools
import time

_ids = itertools.count(1)


class Message:
    """A published message, shared by every subscriber it is delivered to.

    Front ends never mutate a message once published; that is what lets them
    cache its wire form in ``encoded`` (keyed by whatever the front end
    needs, e.g. QoS and retain flag) and encode it once for all subscribers.

    Equality is identity, like the hash: two publishes of the same bytes
    are two messages (each has its own ``id``).
    """

    __slots__ = (
        "topic", "payload", "qos", "retain", "properties",
        "id", "timestamp", "sender", "encoded",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: dict | None = None,
        sender: str | None = None,
        timestamp: float | None = None,
        id: int | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.sender = sender
        self.timestamp = time.time() if timestamp is None else timestamp
        self.id = next(_ids) if id is None else id
        self.encoded: dict | None = None

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload[:32]!r}, "
            f"qos={self.qos}, retain={self.retain}, id={self.id})"
        )

