"""Webhook rules, outbox and dead letters in Redis, against a real
redis-server: rules shared by the nodes, outboxes each node's own."""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import task
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from reactorapp.cluster.redisstore import RedisStore
from reactorapp.cluster.webhookstore import RedisWebhookStore
from reactorapp.hub.hub import Hub
from reactorapp.hub.message import Message
from reactorapp.webhooks.delivery import DeadLetter, Delivery
from reactorapp.webhooks.interfaces import IWebhookStore
from reactorapp.webhooks.rules import parse_rule
from reactorapp.webhooks.service import WebhookService
from tests.webhook_receiver import the_reactor, within

RULE = {"name": "r", "filters": ["s/#"], "url": "http://127.0.0.1:1/", "secret": "k"}
_prefixes = itertools.count()


@pytest.fixture
def prefix():
    return f"w{next(_prefixes)}"


def open_stores(redis, prefix, node="a"):
    store = RedisStore(the_reactor(), port=redis.port, prefix=prefix, node=node)
    store.load()
    webhooks = IWebhookStore(store)
    return store, webhooks, webhooks.load()


def delivery(id, rule="r", payload=b"p"):
    return Delivery(id, rule, "s/x", payload, 1, True, f"k{id}", 1.5, 2.5, True)


class Holding:
    """A dispatcher that never finishes: deliveries stay pending."""

    def deliver(self, target, delivery):
        return Deferred(lambda d: None)


async def settled(d) -> None:
    if d is not None:
        await within(d)


async def until(condition) -> None:
    for _ in range(1000):
        if condition():
            return
        await task.deferLater(the_reactor(), 0.02, lambda: None)
    raise AssertionError(f"{condition} never held")


@pytest_twisted.ensureDeferred
async def test_a_new_store_is_empty(redis, prefix):
    store, webhooks, state = open_stores(redis, prefix)
    assert isinstance(webhooks, RedisWebhookStore) and verifyObject(IWebhookStore, webhooks)
    assert (state.rules, state.last_id, state.pending, state.dead) == ([], 0, {}, {})
    assert await within(webhooks.pending("r", 0, 10)) == []
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_rules_deliveries_and_dead_letters_survive(redis, prefix):
    store, webhooks, _ = open_stores(redis, prefix)
    rule = parse_rule(RULE)
    webhooks.save_rule(rule)
    for id in (1, 2, 3, 4, 5):
        webhooks.add(delivery(id, payload=b"\x00\xff" + bytes([id])))
    webhooks.remove(2)
    webhooks.bury(DeadLetter(delivery(3), 5, "HTTP 500", 9.5))
    webhooks.bury(DeadLetter(delivery(4), 6, "timed out", 10.5))
    webhooks.revive(4, delivery(4).again(6, 11.0))
    webhooks.add(delivery(7, rule="other"))
    webhooks.bury(DeadLetter(delivery(8, rule="other"), 1, "x", 1.0))
    webhooks.bury(DeadLetter(delivery(9, rule="other"), 1, "y", 2.0))
    webhooks.forget_dead("other", 1)
    await within(webhooks.sync())
    await within(store.close())

    store, webhooks, state = open_stores(redis, prefix)
    assert state.rules == [rule] and state.rules[0].secret == "k"
    assert state.last_id == 7
    assert state.pending == {"r": 3, "other": 1} and state.dead == {"r": 1, "other": 1}
    pending = await within(webhooks.pending("r", 0, 10))
    assert [(d.id, d.payload, d.durable) for d in pending] == [
        (1, b"\x00\xff\x01", True), (5, b"\x00\xff\x05", True), (6, b"p", True)]
    assert pending[0] == delivery(1, payload=b"\x00\xff\x01")
    assert [d.id for d in await within(webhooks.pending("r", 1, 1))] == [5]
    (dead,) = await within(webhooks.dead_letters("r", 0, 10))
    assert (dead.id, dead.attempts, dead.reason, dead.died_at) == (3, 5, "HTTP 500", 9.5)
    assert (await within(webhooks.dead_letter("r", 3))).reason == "HTTP 500"
    assert await within(webhooks.dead_letter("other", 3)) is None
    assert [d.reason for d in await within(webhooks.dead_letters("other", 0, 10))] == ["y"]

    webhooks.delete_rule("r")
    await within(webhooks.sync())
    await within(store.close())
    store, webhooks, state = open_stores(redis, prefix)
    assert state.rules == [] and state.pending == {"other": 1} and state.dead == {"other": 1}
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_rules_are_shared_and_outboxes_are_each_nodes_own(redis, prefix):
    a, hooks_a, _ = open_stores(redis, prefix, "a")
    hooks_a.save_rule(parse_rule(RULE))
    hooks_a.add(delivery(1))
    await within(hooks_a.sync())
    b, hooks_b, state = open_stores(redis, prefix, "b")
    assert [r.name for r in state.rules] == ["r"]
    assert (state.last_id, state.pending) == (0, {})
    assert await within(hooks_b.pending("r", 0, 10)) == []
    await within(a.close())
    await within(b.close())


@pytest_twisted.ensureDeferred
async def test_a_publish_waits_for_its_outbox_entry_in_redis(redis, prefix):
    store, webhooks, _ = open_stores(redis, prefix)
    hub = Hub(the_reactor(), store=store)
    service = WebhookService(hub, webhooks, the_reactor(), registry=CollectorRegistry())
    service.startService()
    service.outbox.dispatcher = Holding()  # sending is not under test
    await settled(service.create(parse_rule(RULE)))
    commit = hub.route(Message("s/x", b"body", 1))
    assert commit is not None and not commit.done
    await within(commit.deferred())
    (entry,) = await within(webhooks.pending("r", 0, 10))
    assert entry.payload == b"body"
    service.stopService()
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_a_rule_made_on_one_node_is_served_by_the_others(redis, prefix):
    """Made, changed and deleted through node a's API; node b follows."""
    a, hooks_a, _ = open_stores(redis, prefix, "a")
    b, hooks_b, _ = open_stores(redis, prefix, "b")
    services = []
    for store, hooks in ((a, hooks_a), (b, hooks_b)):
        service = WebhookService(Hub(the_reactor(), store=store), hooks, the_reactor(),
                                 registry=CollectorRegistry())
        service.startService()
        services.append(service)
    service_a, service_b = services
    service_b._watch.stop()
    service_b._watch = hooks_b.watch(service_b.refresh, the_reactor(), interval=0.02)

    await settled(service_a.create(parse_rule(RULE)))
    await until(lambda: "r" in service_b.outbox.rules)
    assert service_b.rule("r").filters == ("s/#",)
    await settled(service_a.replace(parse_rule({**RULE, "filters": ["t/#"]}))[1])
    await until(lambda: service_b.rule("r").filters == ("t/#",))
    await settled(service_a.delete("r"))
    await until(lambda: "r" not in service_b.outbox.rules)
    for service, store in ((service_a, a), (service_b, b)):
        service.stopService()
        await within(store.close())


def test_webhook_rules_are_not_announced_to_other_nodes():
    """Each node sends the webhooks of what was published on it: a rule's
    filters are not among the filters other nodes forward messages for, so
    a message is sent to a rule's endpoint once, not once per node."""
    from twisted.internet.task import Clock

    from reactorapp.cluster.hub import ClusterHub
    from reactorapp.webhooks.memorystore import MemoryWebhookStore
    from reactorapp.webhooks.metrics import WebhookMetrics
    from reactorapp.webhooks.outbox import Outbox

    hub = ClusterHub(Clock())
    outbox = Outbox(hub, MemoryWebhookStore(), Holding(), Clock(),
                    WebhookMetrics(CollectorRegistry()))
    outbox.add_rule(parse_rule(RULE))
    assert hub.local_filters() == []
    outbox.remove_rule("r")
    assert hub.local_filters() == []


@pytest_twisted.ensureDeferred
async def test_a_look_at_the_rules_after_the_store_closed_logs_no_failure(redis, prefix):
    from twisted.logger import globalLogPublisher

    store, webhooks, _ = open_stores(redis, prefix)
    await within(store.close())
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        await webhooks._look(lambda state: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e for e in events if "log_failure" in e] == []


PROPERTIES = {"content_type": "text/plain", "user_property": [("a", "1"), ("a", "2")],
              "correlation_data": b"\x00\xff", "payload_format_indicator": 1,
              "response_topic": "back", "message_expiry_interval": 30}


@pytest_twisted.ensureDeferred
async def test_mqtt5_properties_and_expiry_survive_a_reopen(redis, prefix):
    """As in the SQLite store: a pending delivery and a dead letter keep
    their message's MQTT 5 properties, and the expiry counts from the
    message's time."""
    store, webhooks, _ = open_stores(redis, prefix)
    webhooks.add(Delivery(1, "r", "s/x", b"\x00p", 1, False, "k1", 100.0, 101.0, True,
                          PROPERTIES, 130.0))
    webhooks.bury(DeadLetter(Delivery(2, "r", "s/y", b"q", 1, False, "k2", 100.0, 101.0, True,
                                      {"response_topic": "back"}), 3, "HTTP 500", 9.0))
    webhooks.add(delivery(3))
    await within(webhooks.sync())
    await within(store.close())

    store, webhooks, _ = open_stores(redis, prefix)
    first, plain = await within(webhooks.pending("r", 0, 10))
    assert (first.properties, first.payload, first.topic, first.key) == (
        PROPERTIES, b"\x00p", "s/x", "k1")
    assert first.expires_at == 130.0 and first.expired(130.0) and not first.expired(129.9)
    assert plain == delivery(3) and (plain.properties, plain.expires_at) == (None, None)
    (dead,) = await within(webhooks.dead_letters("r", 0, 10))
    assert dead.delivery.properties == {"response_topic": "back"}
    assert dead.to_dict()["response_topic"] == "back"
    assert (await within(webhooks.dead_letter("r", 2))).delivery.properties == {
        "response_topic": "back"}
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_an_entry_written_before_properties_were_kept_still_reads(redis, prefix):
    """The format before MQTT 5: rule NUL, header, topic, key, payload."""
    import struct

    old = b"r\0" + struct.pack("!QBddHH", 1, 1 | 4, 1.5, 2.5, 3, 2) + b"s/xk1" + b"\x08body"
    store, webhooks, _ = open_stores(redis, prefix)
    store.write(b"A", "r", 1, old)
    await within(webhooks.sync())
    (entry,) = await within(webhooks.pending("r", 0, 10))
    assert entry == Delivery(1, "r", "s/x", b"\x08body", 1, True, "k1", 1.5, 2.5, True)
    await within(store.close())


@pytest_twisted.ensureDeferred
async def test_a_delivery_that_expired_in_redis_is_dropped_and_counted(redis, prefix):
    """Read back after a reopen, a delivery whose message expired meanwhile
    is not sent: it is counted as expired and its entry leaves Redis."""
    from prometheus_client import generate_latest
    from twisted.internet.task import Clock

    from reactorapp.webhooks.metrics import WebhookMetrics
    from reactorapp.webhooks.outbox import Outbox

    store, webhooks, _ = open_stores(redis, prefix)
    webhooks.save_rule(parse_rule(RULE))
    webhooks.add(Delivery(1, "r", "s/short", b"1", 1, False, "k1", 100.0, 100.0, True,
                          {"message_expiry_interval": 5}, 105.0))
    webhooks.add(Delivery(2, "r", "s/long", b"2", 1, False, "k2", 100.0, 100.0, True,
                          {"message_expiry_interval": 500}, 600.0))
    await within(webhooks.sync())
    await within(store.close())

    store, webhooks, state = open_stores(redis, prefix)
    clock = Clock()
    clock.advance(110.0)
    registry = CollectorRegistry()
    hub = Hub(the_reactor(), store=store)
    sent = []

    class Recording(Holding):
        def deliver(self, target, delivery):
            sent.append(delivery)
            return super().deliver(target, delivery)

    outbox = Outbox(hub, webhooks, Recording(), clock, WebhookMetrics(registry),
                    last_id=state.last_id)
    rule_outbox = outbox.add_rule(parse_rule(RULE), state.pending.get("r", 0))
    await until(lambda: sent)
    assert [(d.id, d.payload, d.left(clock.seconds())) for d in sent] == [(2, b"2", 490)]
    assert rule_outbox.expired == 1 and hub.stats.messages_expired == 1
    assert 'reactorapp_webhook_expired_total{rule="r"} 1.0' in generate_latest(registry).decode()
    await settled(webhooks.sync())
    assert [d.id for d in await within(webhooks.pending("r", 0, 10))] == [2]
    outbox.stop()
    await within(store.close())
