"""The one value that travels through the hub."""

from __future__ import annotations

import itertools
import time

_ids = itertools.count(1)

#: MQTT 5 properties of a PUBLISH (or Will) that never travel with the
#: message: Topic Alias and Subscription Identifier belong to one hop
#: (client -> broker or broker -> client) [MQTT-3.3.2-7] [MQTT-3.3.4-3], the
#: Will Delay Interval to the will's sender.
NOT_FORWARDED = frozenset(("topic_alias", "subscription_identifier", "will_delay_interval"))


def application_properties(properties: dict | None) -> dict | None:
    """The properties a PUBLISH hands on to subscribers (Payload Format
    Indicator, Message Expiry Interval, Content Type, Response Topic,
    Correlation Data, User Properties), or None when there are none."""
    if not properties:
        return None
    if NOT_FORWARDED.isdisjoint(properties):
        return properties
    kept = {name: value for name, value in properties.items() if name not in NOT_FORWARDED}
    return kept or None


class Message:
    """A published message, shared by every subscriber it is delivered to.

    Front ends never mutate a message once published; that is what lets them
    cache its wire form in ``encoded`` (keyed by whatever the front end
    needs, e.g. protocol level, QoS and retain flag) and encode it once for
    all subscribers.

    ``properties`` holds the MQTT 5 properties that travel with the message
    (see `application_properties`; keys as in `reactorapp.mqtt.packets`),
    or None. With a ``message_expiry_interval`` among them, ``expires`` is
    the time (``timestamp`` plus the interval, on the hub's clock when the
    front end sets ``timestamp`` from it) after which the message is never
    delivered; None: it never expires. Derived from the two, it needs no
    storage of its own: a message read back from the store or a spill file
    expires when it would have.

    Equality is identity, like the hash: two publishes of the same bytes
    are two messages (each has its own ``id``).
    """

    __slots__ = (
        "topic", "payload", "qos", "retain", "properties",
        "id", "timestamp", "sender", "encoded", "expires",
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
        self.expires: float | None = None
        if properties:
            interval = properties.get("message_expiry_interval")
            if interval is not None:
                self.expires = self.timestamp + interval

    def stamp(self, now: float) -> None:
        """Date a message made before it is published (a delayed will) at
        ``now``, its expiry with it. Only before it is published."""
        if self.expires is not None:
            self.expires += now - self.timestamp
        self.timestamp = now

    def expired(self, now: float) -> bool:
        """Whether the Message Expiry Interval has passed at ``now``
        [MQTT-3.3.2-5]."""
        expires = self.expires
        return expires is not None and now >= expires

    def time_left(self, now: float) -> int:
        """The Message Expiry Interval to send at ``now``: what was received
        minus the time the message waited here, in whole seconds, rounded up
        [MQTT-3.3.2-6]. Only for a message that has an expiry."""
        left = self.expires - now
        whole = int(left)
        return whole + 1 if left > whole else whole

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload[:32]!r}, "
            f"qos={self.qos}, retain={self.retain}, id={self.id})"
        )
