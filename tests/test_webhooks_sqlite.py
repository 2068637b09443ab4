"""The webhook tables in the hub's SQLite database: same batch as the rest of a
publish, read back after a restart."""

from __future__ import annotations

import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from reactorapp.hub.hub import Hub
from reactorapp.hub.message import Message
from reactorapp.store.sqlite import SQLiteStore
from reactorapp.webhooks.sqlitestore import SQLiteWebhookStore
from reactorapp.webhooks.delivery import DeadLetter, Delivery
from reactorapp.webhooks.dispatcher import Result
from reactorapp.webhooks.interfaces import IWebhookStore
from reactorapp.webhooks.metrics import WebhookMetrics
from reactorapp.webhooks.outbox import Outbox
from reactorapp.webhooks.rules import parse_rule
from tests.webhook_receiver import the_reactor, within

RULE = {"name": "r", "filters": ["s/#"], "url": "http://127.0.0.1:1/", "secret": "k"}


def open_stores(directory):
    store = SQLiteStore(str(directory), the_reactor())
    store.load()
    webhooks = SQLiteWebhookStore(store)
    return store, webhooks, webhooks.load()


def delivery(id, rule="r", payload=b"p"):
    return Delivery(id, rule, "s/x", payload, 1, True, f"k{id}", 1.5, 2.5, True)


class Holding:
    """A dispatcher that never finishes: deliveries stay pending."""

    def deliver(self, target, delivery):
        return Deferred(lambda d: None)


@pytest_twisted.ensureDeferred
async def test_a_fresh_database_gets_the_tables(tmp_path):
    store, webhooks, state = open_stores(tmp_path)
    verifyObject(IWebhookStore, webhooks)
    assert (state.rules, state.last_id, state.pending) == ([], 0, {})
    assert await within(webhooks.pending("r", 0, 10)) == []
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_a_qos1_publish_waits_for_the_outbox_row_then_it_survives(tmp_path):
    store, webhooks, state = open_stores(tmp_path)
    hub = Hub(the_reactor(), store=store)
    outbox = Outbox(hub, webhooks, Holding(), the_reactor(), WebhookMetrics(CollectorRegistry()))
    outbox.add_rule(parse_rule(RULE))
    message = Message("s/x", b"\x00\xffbody", 1, retain=False)
    acknowledged = hub.publish(message)
    assert acknowledged is not None and not acknowledged.called
    await within(acknowledged)  # the group commit holding the row is on disk
    outbox.stop()
    await within(store.close())

    store, webhooks, state = open_stores(tmp_path)
    assert state.pending == {"r": 1} and state.last_id == 1
    (pending,) = await within(webhooks.pending("r", 0, 10))
    assert (pending.topic, pending.payload, pending.qos, pending.durable) == (
        "s/x", b"\x00\xffbody", 1, True)
    assert pending.key == f"{outbox.epoch}-{message.id}"
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_outbox_dead_letters_and_rules_round_trip(tmp_path):
    store, webhooks, _ = open_stores(tmp_path)
    rule = parse_rule(RULE)
    webhooks.save_rule(rule)
    for i in (1, 2, 3):
        webhooks.add(delivery(i))
    webhooks.add(delivery(4, rule="other"))
    webhooks.remove(2)
    webhooks.bury(DeadLetter(delivery(3), 5, "HTTP 500", 9.0))
    # A QoS 0 delivery dies without ever having been in the outbox.
    webhooks.bury(DeadLetter(Delivery(5, "r", "s/y", b"q", 0, False, "k5", 1.0, 1.0), 1, "HTTP 404", 9.5))
    assert [d.id for d in await within(webhooks.pending("r", 0, 10))] == [1]
    dead = await within(webhooks.dead_letters("r", 0, 10))
    assert [(d.id, d.attempts, d.reason) for d in dead] == [(3, 5, "HTTP 500"), (5, 1, "HTTP 404")]
    assert await within(webhooks.dead_letter("other", 3)) is None
    webhooks.revive(3, delivery(6))
    assert [d.id for d in await within(webhooks.dead_letters("r", 0, 10))] == [5]
    assert [d.id for d in await within(webhooks.pending("r", 0, 10))] == [1, 6]
    assert [d.id for d in await within(webhooks.pending("r", 1, 10))] == [6]
    await within(store.close())

    store, webhooks, state = open_stores(tmp_path)
    assert state.rules == [rule] and state.rules[0].secret == "k"
    assert state.pending == {"r": 2, "other": 1} and state.last_id == 6
    webhooks.delete_rule("r")
    await within(webhooks.sync())
    assert await within(webhooks.pending("r", 0, 10)) == []
    assert await within(webhooks.dead_letters("r", 0, 10)) == []
    assert [d.id for d in await within(webhooks.pending("other", 0, 10))] == [4]
    await within(store.close())


class Finishing:
    """A dispatcher whose deliveries the test finishes one by one, waiting
    for each next one to be handed over (reads from the store are async)."""

    def __init__(self) -> None:
        self.calls = []
        self._waiting = Deferred()

    def deliver(self, target, delivery):
        d = Deferred(lambda d: None)
        self.calls.append((delivery, d))
        waiting, self._waiting = self._waiting, Deferred()
        waiting.callback(delivery)
        return d

    def next_call(self):
        return self._waiting


@pytest_twisted.ensureDeferred
async def test_a_spilled_rule_reads_its_deliveries_back_from_the_database(tmp_path):
    store, webhooks, state = open_stores(tmp_path)
    hub = Hub(the_reactor(), store=store)
    dispatcher = Finishing()
    outbox = Outbox(hub, webhooks, dispatcher, the_reactor(), WebhookMetrics(CollectorRegistry()),
                    queue_size=3)
    rule_outbox = outbox.add_rule(parse_rule(RULE))
    acks = [hub.publish(Message("s/x", b"%d" % i, 1)) for i in range(10)]
    await within(acks[-1])
    assert len(rule_outbox.queue) == 3  # 1 under way, 3 queued, 6 only on disk
    for i in range(10):
        delivery, d = dispatcher.calls[i]
        assert delivery.payload == b"%d" % i
        if i < 9:
            following = dispatcher.next_call()
            d.callback(Result(True, 1, "HTTP 200"))
            await within(following)
        else:
            d.callback(Result(True, 1, "HTTP 200"))
    assert await within(webhooks.pending("r", 0, 100)) == []  # reads follow the writes
    outbox.stop()
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_the_oldest_dead_letters_of_a_rule_can_be_dropped(tmp_path):
    store, webhooks, _ = open_stores(tmp_path)
    for i, rule in [(1, "r"), (2, "other"), (3, "r"), (4, "r")]:
        webhooks.bury(DeadLetter(delivery(i, rule=rule), 3, "HTTP 500", 9.0))
    webhooks.forget_dead("r", 2)
    assert [d.id for d in await within(webhooks.dead_letters("r", 0, 10))] == [4]
    assert [d.id for d in await within(webhooks.dead_letters("other", 0, 10))] == [2]
    await within(store.close())

    store, webhooks, state = open_stores(tmp_path)
    assert state.dead == {"r": 1, "other": 1}
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_mqtt5_properties_and_expiry_survive_a_restart(tmp_path):
    """A pending delivery and a dead letter keep their message's MQTT 5
    properties on disk; the expiry is counted from the message's time."""
    properties = {"content_type": "text/plain", "user_property": [("a", "1"), ("a", "2")],
                  "correlation_data": b"\x00\xff", "message_expiry_interval": 30}
    store, webhooks, _ = open_stores(tmp_path)
    webhooks.add(Delivery(1, "r", "s/x", b"p", 1, False, "k1", 100.0, 101.0, True,
                          properties, 130.0))
    webhooks.bury(DeadLetter(Delivery(2, "r", "s/y", b"q", 1, False, "k2", 100.0, 101.0, True,
                                      {"response_topic": "back"}), 3, "HTTP 500", 9.0))
    webhooks.add(delivery(3))
    await within(store.close())

    store, webhooks, _ = open_stores(tmp_path)
    first, plain = await within(webhooks.pending("r", 0, 10))
    assert first.properties == properties
    assert first.expires_at == 130.0 and first.expired(130.0) and not first.expired(129.9)
    assert (plain.properties, plain.expires_at) == (None, None)
    (dead,) = await within(webhooks.dead_letters("r", 0, 10))
    assert dead.to_dict()["response_topic"] == "back"
    await within(store.close())
