"""What the outbox keeps: one message on its way to one rule's endpoint.

A delivery copies what it needs from the `Message` so that it can be stored,
reloaded after a restart and sent again without the hub.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from reactorapp.web.metadata import expires_at, metadata_json
from reactorapp.webhooks.payload import payload_fields


@dataclass(slots=True)
class Delivery:
    """One message for one rule.

    ``id`` orders a rule's deliveries (publish order) and names the row in
    the store; ``key`` is the idempotency key receivers use to drop
    duplicates: the message's id, prefixed with a token of the process that
    received it (message ids start again at 1 in every process), so it is
    the same for every rule, every attempt and after a restart.
    ``durable`` is true when the delivery has a row in the outbox.
    ``properties`` are the message's MQTT 5 properties (or None), and
    ``expires_at`` when its Message Expiry Interval runs out, on the clock
    its timestamp was taken from (None: never).
    """

    id: int
    rule: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    key: str
    timestamp: float
    queued_at: float
    durable: bool = False
    properties: dict | None = None
    expires_at: float | None = None

    @classmethod
    def of(cls, id: int, rule: str, message, qos: int, key: str, now: float) -> Delivery:
        return cls(id, rule, message.topic, message.payload, qos, message.retain,
                   key, message.timestamp, now, qos > 0, message.properties,
                   expires_at(message))

    def expired(self, now: float) -> bool:
        """True once the message's expiry has passed: it is not sent [MQTT-3.3.2-5]."""
        return self.expires_at is not None and now >= self.expires_at

    def left(self, now: float) -> int | None:
        """Whole seconds the message has left at ``now``, or None if it does not expire."""
        if self.expires_at is None:
            return None
        return max(0, math.ceil(self.expires_at - now))

    def again(self, id: int, now: float) -> Delivery:
        """A copy under a new id, queued now, for sending a dead letter again."""
        return replace(self, id=id, queued_at=now, durable=True)


@dataclass(slots=True)
class DeadLetter:
    """A delivery that used up its attempts, and why the last one failed."""

    delivery: Delivery
    attempts: int
    reason: str
    died_at: float

    @property
    def id(self) -> int:
        return self.delivery.id

    def to_dict(self) -> dict:
        """The API's view; the payload as text when it is UTF-8, else base64."""
        d = self.delivery
        return {
            "id": d.id, "topic": d.topic, **payload_fields(d.payload),
            "qos": d.qos, "retain": d.retain, "message_id": d.key,
            "timestamp": d.timestamp, "attempts": self.attempts,
            "reason": self.reason, "died_at": self.died_at,
            **metadata_json(d.properties),
        }


@dataclass(slots=True)
class WebhookState:
    """What the store holds at start-up (see `IWebhookStore.load`)."""

    rules: list
    last_id: int
    pending: dict[str, int]
    #: Dead letters kept, by rule.
    dead: dict[str, int] = field(default_factory=dict)
