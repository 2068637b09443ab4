"""A session kept in a store shared by several nodes is read at CONNECT.

First with a store whose answer the test controls (no Redis), then two hubs
in this process on one real redis-server, as two nodes would be.
"""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from reactorapp.cluster.blocking import BlockingRedis
from reactorapp.cluster.encoding import unpack_entry
from reactorapp.cluster.redisstore import RedisStore
from reactorapp.hub.hub import Hub
from reactorapp.hub.interfaces import ISessionLoader
from reactorapp.hub.message import Message
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings
from reactorapp.store.interfaces import StoredMessage, StoredSession
from reactorapp.store.memory import MemoryStore
from tests.mqtt_harness import Broker

TIMEOUT = 20.0
_prefixes = itertools.count()


@implementer(ISessionLoader)
class SharedStore(MemoryStore):
    """A memory store whose sessions may live elsewhere: `load_session`
    answers when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []
        self.answers: list[Deferred] = []
        self.forgotten: list[str] = []

    def load_session(self, client_id):
        self.asked.append(client_id)
        d = Deferred()
        self.answers.append(d)
        return d

    def forget_session(self, client_id):
        self.forgotten.append(client_id)


class Node(Broker):
    def __init__(self, store, clock=None):
        self.clock = clock or Clock()
        self.store = store
        self.hub = Hub(self.clock, store=store)
        self.factory = MQTTFactory(self.hub, self.clock, MQTTSettings())


def test_a_persistent_session_is_read_before_connack_and_what_came_meanwhile_waits():
    """[MQTT-3.2.2-2] Session Present once the stored session is found;
    [MQTT-4.4.0-1] its in-flight message re-sent, then its queue."""
    node = Node(SharedStore())
    client = node.client()
    client.send(P.Connect(client_id="c", clean_session=False),
                P.Subscribe(1, [P.SubscriptionRequest("new/#", 0)]))
    assert node.store.asked == ["c"] and client.take() == []
    stored = StoredSession("c", {"t/#": 1}, [
        StoredMessage(1, Message("t/1", b"in flight", 1), 1, False, 7, 1),
        StoredMessage(2, Message("t/2", b"queued", 1), 1, False)])
    node.store.answers[0].callback(stored)
    connack, *rest = client.take()
    assert connack.type == "CONNACK" and connack.session_present and connack.return_code == 0
    publishes = [p for p in rest if p.type == "PUBLISH"]
    assert [(p.payload, p.dup) for p in publishes] == [(b"in flight", True), (b"queued", False)]
    assert [p.type for p in rest if p.type != "PUBLISH"] == ["SUBACK"]
    session = node.hub.get_session("c")
    assert session.subscriptions == {"t/#": 1, "new/#": 0}
    node.hub.publish(Message("t/3", b"live", 1))
    assert [p.payload for p in client.take()] == [b"live"]


def test_no_stored_session_makes_a_new_one():
    node = Node(SharedStore())
    client = node.client()
    client.send(P.Connect(client_id="c", clean_session=False))
    node.store.answers[0].callback(None)
    (connack,) = client.take()
    assert connack.return_code == 0 and not connack.session_present
    assert node.hub.get_session("c").persistent


def test_a_session_that_cannot_be_read_refuses_the_client():
    node = Node(SharedStore())
    client = node.client()
    client.send(P.Connect(client_id="c", clean_session=False))
    node.store.answers[0].errback(ConnectionError("Redis is away"))
    (connack,) = client.take()
    assert connack.return_code == P.ConnectReturnCode.SERVER_UNAVAILABLE and client.closed


def test_a_clean_session_forgets_the_stored_one_without_reading_it():
    """[MQTT-3.1.2-6]"""
    node = Node(SharedStore())
    node.connect("c", clean=True)
    assert node.store.asked == [] and node.store.forgotten == ["c"]


def test_a_session_already_here_is_not_read_again():
    node = Node(SharedStore())
    first = node.client()
    first.send(P.Connect(client_id="c", clean_session=False))
    node.store.answers[0].callback(None)
    first.take()
    first.send(P.Disconnect())
    again = node.client()
    again.send(P.Connect(client_id="c", clean_session=False))
    assert node.store.asked == ["c"] and again.take()[0].session_present


# -- two hubs on one redis-server ---------------------------------------------------


async def bounded(d):
    from twisted.internet import reactor

    if d is not None:
        await d.addTimeout(TIMEOUT, reactor)


async def until(condition) -> None:
    from twisted.internet import reactor

    for _ in range(int(TIMEOUT / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{condition} never held")


async def start_node(redis, prefix, name) -> Node:
    from twisted.internet import reactor

    store = RedisStore(reactor, port=redis.port, prefix=prefix, node=name)
    node = Node(store)
    node.state = store.load()
    return node


async def connect(node, client_id, clean=False):
    client = node.client()
    client.send(P.Connect(client_id=client_id, clean_session=clean))
    packets = []
    await until(lambda: packets.extend(client.take()) or packets)
    client.connack, *client.backlog = packets
    return client


@pytest_twisted.ensureDeferred
async def test_queued_messages_follow_their_session_to_another_node(redis):
    """A QoS 1 message queued for an offline client on node A is delivered
    when the client connects to node B, which then holds the session."""
    prefix = f"move{next(_prefixes)}"
    a, b = await start_node(redis, prefix, "a"), await start_node(redis, prefix, "b")
    sub = await connect(a, "sub")
    sub.subscribe(("t/#", 1))
    sub.send(P.Disconnect())
    commit = a.hub.route(Message("t/1", b"kept for you", 1))
    await bounded(commit.deferred())

    moved = await connect(b, "sub")
    assert moved.connack.session_present
    (publish,) = moved.take()
    assert publish.payload == b"kept for you" and publish.qos == 1
    moved.send(P.PubAck(publish.packet_id))
    assert b.hub.get_session("sub").subscriptions == {"t/#": 1}
    # Node A's copy: its late writes for "sub" are skipped, and the message
    # goes to b's stream for "sub" instead (acknowledged); then a lets go.
    late = a.hub.route(Message("t/2", b"to the old node", 1))
    done = []
    late.add(done.append)
    await until(lambda: done)
    assert done[0] is None
    connection = BlockingRedis("127.0.0.1", redis.port)
    try:
        entries = connection.call(b"XRANGE", b"reactorapp:stream:b", b"-", b"+")
    finally:
        connection.close()
    assert [unpack_entry(fields[3])[0].payload for _, fields in entries
            if fields[:2] == [b"c", b"sub"]][-1:] == [b"to the old node"]
    a.hub.get_session("sub").discard()
    await bounded(b.store.sync())
    c = await start_node(redis, prefix, "b")
    assert [s.client_id for s in c.state.sessions] == ["sub"]
    for node in (a, b, c):
        await node.store.close()
