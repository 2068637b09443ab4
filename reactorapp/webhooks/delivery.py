"""What the outbox keeps: one message on its way to one rule's endpoint.

A delivery copies what it needs from the `Message` so that it can be stored,
reloaded after a restart and sent again without the hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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

    @classmethod
    def of(cls, id: int, rule: str, message, qos: int, key: str, now: float) -> Delivery:
        return cls(id, rule, message.topic, message.payload, qos, message.retain,
                   key, message.timestamp, now, qos > 0)

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
        }


@dataclass(slots=True)
class WebhookState:
    """What the store holds at start-up (see `IWebhookStore.load`)."""

    rules: list
    last_id: int
    pending: dict[str, int]
    #: Dead letters kept, by rule.
    dead: dict[str, int] = field(default_factory=dict)
