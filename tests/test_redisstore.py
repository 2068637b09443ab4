"""The Redis store against a real redis-server: what only Redis does.

The `IStore` contract itself runs against it in tests/test_store.py. Here:
commits wait for Redis's answer, Redis going away and coming back, start-up
without Redis, and sessions moving between two nodes.
"""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from reactorapp.cluster import redisstore
from reactorapp.cluster.encoding import pack_entry, pack_message, unpack_entry, unpack_message
from reactorapp.cluster.redisstore import RedisStore, SessionMoved
from reactorapp.hub.interfaces import ISessionLoader
from reactorapp.hub.message import Message
from reactorapp.store.interfaces import StoreClosed, StoreError
from tests.redisserver import free_port, redis_server

TIMEOUT = 20.0
_prefixes = itertools.count()


@pytest.fixture
def prefix():
    return f"t{next(_prefixes)}"


def reactor():
    from twisted.internet import reactor

    return reactor


def connect(server, prefix, node="a") -> RedisStore:
    return RedisStore(reactor(), host="127.0.0.1", port=server.port, prefix=prefix,
                              node=node)


async def bounded(d: Deferred):
    return await d.addTimeout(TIMEOUT, reactor())


async def until(condition) -> None:
    """Wait, looking every 20 ms, for ``condition()``; at most TIMEOUT."""
    for _ in range(int(TIMEOUT / 0.02)):
        if condition():
            return
        await task.deferLater(reactor(), 0.02, lambda: None)
    raise AssertionError(f"{condition} never held")


def message(payload=b"p", qos=1, **kw) -> Message:
    return Message("t/x", payload, qos, **kw)


def test_messages_pack_small_and_come_back_whole():
    m = Message("sensors/a1", b"hello world", 2, True, {"user": [("k", "v")], "cd": b"\x00"},
                "pub-1", 1234.25)
    back = unpack_message(pack_message(m))
    assert (back.topic, back.payload, back.qos, back.retain, back.properties, back.sender,
            back.timestamp) == (m.topic, m.payload, 2, True, m.properties, "pub-1", 1234.25)
    plain = Message("sensors/a1", b"hello world", 1)
    assert len(pack_message(plain)) < 45
    assert unpack_message(pack_message(Message("t", b"", 0, sender=""))).sender == ""


@pytest_twisted.ensureDeferred
async def test_a_commit_fires_once_redis_has_answered(redis, prefix):
    store = connect(redis, prefix)
    store.load()
    assert verifyObject(ISessionLoader, store)
    store.add_session("c")
    store.enqueue("c", 1, message(), 1, False)
    commit = store.pending_commit()
    assert commit is not None and not commit.done  # nothing is answered in the same turn
    await bounded(commit.deferred())
    assert store.pending_commit() is None
    other = connect(redis, prefix)
    state = other.load()
    assert [m.message.payload for m in state.sessions[0].messages] == [b"p"]
    await store.close()
    await other.close()


@pytest_twisted.ensureDeferred
async def test_long_batches_are_cut_and_keep_their_order(redis, prefix, monkeypatch):
    monkeypatch.setattr(redisstore, "MAX_ARGS", 10)
    store = connect(redis, prefix)
    store.load()
    store.add_session("c")
    for seq in range(1, 41):
        store.enqueue("c", seq, message(str(seq).encode()), 1, False)
    for seq in range(1, 41, 2):
        store.dequeue("c", seq)
    await bounded(store.sync())
    store2 = connect(redis, prefix)
    state = store2.load()
    assert [m.seq for m in state.sessions[0].messages] == list(range(2, 41, 2))
    await store.close()
    await store2.close()


@pytest_twisted.ensureDeferred
async def test_start_up_without_redis_fails_with_one_sentence(redis, prefix):
    store = RedisStore(reactor(), port=free_port(), prefix=prefix)
    with pytest.raises(StoreError, match=r"^cannot reach Redis at 127\.0\.0\.1:\d+: .*\.$"):
        store.load()
    await store.close()
    store = RedisStore(reactor(), port=redis.port, db=100_000, prefix=prefix)
    with pytest.raises(StoreError, match="^cannot reach Redis at .*DB index is out of range"):
        store.load()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_nothing_is_acknowledged_while_redis_is_away_and_nothing_is_lost(prefix):
    """Redis killed: the commit waits, /readyz would say so; Redis back (its
    append-only file): the writes are sent again and the commit fires."""
    with redis_server() as server:
        store = connect(server, prefix)
        store.load()
        store.add_session("c")
        await bounded(store.sync())
        server.stop(kill=True)
        store.enqueue("c", 1, message(b"while away"), 1, False)
        commit = store.pending_commit()
        await until(lambda: not store.writable)
        store.enqueue("c", 2, message(b"later"), 1, False)
        later = store.pending_commit()
        assert not commit.done and not later.done and store.write_failures >= 1
        server.start()
        await bounded(later.deferred())
        assert commit.done and commit.failure is None and store.writable
        other = connect(server, prefix)
        state = other.load()
        assert [m.message.payload for m in state.sessions[0].messages] == [
            b"while away", b"later"]
        await store.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_closing_while_redis_is_away_fails_what_waits(prefix):
    with redis_server() as server:
        store = connect(server, prefix)
        store.connect_timeout = 0.5
        store.load()
        server.stop(kill=True)
        store.set_retained(message(retain=True))
        commit = store.pending_commit()
        await until(lambda: not store.writable)
        await bounded(store.close())
        assert commit.done and commit.failure.check(StoreClosed)


@pytest_twisted.ensureDeferred
async def test_a_session_moves_to_the_node_that_loads_it(redis, prefix):
    """Node b takes the session of client c over from node a, with its
    subscriptions, queued and in-flight messages and incoming QoS 2 ids;
    a's late writes for it are refused, and what waited for an incoming
    QoS 2 id fails (a late queued message goes to b: see the next test)."""
    a, b = connect(redis, prefix, "a"), connect(redis, prefix, "b")
    a.load()
    assert (b.load()).sessions == []
    a.add_session("c")
    a.add_subscription("c", "t/#", 1)
    for seq in (1, 2, 3):
        a.enqueue("c", seq, message(str(seq).encode(), qos=2), 2, False)
    a.set_inflight("c", 1, 17, 2)
    a.dequeue("c", 2)
    a.add_awaiting_pubrel("c", 5)
    a.add_session("stays")
    await bounded(a.sync())

    assert await bounded(b.load_session("nobody")) is None
    moved = await bounded(b.load_session("c"))
    assert moved.subscriptions == {"t/#": 1} and moved.awaiting_pubrel == {5}
    assert [(m.seq, m.message.payload, m.packet_id) for m in moved.messages] == [
        (1, b"1", 17), (3, b"3", None)]

    a.add_awaiting_pubrel("c", 6)  # a has not let go yet
    a.add_subscription("stays", "x", 0)
    late = a.pending_commit()
    with pytest.raises(SessionMoved, match="c"):
        await bounded(late.deferred())
    a.remove_session("c")  # a drops its copy: not b's
    await bounded(a.sync())
    b.enqueue("c", 4, message(b"on b"), 1, False)
    await bounded(b.sync())

    b2 = connect(redis, prefix, "b")  # b restarts: it holds c now, a holds "stays"
    (again,) = (b2.load()).sessions
    assert again.client_id == "c"
    assert [m.message.payload for m in again.messages] == [b"1", b"3", b"on b"]
    a2 = connect(redis, prefix, "a")
    (kept,) = (a2.load()).sessions
    assert (kept.client_id, kept.subscriptions) == ("stays", {"x": 0})
    for store in (a, b, b2, a2):
        await store.close()


async def stream(store, node):
    """The entries of ``node``'s stream, as (client id, queue entry)."""
    entries = await bounded(store.read(b"XRANGE", redisstore.STREAMS + node.encode(),
                                       b"-", b"+"))
    return [(fields[1].decode(), unpack_entry(fields[3])) for _, fields in entries]


@pytest_twisted.ensureDeferred
async def test_a_late_queued_message_goes_to_the_stream_of_the_new_holder(redis, prefix):
    """A message node a queues for a session that moved to node b is not
    refused: the same script adds it to b's stream, for that session alone,
    and what waited for the write is placed. Forwarded by a node that holds
    the session without having it in memory, it joins the session's queue
    in Redis; for a session nobody holds (it ended) it is dropped."""
    a_name, b_name = f"{prefix}-a", f"{prefix}-b"
    a, b = connect(redis, prefix, a_name), connect(redis, prefix, b_name)
    a.load()
    b.load()
    a.add_session("c")
    a.add_subscription("c", "t/#", 1)
    a.enqueue("c", 1, message(b"before"), 1, False)
    await bounded(a.sync())
    await bounded(b.load_session("c"))

    late = message(b"late", qos=2, properties={"content_type": "text/plain"})
    a.enqueue("c", 2, late, 1, False)
    a.set_inflight("c", 2, 9, 1)  # skipped: b has no such entry
    await bounded(a.pending_commit().deferred())  # no SessionMoved
    ((client, (forwarded, qos, retained)),) = await stream(a, b_name)
    assert (client, forwarded.payload, forwarded.properties, qos, retained) == (
        "c", b"late", {"content_type": "text/plain"}, 1, False)
    assert await stream(a, a_name) == []

    b.forward("c", pack_entry(message(b"kept"), 1, False))
    a.remove_session("gone")
    a.forward("gone", pack_entry(message(b"nobody"), 1, False))
    written = [b.pending_commit().deferred(), a.pending_commit().deferred()]
    for d in written:
        await bounded(d)
    assert await stream(a, a_name) == [] and len(await stream(a, b_name)) == 1
    for store in (a, b):
        await store.close()
    b = connect(redis, prefix, b_name)
    (stored,) = b.load().sessions
    assert [(m.seq, m.message.payload) for m in stored.messages] == [(1, b"before"), (2, b"kept")]
    await b.close()
