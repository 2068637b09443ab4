"""Webhook rules, outbox and dead letters in Redis, next to the Redis store.

Rules are shared: one made through the API of any node is kept in Redis,
and every node looks at a version counter every `WATCH_INTERVAL` seconds and
serves the rules as they are now (`WebhookService.refresh`). The outbox and
the dead letters stay each node's own (keys with the node's name): a node
sends what was published on it, so a delivery is made once, by the node
that took the message; a node that restarts under the same name resumes its
outbox. Their writes ride in the same batches as the store's, so a publish
is acknowledged once its outbox entry is durable in Redis with the rest.

``IWebhookStore(store)`` gives one for a `RedisStore` (an adapter).
"""

from __future__ import annotations

import ast
import json
import struct

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.components import registerAdapter
from zope.interface import implementer

from reactorapp.cluster import scripts
from reactorapp.cluster.redisstore import RedisStore
from reactorapp.store.interfaces import StoreClosed, StoreError
from reactorapp.webhooks.delivery import DeadLetter, Delivery, WebhookState
from reactorapp.webhooks.interfaces import IWebhookStore
from reactorapp.webhooks.rules import RuleError, parse_rule

log = Logger()

#: Seconds between looks at the rules' version in Redis.
WATCH_INTERVAL = 2.0

_DELIVERY = struct.Struct("!QBddHH")  # id, flags (QoS, retain), timestamp, queued at, lengths
_PROPERTIES = struct.Struct("!I")  # length of the properties, when flag 8 says there are some
_DEAD = struct.Struct("!IdH")  # attempts, died at, reason length


@implementer(IWebhookStore)
class RedisWebhookStore:
    """`IWebhookStore` riding on a `RedisStore`."""

    durable = True

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._hooks = store.prefix + b"webhook:"
        self._version = None
        self._watch: LoopingCall | None = None

    def load(self) -> WebhookState:
        """Read the rules and this node's outbox counts (at start-up, after
        the `RedisStore` is loaded; blocking)."""
        redis = self.store.blocking()
        try:
            self._version = redis.call(b"GET", self._hooks + b"version")
            answer = redis.call(b"EVAL", scripts.READ_WEBHOOKS, b"0", self.store.prefix,
                                self.store.node)
        except Exception as e:  # any answer Redis or the parser can give
            raise StoreError(f"cannot read the webhook rules in {self.store.where}: {e}.") from None
        finally:
            redis.close()
        return _state(answer)

    # -- writes: in the store's next batch ------------------------------------

    def save_rule(self, rule) -> None:
        self.store.write(b"W", rule.name, json.dumps(rule.to_dict(with_secret=True)))

    def delete_rule(self, name) -> None:
        self.store.write(b"w", name)

    def add(self, delivery) -> None:
        self.store.write(b"A", delivery.rule, delivery.id, _pack_delivery(delivery))

    def remove(self, delivery_id) -> None:
        self.store.write(b"a", delivery_id)

    def bury(self, dead_letter) -> None:
        self.store.write(b"Z", dead_letter.delivery.rule, dead_letter.id,
                         _pack_dead(dead_letter))

    def forget_dead(self, rule, count) -> None:
        if count > 0:
            self.store.write(b"z", rule, count)

    def revive(self, dead_id, delivery) -> None:
        self.store.write(b"V", dead_id, delivery.rule, delivery.id, _pack_delivery(delivery))

    def pending_commit(self):
        return self.store.pending_commit()

    def sync(self):
        return self.store.sync()

    # -- reads --------------------------------------------------------------

    def _entries(self, kind: bytes, rule, after_id, limit):
        return self.store.read(b"EVAL", scripts.READ_DELIVERIES, b"0", self.store.prefix,
                               self.store.node, kind, rule, after_id, limit)

    def pending(self, rule, after_id, limit):
        return self._entries(b"outbox", rule, after_id, limit).addCallback(
            lambda values: [_unpack_delivery(v) for v in values if v is not None])

    def dead_letters(self, rule, after_id, limit):
        return self._entries(b"dead", rule, after_id, limit).addCallback(
            lambda values: [_unpack_dead(v) for v in values if v is not None])

    def dead_letter(self, rule, dead_id):
        d = self.store.read(b"HGET", self._hooks + b"dead:" + self.store.node.encode(), dead_id)
        return d.addCallback(
            lambda value: None if value is None or not value.startswith(rule.encode() + b"\0")
            else _unpack_dead(value))

    # -- rules made on other nodes ------------------------------------------------

    def watch(self, changed, clock, interval: float = WATCH_INTERVAL) -> LoopingCall:
        """Call ``changed(WebhookState)`` when the rules in Redis change;
        returns the running `LoopingCall` (stop it to stop watching)."""
        self._watch = call = LoopingCall(self._look, changed)
        call.clock = clock
        call.start(interval, now=False).addErrback(
            lambda f: log.failure("Watching the webhook rules in Redis stopped", f))
        return call

    def _look(self, changed):
        d = self.store.read(b"GET", self._hooks + b"version")
        d.addCallback(self._cbVersion, changed)
        # (While Redis is away the read waits for it, and so does the next look.)
        d.addErrback(self._ebLook)
        return d

    def _ebLook(self, failure) -> None:
        if failure.check(StoreClosed):
            return  # shutting down
        log.failure("Cannot look at the webhook rules in {store}", failure, store=self.store)

    def _cbVersion(self, version, changed):
        if version == self._version:
            return None
        d = self.store.read(b"EVAL", scripts.READ_WEBHOOKS, b"0", self.store.prefix,
                            self.store.node)
        d.addCallback(self._cbRules, version, changed)
        return d

    def _cbRules(self, answer, version, changed) -> None:
        self._version = version
        changed(_state(answer))


def _state(answer) -> WebhookState:
    rules_flat, last, counts = answer
    rules = []
    for name, text in zip(rules_flat[0::2], rules_flat[1::2]):
        try:
            rules.append(parse_rule(json.loads(text)))
        except (ValueError, RuleError) as e:
            raise StoreError(
                f"the stored webhook rule {name.decode()!r} is unusable: {e}") from None
    pending = {rule.decode(): int(count) for rule, count, _ in counts if int(count)}
    dead = {rule.decode(): int(count) for rule, _, count in counts if int(count)}
    return WebhookState(rules, int(last), pending, dead)


def _pack_delivery(d: Delivery) -> bytes:
    """Rule NUL, a fixed header, topic, key, then (flag 8) the length and
    text of the MQTT 5 properties, then the payload. Entries written before
    properties were kept have no flag 8 and read back without them."""
    topic, key = d.topic.encode(), d.key.encode()
    properties = repr(d.properties).encode() if d.properties else b""
    flags = d.qos | (4 if d.retain else 0) | (8 if properties else 0)
    return b"".join((d.rule.encode(), b"\0",
                     _DELIVERY.pack(d.id, flags, d.timestamp, d.queued_at, len(topic), len(key)),
                     topic, key,
                     _PROPERTIES.pack(len(properties)) + properties if properties else b"",
                     d.payload))


def _unpack_delivery(value: bytes, durable: bool = True) -> Delivery:
    rule, _, rest = value.partition(b"\0")
    id, flags, timestamp, queued_at, topic_length, key_length = _DELIVERY.unpack_from(rest)
    at = _DELIVERY.size
    topic = rest[at:at + topic_length].decode()
    at += topic_length
    key = rest[at:at + key_length].decode()
    at += key_length
    properties = None
    if flags & 8:
        (length,) = _PROPERTIES.unpack_from(rest, at)
        at += _PROPERTIES.size
        properties = ast.literal_eval(rest[at:at + length].decode())
        at += length
    # As the SQLite store does: the expiry counts from the message's time.
    interval = properties.get("message_expiry_interval") if properties else None
    return Delivery(id, rule.decode(), topic, rest[at:], flags & 3, bool(flags & 4),
                    key, timestamp, queued_at, durable=durable, properties=properties,
                    expires_at=None if interval is None else timestamp + interval)


def _pack_dead(dead: DeadLetter) -> bytes:
    reason = dead.reason.encode()
    delivery = _pack_delivery(dead.delivery)
    rule, _, rest = delivery.partition(b"\0")
    return b"".join((rule, b"\0", _DEAD.pack(dead.attempts, dead.died_at, len(reason)), reason,
                     rest))


def _unpack_dead(value: bytes) -> DeadLetter:
    rule, _, rest = value.partition(b"\0")
    attempts, died_at, reason_length = _DEAD.unpack_from(rest)
    at = _DEAD.size
    reason = rest[at:at + reason_length].decode()
    delivery = _unpack_delivery(rule + b"\0" + rest[at + reason_length:], durable=False)
    return DeadLetter(delivery, attempts, reason, died_at)


registerAdapter(RedisWebhookStore, RedisStore, IWebhookStore)
