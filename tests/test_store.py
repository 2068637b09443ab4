"""One suite for every `IStore`: what is written comes back after a reopen.

Runs on the real reactor (pytest-twisted), since the SQLite store commits
from its writer thread.
"""

from __future__ import annotations

import math

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from twisted.internet.defer import maybeDeferred

from reactorapp.cluster.redisstore import RedisStore
from reactorapp.hub.message import Message
from reactorapp.store.interfaces import IStore, StoreClosed
from reactorapp.store.memory import MemoryStore, MemoryTables
from reactorapp.store.sqlite import SQLiteStore

PUBACK_STATE, PUBCOMP_STATE = 1, 3  # opaque to a store; values as in mqtt/session.py


class Stores:
    """Opens one kind of store, and reopens it on the same data."""

    def __init__(self, kind: str, directory) -> None:
        self.kind = kind
        self.directory = str(directory)
        self.tables = MemoryTables()
        self.current = None

    async def open(self):
        from twisted.internet import reactor

        if self.kind == "memory":
            self.current = MemoryStore(self.tables)
        elif self.kind == "redis":
            self.current = RedisStore(
                reactor, host="127.0.0.1", port=self.redis.port, prefix=self.directory,
                node="n1")
        else:
            self.current = SQLiteStore(self.directory, reactor)
        return self.current, await maybeDeferred(self.current.load)

    async def reopen(self):
        await self.current.close()
        return await self.open()

    async def close(self):
        if self.current is not None:
            await self.current.close()


@pytest_twisted.async_yield_fixture(params=["memory", "sqlite", "redis"])
async def stores(request, tmp_path):
    opened = Stores(request.param, tmp_path)
    if request.param == "redis":
        # One server for the module; each test its own keys.
        opened.redis = request.getfixturevalue("redis")
    yield opened
    await opened.close()


async def durable(store) -> None:
    d = store.sync()
    if d is not None:
        await d


def message(topic="t", payload=b"p", qos=1, retain=False, **kw) -> Message:
    return Message(topic, payload, qos, retain, **kw)


def same_message(a, b) -> bool:
    """The same content (a message read back is a new object: equality is identity)."""
    return ((a.topic, a.payload, a.qos, a.retain, a.properties, a.sender, a.timestamp)
            == (b.topic, b.payload, b.qos, b.retain, b.properties, b.sender, b.timestamp))


@pytest_twisted.ensureDeferred
async def test_provides_the_interface(stores):
    store, _ = await stores.open()
    assert verifyObject(IStore, store)


@pytest_twisted.ensureDeferred
async def test_a_new_store_is_empty(stores):
    _, state = await stores.open()
    assert state.retained == [] and state.sessions == []


@pytest_twisted.ensureDeferred
async def test_every_write_is_counted(stores):
    store, _ = await stores.open()
    store.add_session("c")
    store.add_subscription("c", "a/#", 1)
    store.enqueue("c", 1, message(), 1, False)
    assert store.writes >= 3
    before = store.writes
    store.dequeue("c", 1)
    assert store.writes > before


@pytest_twisted.ensureDeferred
async def test_retained_messages_survive(stores):
    """[MQTT-3.3.1-5] the last retained message per topic, with its QoS."""
    store, _ = await stores.open()
    kept = message("a/b", b"one", 1, True, properties={"correlation": b"\x00\x01", "n": [1, "x"]},
                   sender="pub", timestamp=1234.5)
    store.set_retained(message("a/b", b"old", 0, True))
    store.set_retained(kept)
    store.set_retained(message("a/c", b"gone", 0, True))
    store.remove_retained("a/c")
    store.remove_retained("never/there")
    await durable(store)
    _, state = await stores.reopen()
    (restored,) = state.retained
    assert same_message(restored, kept) and restored.retain


@pytest_twisted.ensureDeferred
async def test_sessions_and_subscriptions_survive(stores):
    """[MQTT-3.1.2-4] a session is kept, with or without subscriptions."""
    store, _ = await stores.open()
    store.add_session("idle")
    store.add_session("busy")
    store.add_subscription("busy", "a/+", 0)
    store.add_subscription("busy", "a/+", 2)  # replaced [MQTT-3.8.4-3]
    store.add_subscription("busy", "b/#", 1)
    store.add_subscription("busy", "c", 1)
    store.remove_subscription("busy", "c")
    await durable(store)
    _, state = await stores.reopen()
    sessions = {s.client_id: s for s in state.sessions}
    assert set(sessions) == {"idle", "busy"}
    assert sessions["idle"].subscriptions == {}
    assert sessions["busy"].subscriptions == {"a/+": 2, "b/#": 1}


@pytest_twisted.ensureDeferred
async def test_mqtt_5_subscription_options_survive(stores):
    """Options (No Local, Retain As Published, Retain Handling) and a
    Subscription Identifier are kept with the subscription, in every store."""
    store, _ = await stores.open()
    store.add_session("five")
    store.add_subscription("five", "a/#", 1, 0x04 | 0x20, 7)
    store.add_subscription("five", "b", 0)
    await durable(store)
    _, state = await stores.reopen()
    (session,) = state.sessions
    assert session.subscriptions == {"a/#": 1, "b": 0}
    assert session.options == {"a/#": (0x24, 7)}


@pytest_twisted.ensureDeferred
async def test_session_expiry_survives(stores):
    """MQTT 5's Session Expiry Interval of a persistent session is kept, a
    number or never (inf); a session with none recorded (3.1.1, or set back
    to none) says None, and --session-expiry applies to it."""
    store, _ = await stores.open()
    for client_id in ("minute", "never", "plain", "reset"):
        store.add_session(client_id)
    store.set_session_expiry("minute", 90.0)
    store.set_session_expiry("minute", 60.0)
    store.set_session_expiry("never", math.inf)
    store.set_session_expiry("reset", 30.0)
    store.set_session_expiry("reset", None)
    await durable(store)
    _, state = await stores.reopen()
    assert {s.client_id: s.expiry for s in state.sessions} == {
        "minute": 60.0, "never": math.inf, "plain": None, "reset": None}


@pytest_twisted.ensureDeferred
async def test_the_shared_subscription_a_queued_message_was_taken_for_survives(stores):
    """So that after a restart another member of the group can have what
    this one holds (MQTT 5 section 4.8.2)."""
    store, _ = await stores.open()
    store.add_session("member")
    store.add_subscription("member", "$share/g/jobs/#", 1)
    store.enqueue("member", 1, message("jobs/1"), 1, False, "$share/g/jobs/#")
    store.enqueue("member", 2, message("jobs/2"), 1, False)
    store.enqueue("member", 3, message("jobs/3"), 1, False, "$share/g/jobs/#")
    store.dequeue("member", 3)
    await durable(store)
    _, state = await stores.reopen()
    (session,) = state.sessions
    assert [(m.seq, m.share) for m in session.messages] == [(1, "$share/g/jobs/#"), (2, None)]


@pytest_twisted.ensureDeferred
async def test_a_will_waiting_for_its_delay_survives(stores):
    """[§4.1] an MQTT 5 session's state includes its will and Will Delay
    Interval: kept with its properties until cleared, or the session ends."""
    store, _ = await stores.open()
    for client_id in ("waits", "cleared", "ended"):
        store.add_session(client_id)
    will = message("status/waits", b"offline", 1, True, sender="waits", timestamp=1000.0,
                   properties={"message_expiry_interval": 60, "content_type": "text/plain"})
    store.set_will("waits", message("status/waits", b"older", 0), 5)
    store.set_will("waits", will, 30)
    store.set_will("cleared", message("status/cleared", b"x"), 30)
    store.set_will("cleared", None, 0)
    store.set_will("ended", message("status/ended", b"x"), 30)
    store.remove_session("ended")
    store.set_will("nobody", message("status/nobody", b"x"), 30)  # no such session
    await durable(store)
    _, state = await stores.reopen()
    wills = {s.client_id: s.will for s in state.sessions}
    assert set(wills) == {"waits", "cleared"} and wills["cleared"] is None
    kept, delay = wills["waits"]
    assert delay == 30 and same_message(kept, will) and kept.retain
    assert kept.expires == 1060.0


@pytest_twisted.ensureDeferred
async def test_removing_a_session_removes_everything_it_had(stores):
    """[MQTT-3.1.2-6]"""
    store, _ = await stores.open()
    store.add_session("c")
    store.add_subscription("c", "#", 1)
    store.enqueue("c", 1, message(), 1, False)
    store.add_awaiting_pubrel("c", 7)
    store.set_session_expiry("c", 60.0)
    store.set_will("c", message("w"), 10)
    store.remove_session("c")
    store.add_session("c")  # a new session under the same id starts empty
    await durable(store)
    _, state = await stores.reopen()
    (session,) = state.sessions
    assert (session.subscriptions, session.messages, session.awaiting_pubrel,
            session.expiry, session.will) == ({}, [], set(), None, None)


@pytest_twisted.ensureDeferred
async def test_queued_messages_come_back_in_order(stores):
    """[MQTT-3.1.2-5] [MQTT-4.6.0-6]"""
    store, _ = await stores.open()
    store.add_session("c")
    sent = [message("t", str(i).encode(), qos=1 + i % 2, sender="p", timestamp=i) for i in range(5)]
    for seq, m in zip((3, 1, 5, 2, 4), sent):
        store.enqueue("c", seq, m, m.qos, seq == 5)
    store.dequeue("c", 2)
    await durable(store)
    _, state = await stores.reopen()
    (session,) = state.sessions
    assert [s.seq for s in session.messages] == [1, 3, 4, 5]
    by_seq = dict(zip((3, 1, 5, 2, 4), sent))
    for stored in session.messages:
        assert same_message(stored.message, by_seq[stored.seq])
        assert stored.qos == by_seq[stored.seq].qos
        assert stored.retained == (stored.seq == 5)
        assert (stored.packet_id, stored.state) == (None, None)


@pytest_twisted.ensureDeferred
async def test_a_message_for_several_sessions_is_kept_until_each_is_done(stores):
    store, _ = await stores.open()
    shared = message("fan/out", b"x" * 1000)
    for client_id in ("a", "b", "c"):
        store.add_session(client_id)
        store.enqueue(client_id, 1, shared, 1, False)
    store.dequeue("a", 1)
    await durable(store)
    store.dequeue("b", 1)  # in a later transaction
    await durable(store)
    _, state = await stores.reopen()
    messages = {s.client_id: s.messages for s in state.sessions}
    assert messages["a"] == messages["b"] == []
    assert [m.message.payload for m in messages["c"]] == [b"x" * 1000]
    store = stores.current
    store.dequeue("c", 1)
    await durable(store)
    _, state = await stores.reopen()
    assert all(s.messages == [] for s in state.sessions)


@pytest_twisted.ensureDeferred
async def test_messages_built_and_dropped_by_the_caller_keep_their_content(stores):
    """Nothing may depend on the caller keeping a Message alive."""
    store, _ = await stores.open()
    store.add_session("c")
    for seq in range(1, 301):
        store.enqueue("c", seq, message(payload=str(seq).encode()), 1, False)
    await durable(store)
    _, state = await stores.reopen()
    payloads = [m.message.payload for m in state.sessions[0].messages]
    assert payloads == [str(seq).encode() for seq in range(1, 301)]


@pytest_twisted.ensureDeferred
async def test_many_messages_forgotten_at_once(stores):
    store, _ = await stores.open()
    store.add_session("c")
    for seq in range(1, 301):
        store.enqueue("c", seq, message(payload=str(seq).encode()), 1, False)
    await durable(store)
    for seq in range(1, 301, 2):
        store.dequeue("c", seq)
    await durable(store)
    _, state = await stores.reopen()
    assert [m.message.payload for m in state.sessions[0].messages] == [
        str(seq).encode() for seq in range(2, 301, 2)]


@pytest_twisted.ensureDeferred
async def test_one_message_row_is_shared_by_the_sessions_it_waits_in(stores):
    store, _ = await stores.open()
    shared = message()
    for client_id in ("a", "b"):
        store.add_session(client_id)
        store.enqueue(client_id, 1, shared, 1, False)
    await durable(store)
    _, state = await stores.reopen()
    a, b = sorted(state.sessions, key=lambda s: s.client_id)
    assert a.messages[0].message is b.messages[0].message


@pytest_twisted.ensureDeferred
async def test_inflight_packet_ids_and_states_survive(stores):
    """[MQTT-4.4.0-1] ids and QoS 2 states, for re-sending after a restart."""
    store, _ = await stores.open()
    store.add_session("c")
    for seq in (1, 2, 3):
        store.enqueue("c", seq, message(qos=2), 2, False)
    store.set_inflight("c", 1, 10, 2)
    store.set_inflight("c", 2, 11, 2)
    store.set_inflight("c", 1, 10, PUBCOMP_STATE)
    store.set_inflight("c", 99, 12, 2)  # nothing there: ignored
    await durable(store)
    _, state = await stores.reopen()
    (session,) = state.sessions
    assert [(m.seq, m.packet_id, m.state) for m in session.messages] == [
        (1, 10, PUBCOMP_STATE), (2, 11, 2), (3, None, None)]


@pytest_twisted.ensureDeferred
async def test_incoming_qos2_ids_survive(stores):
    """[MQTT-4.3.3-2] ids answered with PUBREC and still awaiting PUBREL."""
    store, _ = await stores.open()
    store.add_session("c")
    for packet_id in (1, 2, 3, 2):
        store.add_awaiting_pubrel("c", packet_id)
    store.remove_awaiting_pubrel("c", 1)
    store.remove_awaiting_pubrel("c", 42)
    await durable(store)
    _, state = await stores.reopen()
    assert state.sessions[0].awaiting_pubrel == {2, 3}


@pytest_twisted.ensureDeferred
async def test_writes_apply_in_the_order_they_were_made(stores):
    store, _ = await stores.open()
    store.add_session("c")
    store.enqueue("c", 1, message(payload=b"first"), 1, False)
    store.dequeue("c", 1)
    store.enqueue("c", 1, message(payload=b"again"), 1, False)
    store.remove_subscription("c", "x")
    store.add_subscription("c", "x", 1)
    await durable(store)
    store.remove_session("c")
    store.add_session("c")
    store.add_subscription("c", "y", 0)
    await durable(store)
    _, state = await stores.reopen()
    (session,) = state.sessions
    assert session.subscriptions == {"y": 0} and session.messages == []


@pytest_twisted.ensureDeferred
async def test_close_keeps_what_was_written_and_nothing_after(stores):
    store, _ = await stores.open()
    store.set_retained(message("before", qos=0, retain=True))
    closed = store.close()  # no sync: closing flushes
    store.set_retained(message("after", qos=0, retain=True))
    await closed
    with pytest.raises(StoreClosed):
        await store.sync()
    _, state = await stores.open()
    assert [m.topic for m in state.retained] == ["before"]


@pytest_twisted.ensureDeferred
async def test_sync_is_none_when_nothing_waits(stores):
    store, _ = await stores.open()
    assert store.sync() is None
    store.add_session("c")
    await durable(store)
    assert store.sync() is None
