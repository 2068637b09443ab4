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
from tests.redisserver import redis_server
from tests.webhook_receiver import the_reactor, within

RULE = {"name": "r", "filters": ["s/#"], "url": "http://127.0.0.1:1/", "secret": "k"}
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis():
    with redis_server() as server:
        yield server


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
