"""The outbox: deliveries waiting to get through, one queue per rule.

Each rule is one hub subscriber (`RuleOutbox`), subscribed to its filters at
the rule's QoS. What it does with a message depends on the QoS it arrives at:

- QoS 1 (and 2, which webhooks treat as 1): the delivery is written to the
  store in the same turn, so the hub sees the write and acknowledges the
  publisher only once it is durable. The row is removed after a 2xx (or
  moved to the dead letters), so whatever was pending at a crash is sent
  after the restart: at least once.
- QoS 0: best effort from memory. When the rule's queue is full the message
  is dropped and counted (``reactorapp_webhook_dropped_total``).

A message whose MQTT 5 Message Expiry Interval runs out while it waits (in
the queue, in the store, or between attempts) is not sent: it is dropped and
counted (``reactorapp_webhook_expired_total``) [MQTT-3.3.2-5].

Memory stays bounded: a rule keeps at most ``queue_size`` deliveries in
memory. Past that, QoS 1 deliveries are only written to the store and read
back in pages, oldest first, as the queue drains ("spilled"); while a rule is
spilled, QoS 0 messages are dropped, so delivery order is kept. Start-up is
the same case: every rule with pending rows starts spilled.

At most ``max_concurrency`` deliveries of a rule are under way at once; a
delivery keeps its place through its back-off, so with ``max_concurrency``
1 a rule's deliveries arrive in publish order. (The queue is the waiting
line; a semaphore would only add a Deferred per waiting message.)
"""

from __future__ import annotations

import secrets
from collections import deque

from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.shared import BUSY, READY
from reactorapp.webhooks.delivery import DeadLetter, Delivery
from reactorapp.webhooks.dispatcher import Result

log = Logger()


class Outbox:
    """Every rule's queue, and what they share: store, dispatcher, ids."""

    def __init__(self, hub, store, dispatcher, clock, metrics, *,
                 queue_size: int = 1000, last_id: int = 0, max_dead_letters: int = 0) -> None:
        self.hub = hub
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.metrics = metrics
        self.queue_size = max(1, queue_size)
        #: Dead letters kept per rule, the oldest dropped first; 0: no limit.
        self.max_dead_letters = max_dead_letters
        self.rules: dict[str, RuleOutbox] = {}
        self._last_id = last_id
        #: Prefix of idempotency keys, unique to this process (see `Delivery`).
        self.epoch = secrets.token_hex(6)

    def next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def add_rule(self, rule, pending: int = 0, dead: int = 0) -> RuleOutbox:
        """Start serving ``rule``; ``pending`` deliveries and ``dead`` dead
        letters of it are in the store."""
        outbox = self.rules[rule.name] = RuleOutbox(self, rule, pending)
        outbox.dead = dead
        outbox.subscribe(rule.filters)
        outbox.resume()
        return outbox

    def update_rule(self, rule) -> None:
        self.rules[rule.name].update(rule)

    def remove_rule(self, name: str) -> None:
        """Stop serving a rule and forget what it had pending."""
        outbox = self.rules.pop(name)
        outbox.stop()
        self.store.delete_rule(name)
        self.metrics.forget(name)

    def stop(self) -> None:
        """Stop every rule where it is; durable deliveries stay in the store."""
        for outbox in self.rules.values():
            outbox.stop()

    def send_again(self, name: str, dead_letters) -> list[Delivery]:
        """Queue dead letters of rule ``name`` again, as new deliveries."""
        outbox = self.rules[name]
        now = self.clock.seconds()
        revived = []
        for dead in dead_letters:
            delivery = dead.delivery.again(self.next_id(), now)
            self.store.revive(dead.id, delivery)
            outbox.dead -= 1
            outbox.take_durable(delivery)
            revived.append(delivery)
        return revived


@implementer(ISubscriber)
class RuleOutbox:
    """One rule: its subscriptions, its queue and its deliveries under way."""

    #: Each node of a cluster sends the webhooks of what was published on
    #: it: other nodes are not told of this subscriber's filters, or every
    #: node serving the rule would send the same message.
    cluster_local = True

    def __init__(self, outbox: Outbox, rule, pending: int) -> None:
        self.outbox = outbox
        self.rule = rule
        self.metrics = outbox.metrics.for_rule(rule.name)
        self.queue: deque[Delivery] = deque()
        self.in_flight: dict[int, object] = {}
        #: Deliveries not yet done: in the queue, under way, or only in the store.
        self.pending = pending
        self.dropped = 0
        #: Deliveries dropped unsent because their message expired.
        self.expired = 0
        #: Dead letters in the store.
        self.dead = 0
        self.stopped = False
        # Durable deliveries with an id above `_cursor` are only in the store
        # while `_spilled`; `_spill_mark` changes with every such write.
        self._spilled = pending > 0
        self._cursor = 0
        self._spill_mark = 0
        self._paging = False
        self._pumping = False
        #: Delivery id -> times its delivery failed unexpectedly (a bug).
        self._crashes: dict[int, int] = {}
        self.metrics.pending.set(pending)

    def __repr__(self) -> str:
        return f"<RuleOutbox {self.rule.name!r}>"

    # -- subscriptions -----------------------------------------------------

    def subscribe(self, filters) -> None:
        for topic_filter in filters:
            self.outbox.hub.subscribe(self, topic_filter, self.rule.qos)

    def update(self, rule) -> None:
        """Take a changed rule: new filters and QoS now, new endpoint settings
        from each delivery's next attempt."""
        hub = self.outbox.hub
        for topic_filter in self.rule.filters:
            if topic_filter not in rule.filters:
                hub.unsubscribe(self, topic_filter)
        self.rule = rule
        self.subscribe(rule.filters)  # subscribing again replaces the QoS
        self._pump()

    def stop(self) -> None:
        """Unsubscribe and stop every delivery where it is."""
        self.stopped = True
        hub = self.outbox.hub
        for topic_filter in self.rule.filters:
            hub.unsubscribe(self, topic_filter)
        self.queue.clear()
        for d in list(self.in_flight.values()):
            if d is not None:
                d.cancel()

    # -- taking messages (ISubscriber) ---------------------------------------

    @property
    def share_label(self) -> tuple[str, str]:
        """(kind, name) of this member, for the admin API."""
        return "webhook", self.rule.name

    def share_state(self, qos: int) -> int:
        """As a member of a shared subscription (a ``$share/...`` filter):
        `BUSY` while deliveries wait in the store or fill the queue, so
        that the other members take the next messages."""
        if self._spilled or len(self.queue) >= self.outbox.queue_size // 2:
            return BUSY
        return READY

    def deliver(self, message, qos, retained):
        """Queue ``message`` (live traffic only: retained messages sent on
        subscription are not pushed). Return the store's `Commit` that makes
        a QoS 1/2 delivery durable, or None."""
        if retained or self.stopped:
            return None
        outbox = self.outbox
        delivery = Delivery.of(outbox.next_id(), self.rule.name, message, qos,
                               f"{outbox.epoch}-{message.id}", outbox.clock.seconds())
        if qos:
            outbox.store.add(delivery)
            self.take_durable(delivery)
            return outbox.store.pending_commit()  # the publisher waits until it is durable
        if self._spilled or len(self.queue) >= outbox.queue_size:
            self.dropped += 1
            self.metrics.dropped.inc()
        else:
            self.pending += 1
            self.metrics.pending.inc()
            self.queue.append(delivery)
            self._pump()

    def take_durable(self, delivery: Delivery) -> None:
        """Queue a delivery that has just been written to the store."""
        self.pending += 1
        self.metrics.pending.inc()
        if self._spilled or len(self.queue) >= self.outbox.queue_size:
            self._spilled = True
            self._spill_mark += 1
        else:
            self.queue.append(delivery)
            self._cursor = delivery.id
            self._pump()

    # -- reading spilled deliveries back -----------------------------------------

    def resume(self) -> None:
        """Read back what the store holds for this rule (at start-up)."""
        self._page_in()

    def _page_in(self) -> None:
        size = self.outbox.queue_size
        if not self._spilled or self._paging or self.stopped or len(self.queue) > size // 2:
            return
        self._paging = True
        limit = size - len(self.queue)
        d = self.outbox.store.pending(self.rule.name, self._cursor, limit)
        d.addCallbacks(self._cbPaged, self._ebPaged,
                       callbackArgs=(limit, self._spill_mark))

    def _cbPaged(self, deliveries, limit: int, mark: int) -> None:
        self._paging = False
        if self.stopped:
            return
        for delivery in deliveries:
            if delivery.id > self._cursor:
                self.queue.append(delivery)
                self._cursor = delivery.id
        if len(deliveries) < limit and mark == self._spill_mark:
            # The read saw every write made before it and none came since.
            self._spilled = False
        self._pump()
        self._page_in()

    def _ebPaged(self, failure) -> None:
        self._paging = False
        log.failure("Could not read pending deliveries of webhook {rule}", failure,
                    rule=self.rule.name)

    # -- sending ------------------------------------------------------------------

    def _pump(self) -> None:
        """Start deliveries while the rule allows more under way."""
        if self._pumping:
            return
        self._pumping = True
        try:
            queue, in_flight = self.queue, self.in_flight
            while queue and len(in_flight) < self.rule.max_concurrency and not self.stopped:
                self._send(queue.popleft())
        finally:
            self._pumping = False

    def _send(self, delivery: Delivery) -> None:
        if delivery.expires_at is not None and delivery.expired(self.outbox.clock.seconds()):
            self._expired(delivery)
            return
        in_flight = self.in_flight
        in_flight[delivery.id] = None  # it may finish before deliver returns
        d = self.outbox.dispatcher.deliver(self, delivery)
        if delivery.id in in_flight:
            in_flight[delivery.id] = d
        d.addCallbacks(self._cbDone, self._ebDone,
                       callbackArgs=(delivery,), errbackArgs=(delivery,))
        d.addErrback(self._ebRecord, delivery)

    def _expired(self, delivery: Delivery) -> None:
        """Drop a delivery whose message expired before it got through."""
        self.pending -= 1
        self.metrics.pending.dec()
        self.expired += 1
        self.metrics.expired.inc()
        self.outbox.hub.stats.messages_expired += 1
        if delivery.durable:
            self.outbox.store.remove(delivery.id)

    def _cbDone(self, result, delivery: Delivery) -> None:
        self.in_flight.pop(delivery.id, None)
        self._crashes.pop(delivery.id, None)
        if result.expired:
            self._expired(delivery)
            self._next()
            return
        self.pending -= 1
        self.metrics.pending.dec()
        store = self.outbox.store
        if result.delivered:
            if delivery.durable:
                store.remove(delivery.id)
        else:
            log.warn("Webhook {rule}: delivery {id} of {topic!r} is dead after"
                     " {attempts} attempt(s): {reason}", rule=self.rule.name,
                     id=delivery.id, topic=delivery.topic, attempts=result.attempts,
                     reason=result.reason)
            self.metrics.dead.inc()
            store.bury(DeadLetter(delivery, result.attempts, result.reason,
                                  self.outbox.clock.seconds()))
            self.dead += 1
            excess = self.dead - self.outbox.max_dead_letters
            if self.outbox.max_dead_letters and excess > 0:
                store.forget_dead(self.rule.name, excess)
                self.dead -= excess
                self.metrics.dead_dropped.inc(excess)
        self._next()

    def _ebDone(self, failure, delivery: Delivery) -> None:
        """The dispatcher failed instead of answering (a bug): the delivery
        is tried again after the rule's back-off, keeping its place, and
        is dead once that has happened as often as the rule allows attempts."""
        if failure.check(CancelledError):
            self.in_flight.pop(delivery.id, None)
            return  # stopped; a durable delivery is still in the store
        crashes = self._crashes[delivery.id] = self._crashes.get(delivery.id, 0) + 1
        log.failure("Webhook {rule}: delivery {id} failed unexpectedly ({crashes} of {most})",
                    failure, rule=self.rule.name, id=delivery.id, crashes=crashes,
                    most=self.rule.retry.max_attempts)
        if self.stopped:
            self.in_flight.pop(delivery.id, None)
            return
        if crashes >= self.rule.retry.max_attempts:
            reason = f"internal error: {failure.getErrorMessage()}"[:300]
            self._cbDone(Result(False, crashes, reason), delivery)
            return
        wait = deferLater(self.outbox.clock, self.rule.retry.delay(crashes, 0.5))
        self.in_flight[delivery.id] = wait
        wait.addCallbacks(self._cbWaited, self._ebWaited,
                          callbackArgs=(delivery,), errbackArgs=(delivery,))

    def _cbWaited(self, _ignored, delivery: Delivery) -> None:
        self.in_flight.pop(delivery.id, None)
        if not self.stopped:
            self._send(delivery)

    def _ebWaited(self, failure, delivery: Delivery) -> None:
        self.in_flight.pop(delivery.id, None)
        if not failure.check(CancelledError):
            log.failure("Webhook {rule}: delivery {id} could not be tried again", failure,
                        rule=self.rule.name, id=delivery.id)

    def _ebRecord(self, failure, delivery: Delivery) -> None:
        """Recording the end of a delivery failed: logged once; a durable
        delivery stays in the store and is sent again after a restart."""
        log.failure("Webhook {rule}: could not record the end of delivery {id}", failure,
                    rule=self.rule.name, id=delivery.id)
        self._next()

    def _next(self) -> None:
        if not self.stopped:
            self._pump()
            self._page_in()
