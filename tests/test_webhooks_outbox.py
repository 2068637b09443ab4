"""The outbox with a real hub, a store in memory and a dispatcher the test
drives: durability before acknowledgement, queues, order, concurrency,
spilling to the store and resuming from it. No sockets, no reactor."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from reactorapp.hub.hub import Hub
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.message import Message
from reactorapp.hub.commit import Commit
from reactorapp.webhooks.delivery import DeadLetter, Delivery
from reactorapp.webhooks.dispatcher import Result
from reactorapp.webhooks.interfaces import IWebhookStore
from reactorapp.webhooks.memorystore import MemoryWebhookStore, WebhookTables
from reactorapp.webhooks.metrics import WebhookMetrics
from reactorapp.webhooks.outbox import Outbox
from reactorapp.webhooks.rules import parse_rule

DELIVERED = Result(True, 1, "HTTP 200")
DEAD = Result(False, 3, "HTTP 500")


class HubStore:
    """The hub's store as far as the hub and the outbox see it: a write
    counter, and a `sync` the test fires."""

    def __init__(self) -> None:
        self.writes = 0
        self.syncs: list[Commit] = []

    def set_retained(self, message):
        self.writes += 1

    def pending_commit(self):
        commit = Commit()
        self.syncs.append(commit)
        return commit

    def sync(self):
        return self.pending_commit().deferred()


class Dispatcher:
    """Records each delivery it is given; the test finishes them."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, Delivery, Deferred]] = []

    def deliver(self, target, delivery):
        d = Deferred(lambda d: None)
        self.calls.append((target, delivery, d))
        return d

    def payloads(self):
        return [delivery.payload for _, delivery, _ in self.calls]

    def finish(self, index: int = 0, result: Result = DELIVERED) -> None:
        self.calls[index][2].callback(result)


def make(queue_size=100, tables=None, max_dead_letters=0, **fields):
    clock = Clock()
    hub_store = HubStore()
    hub = Hub(clock, store=hub_store)
    store = MemoryWebhookStore(hub_store, tables)
    dispatcher = Dispatcher()
    registry = CollectorRegistry()
    outbox = Outbox(hub, store, dispatcher, clock, WebhookMetrics(registry),
                    queue_size=queue_size, last_id=max([0, *(tables.outbox if tables else ())]),
                    max_dead_letters=max_dead_letters)
    rule = parse_rule({"name": "r", "filters": ["s/#"], "url": "http://127.0.0.1:1/", **fields})
    return SimpleNamespace(clock=clock, hub=hub, hub_store=hub_store, store=store,
                           dispatcher=dispatcher, outbox=outbox, rule=rule, registry=registry)


def sample(t, name):
    suffix = "" if name in ("in_flight", "pending") else "_total"
    return t.registry.get_sample_value(f"reactorapp_webhook_{name}{suffix}", {"rule": "r"})


def publish(t, n, qos=1, topic="s/x"):
    return [t.hub.publish(Message(topic, b"%d" % i, qos)) for i in range(n)]


def test_the_rule_outbox_is_a_subscriber_and_the_stores_keep_the_contract():
    t = make()
    verifyObject(ISubscriber, t.outbox.add_rule(t.rule))
    verifyObject(IWebhookStore, t.store)


def test_qos1_is_written_before_the_publisher_is_acknowledged():
    t = make()
    t.outbox.add_rule(t.rule)
    (acknowledged,) = publish(t, 1)
    assert isinstance(acknowledged, Deferred) and not acknowledged.called
    (delivery,) = t.store.tables.outbox.values()
    assert (delivery.topic, delivery.payload, delivery.qos, delivery.durable) == (
        "s/x", b"0", 1, True)
    t.hub_store.syncs[0].fire()  # the batch holding the row committed
    assert acknowledged.called
    t.dispatcher.finish(0)
    assert t.store.tables.outbox == {}
    assert sample(t, "pending") == 0


def test_qos0_is_not_written_and_not_waited_for():
    t = make()
    t.outbox.add_rule(t.rule)
    assert publish(t, 1, qos=0) == [None]
    assert t.store.tables.outbox == {} and t.hub_store.writes == 0
    assert t.dispatcher.payloads() == [b"0"]


def test_a_rule_with_qos0_takes_qos1_messages_best_effort():
    t = make(qos=0)
    t.outbox.add_rule(t.rule)
    assert publish(t, 1, qos=1) == [None]
    assert t.dispatcher.calls[0][1].qos == 0


def test_qos0_queue_is_bounded_and_drops_are_counted():
    t = make(queue_size=2)
    t.outbox.add_rule(t.rule)
    publish(t, 5, qos=0)  # one under way, two queued, two dropped
    assert t.dispatcher.payloads() == [b"0"]
    assert sample(t, "dropped") == 2 and t.outbox.rules["r"].dropped == 2
    t.dispatcher.finish(0)
    t.dispatcher.finish(1)
    t.dispatcher.finish(2)
    assert t.dispatcher.payloads() == [b"0", b"1", b"2"]


def test_concurrency_one_keeps_publish_order():
    t = make()
    t.outbox.add_rule(t.rule)
    publish(t, 5)
    for i in range(5):
        assert len([c for c in t.dispatcher.calls if not c[2].called]) == 1
        t.dispatcher.finish(i)
    assert t.dispatcher.payloads() == [b"0", b"1", b"2", b"3", b"4"]


def test_concurrency_limit_is_respected():
    t = make(max_concurrency=3)
    t.outbox.add_rule(t.rule)
    publish(t, 10)
    assert len(t.dispatcher.calls) == 3
    assert sample(t, "pending") == 10
    t.dispatcher.finish(1)
    assert len(t.dispatcher.calls) == 4
    for i in (0, 2, 3):
        t.dispatcher.finish(i)
    assert len(t.dispatcher.calls) == 7


def test_a_dead_delivery_moves_to_the_dead_letters():
    t = make()
    t.outbox.add_rule(t.rule)
    publish(t, 1)
    t.clock.advance(5)
    t.dispatcher.finish(0, DEAD)
    assert t.store.tables.outbox == {}
    (dead,) = t.store.tables.dead.values()
    assert (dead.attempts, dead.reason, dead.died_at, dead.delivery.payload) == (
        3, "HTTP 500", 5, b"0")
    assert sample(t, "dead_lettered") == 1


def test_dead_letters_can_be_sent_again_as_new_deliveries():
    t = make()
    t.outbox.add_rule(t.rule)
    publish(t, 1)
    t.dispatcher.finish(0, DEAD)
    (dead,) = t.store.tables.dead.values()
    writes = t.hub_store.writes
    (again,) = t.outbox.send_again("r", [dead])
    assert t.hub_store.writes > writes
    assert t.store.tables.dead == {} and list(t.store.tables.outbox) == [again.id]
    assert again.id > dead.id and again.key == dead.delivery.key and again.durable
    assert t.dispatcher.calls[1][1] is again


def test_the_dead_letters_keep_the_newest_and_count_what_they_drop():
    """A receiver that stays down must not fill the disk: past
    --max-dead-letters the oldest dead letters go, counted."""
    t = make(max_dead_letters=2)
    t.outbox.add_rule(t.rule, dead=1)  # one left from before a restart
    t.store.tables.dead[0] = SimpleNamespace(delivery=SimpleNamespace(rule="r"))
    publish(t, 3)
    for i in range(3):
        t.dispatcher.finish(i, DEAD)
    kept = sorted(t.store.tables.dead.values(), key=lambda dead: dead.id)
    assert [dead.delivery.payload for dead in kept] == [b"1", b"2"]
    assert sample(t, "dead_lettered") == 3 and sample(t, "dead_letters_dropped") == 2
    t.outbox.send_again("r", kept[:1])  # a revived one leaves room
    publish(t, 1)
    t.dispatcher.finish(3, DEAD)  # the revived delivery dies again: no drop
    assert sample(t, "dead_letters_dropped") == 2
    t.dispatcher.finish(4, DEAD)
    kept = sorted(t.store.tables.dead.values(), key=lambda dead: dead.id)
    assert [dead.delivery.payload for dead in kept] == [b"1", b"0"]
    assert sample(t, "dead_letters_dropped") == 3


def test_retained_messages_sent_on_subscription_are_not_pushed():
    t = make()
    t.hub.publish(Message("s/kept", b"v", 0, retain=True))
    t.outbox.add_rule(t.rule)
    assert t.dispatcher.calls == []


def test_the_idempotency_key_is_the_message_id_unique_to_the_process():
    t = make()
    t.outbox.add_rule(t.rule)
    message = Message("s/x", b"p", 1)
    t.hub.publish(message)
    key = t.dispatcher.calls[0][1].key
    assert key == f"{t.outbox.epoch}-{message.id}"
    assert make().outbox.epoch != t.outbox.epoch


def test_a_full_queue_spills_to_the_store_and_order_is_kept():
    t = make(queue_size=4)
    outbox = t.outbox.add_rule(t.rule)
    publish(t, 12)
    assert len(outbox.queue) == 4 and len(t.dispatcher.calls) == 1
    assert len(t.store.tables.outbox) == 12 and outbox.pending == 12
    publish(t, 2, qos=0)  # a spilled rule drops QoS 0 rather than reorder
    assert sample(t, "dropped") == 2
    for i in range(12):
        assert len(outbox.queue) <= 4
        t.dispatcher.finish(i)
    assert t.dispatcher.payloads() == [b"%d" % i for i in range(12)]
    assert t.store.tables.outbox == {} and outbox.pending == 0
    publish(t, 1, qos=0)  # no longer spilled
    assert t.dispatcher.payloads()[-1] == b"0"


def test_pending_deliveries_are_resumed_in_order_at_start_up():
    tables = WebhookTables()
    for i in (3, 5, 9):
        tables.outbox[i] = Delivery(i, "r", "s/x", b"%d" % i, 1, False, f"k{i}", 0.0, 0.0, True)
    tables.outbox[4] = Delivery(4, "other", "s/x", b"-", 1, False, "k4", 0.0, 0.0, True)
    t = make(queue_size=2, tables=tables)
    state = t.store.load()
    assert state.pending == {"r": 3, "other": 1} and state.last_id == 9
    t.outbox.add_rule(t.rule, state.pending["r"])
    for i in range(3):
        t.dispatcher.finish(i)
    assert t.dispatcher.payloads() == [b"3", b"5", b"9"]
    assert list(tables.outbox) == [4]
    assert t.outbox.next_id() == 10


def test_stop_cancels_deliveries_and_leaves_them_in_the_store():
    t = make(max_concurrency=2)
    outbox = t.outbox.add_rule(t.rule)
    publish(t, 3)
    t.outbox.stop()
    assert all(d.called for _, _, d in t.dispatcher.calls)
    assert len(t.store.tables.outbox) == 3 and outbox.in_flight == {}
    assert publish(t, 1) == [None]  # unsubscribed
    assert len(t.dispatcher.calls) == 2


def test_a_changed_rule_changes_the_subscriptions():
    t = make()
    t.outbox.add_rule(t.rule)
    t.outbox.update_rule(parse_rule({"name": "r", "filters": ["t/+"], "url": "http://h/"}))
    publish(t, 1, topic="s/x")
    assert t.dispatcher.calls == []
    publish(t, 1, topic="t/y")
    assert t.dispatcher.payloads() == [b"0"]
    assert t.dispatcher.calls[0][0].rule.url == "http://h/"


def test_removing_a_rule_forgets_its_deliveries_and_metrics():
    t = make()
    t.outbox.add_rule(t.rule)
    publish(t, 2)
    t.store.bury(DeadLetter(t.store.tables.outbox[2], 1, "x", 0.0))
    t.outbox.remove_rule("r")
    assert t.store.tables.outbox == {} and t.store.tables.dead == {}
    assert sample(t, "pending") is None
    assert publish(t, 1) == [None]


@pytest.mark.parametrize("qos", [1, 2])
def test_qos2_is_durable_like_qos1(qos):
    t = make()
    t.outbox.add_rule(t.rule)
    (acknowledged,) = publish(t, 1, qos=qos)
    assert acknowledged is not None and len(t.store.tables.outbox) == 1


def _logged_failures(run):
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_failure") is not None]


@pytest.mark.parametrize("qos", [0, 1])
def test_a_delivery_whose_dispatch_fails_unexpectedly_is_tried_again(qos):
    """A bug in the dispatcher (here: its Deferred fails) is logged once per
    failure, and the delivery keeps its place and is tried again after the
    back-off: not lost, not stuck until a restart, QoS 0 included."""
    t = make(retry={"max_attempts": 3, "base_delay": 1, "max_delay": 1})
    t.outbox.add_rule(t.rule)
    publish(t, 2, qos=qos)
    failures = _logged_failures(lambda: t.dispatcher.calls[0][2].errback(ValueError("bug")))
    assert len(failures) == 1
    assert len(t.dispatcher.calls) == 1  # the second waits: concurrency 1
    t.clock.advance(1)
    assert [d.payload for _, d, _ in t.dispatcher.calls] == [b"0", b"0"]
    t.dispatcher.finish(1)
    t.dispatcher.finish(2)
    assert sample(t, "pending") == 0
    assert t.store.tables.outbox == {}


def test_a_delivery_that_keeps_failing_unexpectedly_is_dead_in_the_end():
    t = make(retry={"max_attempts": 2, "base_delay": 1, "max_delay": 1})
    t.outbox.add_rule(t.rule)
    publish(t, 1)
    _logged_failures(lambda: t.dispatcher.calls[0][2].errback(ValueError("bug")))
    t.clock.advance(1)
    _logged_failures(lambda: t.dispatcher.calls[1][2].errback(ValueError("bug")))
    (dead,) = t.store.tables.dead.values()
    assert dead.reason == "internal error: bug" and dead.attempts == 2
    assert t.store.tables.outbox == {}


def test_a_failure_recording_the_end_of_a_delivery_is_logged_and_the_queue_goes_on():
    t = make()
    t.outbox.add_rule(t.rule)
    publish(t, 2)

    def bury(dead):
        raise OSError("disk full")

    t.store.bury = bury
    failures = _logged_failures(lambda: t.dispatcher.finish(0, DEAD))
    assert len(failures) == 1
    assert len(t.dispatcher.calls) == 2  # the next delivery started
