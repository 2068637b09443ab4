"""The cluster's parts without Redis: frames, the URL, the outbox and the
inbox on a `Clock`, with a link that records commands."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from reactorapp.cluster import frames
from reactorapp.cluster.hub import ClusterHub
from reactorapp.cluster.inbox import Inbox
from reactorapp.cluster.outbox import ADD_ONCE, ClusterStats, Outbox, RemoteNode, seen_key
from reactorapp.cluster.url import RedisURL, parse_url
from reactorapp.config import ConfigError
from reactorapp.hub.flow import IInput
from reactorapp.hub.message import Message


# -- frames --------------------------------------------------------------------

def test_frames_round_trip_with_properties_and_keep_their_order():
    one = Message("a/b", b"\x00\xffpayload", 2, True,
                  {"content_type": "x", "correlation_data": b"\x01\x02",
                   "user_property": [("k", "v"), ("k", "w")]}, timestamp=12.5)
    two = Message("c", b"", 0)
    data = frames.encode(one) + frames.encode(two)
    got = frames.decode(data)
    assert [(m.topic, m.payload, m.qos, m.retain, m.properties, m.timestamp) for m in got] == [
        ("a/b", b"\x00\xffpayload", 2, True, one.properties, 12.5),
        ("c", b"", 0, False, None, two.timestamp)]


def test_a_message_is_encoded_once_for_all_nodes():
    message = Message("t", b"x", 1)
    assert frames.encode(message) is frames.encode(message)


def test_a_cut_frame_is_refused():
    data = frames.encode(Message("topic", b"payload"))
    with pytest.raises(frames.BadFrame):
        frames.decode(data[:-1])


# -- the URL ---------------------------------------------------------------------

@pytest.mark.parametrize("text, url", [
    ("redis://h", RedisURL("h")),
    ("redis://h:7000/3", RedisURL("h", 7000, 3)),
    ("redis://:s%40cret@h/1", RedisURL("h", 6379, 1, None, "s@cret")),
    ("redis://me:pw@h", RedisURL("h", 6379, 0, "me", "pw")),
    ("rediss://h:6380", RedisURL("h", 6380, 0, tls=True)),
])
def test_cluster_urls(text, url):
    assert parse_url(text) == url


@pytest.mark.parametrize("text, says", [
    ("http://h", "must look like redis://HOST:PORT/DB"),
    ("redis://h/x", "the database must be a number"),
    ("redis://h:99999", "is not a Redis URL"),
    ("redis://h?ssl=1", "options after '?'"),
])
def test_bad_cluster_urls_say_why(text, says):
    with pytest.raises(ConfigError, match=says):
        parse_url(text)


def test_a_password_stays_out_of_the_text_of_a_url_and_its_errors():
    assert "pw" not in str(parse_url("redis://:pw@h"))
    with pytest.raises(ConfigError) as e:
        parse_url("redis://:pw@h/x")
    assert "pw" not in str(e.value)


# -- the outbox --------------------------------------------------------------------

class FakeLink:
    """Records commands; each answer is a Deferred the test fires."""

    def __init__(self) -> None:
        self.connected = True
        self.paused = False
        self.sent: list = []

    def command(self, *args):
        d = Deferred()
        self.sent.append((args, d))
        return d

    blocking_command = command

    def flush(self) -> None:
        self.flushed = len(self.sent)


@implementer(IInput)
class Publisher:
    def __init__(self) -> None:
        self.holds = set()

    def hold(self, by):
        self.holds.add(by)

    def release(self, by):
        self.holds.discard(by)


def outbox_and_node(clock=None):
    clock = clock or Clock()
    hub = ClusterHub(clock)
    link = FakeLink()
    outbox = Outbox(hub, link, clock, ClusterStats(), slow_timeout=5.0)
    node = RemoteNode("b", outbox)
    hub.add_remote(node, "t/#")
    return clock, hub, link, outbox, node


def test_a_turn_of_messages_is_one_xadd_and_qos1_waits_for_redis():
    clock, hub, link, outbox, node = outbox_and_node()
    first = hub.route(Message("t/1", b"a", 1))
    second = hub.route(Message("t/2", b"b", 0))
    assert second is None and not first.done
    clock.advance(0)
    [(args, answer)] = link.sent
    assert args[:5] == ("EVAL", ADD_ONCE, 2, "reactorapp:stream:b", "reactorapp:stream:b:seen")
    assert [m.payload for m in frames.decode(args[7])] == [b"a", b"b"]
    answer.callback(b"1-0")
    assert first.done and first.failure is None


def test_a_message_from_another_node_is_never_sent_on():
    clock, hub, link, outbox, node = outbox_and_node()
    hub.route_incoming(Message("t/1", b"a", 1))
    clock.advance(0)
    assert link.sent == []


def test_without_redis_qos0_is_dropped_and_qos1_waits_then_goes():
    clock, hub, link, outbox, node = outbox_and_node()
    link.connected = False
    assert hub.route(Message("t/0", b"zero", 0)) is None
    commit = hub.route(Message("t/1", b"one", 1))
    clock.advance(0)
    assert link.sent == [] and outbox.stats.dropped == 1 and not commit.done
    link.connected = True
    outbox.connected()
    [(args, answer)] = link.sent
    assert [m.payload for m in frames.decode(args[7])] == [b"one"]
    answer.callback(b"1-0")
    assert commit.done


def test_a_batch_lost_with_the_connection_is_sent_again():
    from txredisapi import ConnectionError as RedisConnectionError

    clock, hub, link, outbox, node = outbox_and_node()
    commit = hub.route(Message("t/1", b"one", 1))
    clock.advance(0)
    [(args, answer)] = link.sent
    link.connected = False
    answer.errback(RedisConnectionError("Lost connection"))
    assert not commit.done
    link.connected = True
    outbox.connected()
    assert link.sent[1][0] == args
    link.sent[1][1].callback(b"2-0")
    assert commit.done and commit.failure is None


def test_a_node_that_is_behind_holds_back_the_publishers_feeding_it():
    clock, hub, link, outbox, node = outbox_and_node()
    publisher = Publisher()
    outbox.congest(node)
    hub.flow.current = publisher
    hub.route(Message("t/1", b"x", 1))
    hub.flow.current = None
    assert publisher.holds == {node.congestion}
    outbox.uncongest(node)
    assert publisher.holds == set()


def test_retained_messages_go_to_every_node_once():
    clock, hub, link, outbox, node = outbox_and_node()
    other = RemoteNode("c", outbox)

    class Node:
        def broadcast_retained(self, message):
            return outbox.broadcast([node, other], message)

        def filter_added(self, f):
            pass

    hub.node = Node()
    hub.route(Message("t/r", b"kept", 1, retain=True))
    clock.advance(0)
    streams = sorted(args[3] for args, _ in link.sent)
    assert streams == ["reactorapp:stream:b", "reactorapp:stream:c"]


def test_local_filters_are_announced_once_each():
    hub = ClusterHub(Clock())
    said = []

    class Node:
        def filter_added(self, f):
            said.append(("+", f))

        def filter_removed(self, f):
            said.append(("-", f))

    hub.node = Node()
    one, two = object(), object()
    hub.subscribe(one, "a/#", 1)
    hub.subscribe(two, "a/#", 0)
    hub.subscribe(two, "$share/g/a/#", 0)
    hub.subscribe(one, "$share/g/a/#", 0)
    hub.unsubscribe(one, "a/#")
    hub.unsubscribe(one, "$share/g/a/#")
    hub.unsubscribe_all(two, ["a/#", "$share/g/a/#"])
    # A shared subscription is announced whole: other nodes count this one
    # as a member of the group, not as a subscriber of "a/#".
    assert said == [("+", "a/#"), ("+", "$share/g/a/#"), ("-", "a/#"), ("-", "$share/g/a/#")]


# -- the inbox ------------------------------------------------------------------------

def test_a_held_inbox_stops_reading_and_says_it_is_behind():
    hub = ClusterHub(Clock())
    reader, commands = FakeLink(), FakeLink()
    said = []
    inbox = Inbox(hub, reader, commands, "reactorapp:stream:a", ClusterStats(),
                  on_behind=said.append)
    inbox.connected()
    [(args, answer)] = reader.sent
    assert args[:2] == ("XREAD", "COUNT")
    congestion = object()

    class Slow:
        def deliver(self, message, qos, retained):
            hub.flow.current.hold(congestion)

    hub.subscribe(Slow(), "t", 0)
    entry = frames.encode(Message("t", b"x"))
    answer.callback([[b"reactorapp:stream:a", [[b"1-0", [b"m", entry]]]]])
    assert said == [True] and len(reader.sent) == 1  # no new XREAD while held
    assert commands.sent[0][0] == ("XDEL", "reactorapp:stream:a", b"1-0")
    inbox.release(congestion)
    assert said == [True, False] and len(reader.sent) == 2
    assert reader.sent[1][0][-1] == b"1-0"


# -- the link ------------------------------------------------------------------------------

def test_a_redis_that_stops_answering_is_dropped_after_the_reply_timeout():
    """A command with no reply within ``reply_timeout`` (on the injected
    clock) fails as a lost connection, which is then closed and made again."""
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from txredisapi import ConnectionError as RedisConnectionError

    from reactorapp.cluster.link import RedisLink

    clock = MemoryReactorClock()
    ready, lost = [], []
    link = RedisLink(RedisURL("127.0.0.1"), clock, "commands", on_ready=ready.append,
                     on_lost=lost.append, reply_timeout=10.0)
    protocol = link._build()
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(0)
    assert ready == [link] and link.connected
    answer = link.command("PING")
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"
    clock.advance(9)
    assert not answer.called
    clock.advance(1)
    assert isinstance(answer.result.value, RedisConnectionError)
    answer.addErrback(lambda f: None)
    assert transport.disconnecting


def test_a_webhook_rule_takes_only_what_was_published_on_its_node():
    """Every node serves each webhook rule for what was published on it: a
    message from another node (which its own rule took) is not sent again."""
    hub = ClusterHub(Clock())

    class Rule:
        cluster_local = True

        def __init__(self):
            self.got = []

        def deliver(self, message, qos, retained):
            self.got.append(message.payload)

    rule = Rule()
    hub.subscribe(rule, "t/#", 1)
    hub.route(Message("t/1", b"here", 1))
    hub.route_incoming(Message("t/1", b"from another node", 1))
    assert rule.got == [b"here"]
    assert hub.local_filters() == []  # not announced to other nodes
    hub.unsubscribe(rule, "t/#")
    hub.route(Message("t/1", b"after", 1))
    assert rule.got == [b"here"]


def test_other_nodes_filters_are_not_counted_as_subscriptions():
    clock, hub, link, outbox, node = outbox_and_node()
    hub.subscribe(object(), "mine", 0)
    hub.add_remote(node, "theirs")
    assert hub.subscription_count == 1
    hub.remove_remote(node, ["theirs", "t/#"])
    assert hub.subscription_count == 1


# -- messages for a session that moved ---------------------------------------------


class Sessions:
    """What a node's store does with a message for a session it does not
    have: a read (answered when the test says) and a forward."""

    def __init__(self) -> None:
        self.reads: list = []
        self.forwarded: list = []
        self.commit = None

    def read(self, *command):
        d = Deferred()
        self.reads.append((command, d))
        return d

    def forward(self, client_id, entry):
        from reactorapp.hub.commit import Commit

        self.forwarded.append((client_id, entry))
        self.commit = Commit()

    def pending_commit(self):
        return self.commit


class Kept:
    def __init__(self) -> None:
        self.got = []

    def deliver(self, message, qos, retained):
        self.got.append((message.payload, qos, retained))


def test_an_entry_for_one_session_goes_to_it_alone_or_on_to_its_holder():
    """Entries the store's script added for a session that moved here
    (`scripts.WRITE`): to that session only, not to the others matching;
    for a session not here, looked for again once the store's connection
    answered a read (a load of it sent before is handled then), then sent
    on; each entry deleted once placed."""
    from reactorapp.cluster.encoding import pack_entry

    store = Sessions()
    hub = ClusterHub(Clock(), store=store)
    here, other, late = Kept(), Kept(), Kept()
    hub.add_session("c", here)
    hub.subscribe(other, "t/#", 1)
    reader, commands = FakeLink(), FakeLink()
    stats = ClusterStats()
    inbox = Inbox(hub, reader, commands, "reactorapp:stream:a", stats)
    inbox.connected()
    entry = pack_entry(Message("t/x", b"for c", 1, properties={"content_type": "a/b"}), 1, False)
    reader.sent[0][1].callback([[b"reactorapp:stream:a", [
        [b"1-0", [b"c", b"c", b"e", entry]],
        [b"2-0", [b"c", b"gone", b"e", entry]],
        [b"3-0", [b"c", b"soon", b"e", entry]],
        [b"4-0", [b"c", b"x", b"e", b"cut"]]]]])
    assert here.got == [(b"for c", 1, False)] and other.got == []
    assert stats.received == 3 and commands.sent == []  # 2-0 and 3-0 wait
    (_, gone), (_, soon) = store.reads
    hub.add_session("soon", late)  # its load was answered before the read
    soon.callback(b"PONG")
    assert late.got == [(b"for c", 1, False)] and store.forwarded == []
    gone.callback(b"PONG")
    assert store.forwarded == [("gone", entry)] and commands.sent == []
    store.commit.fire()  # the forward is in Redis
    assert commands.sent[0][0] == ("XDEL", "reactorapp:stream:a", b"1-0", b"2-0", b"3-0",
                                   b"4-0")


class Detached:
    """A persistent session whose client is away."""

    persistent = True
    connection = None

    def __init__(self) -> None:
        self.subscriptions = {"t/#": 1, "$share/g/t/#": 1}

    def deliver(self, message, qos, retained):
        raise AssertionError("let go: not delivered to any more")


def test_a_session_let_go_still_sends_on_what_other_nodes_sent_for_it():
    """Node a lets the session of c go (it connected to b). Messages other
    nodes had put in a's stream for it, read only afterwards, go on to c's
    holder through the store; its filters are no longer announced, and
    messages published on a are left to routing. Once a has read its stream
    as far as it went one expiry after the move, nothing more goes on."""
    from reactorapp.cluster.encoding import unpack_entry
    from twisted.internet.testing import MemoryReactorClock

    from reactorapp.cluster.node import ClusterNode

    clock = MemoryReactorClock()
    store = Sessions()
    hub = ClusterHub(clock, store=store)
    node = ClusterNode(hub, RedisURL("127.0.0.1"), "a", clock, expiry=5.0)
    node.commands = FakeLink()
    inbox = node.inbox
    inbox.reader, inbox.commands = FakeLink(), FakeLink()
    session = Detached()
    hub.add_session("c", session)
    hub.subscribe(session, "t/#", 1)
    node._taken_over("c", "b")
    assert hub.get_session("c") is None and hub.local_filters() == []
    assert hub.subscription_count == 0

    inbox.connected()

    def read(entry_id, payload, qos=1):
        entry = frames.encode(Message("t/x", payload, qos))
        inbox.reader.sent[-1][1].callback([[b"reactorapp:stream:a", [[entry_id, [b"m", entry]]]]])

    read(b"1-0", b"before")
    hub.route(Message("t/x", b"published on a", 1))
    [(client, entry)] = store.forwarded
    message, qos, retained = unpack_entry(entry)
    assert (client, message.payload, qos, retained) == ("c", b"before", 1, False)

    clock.advance(5.0)
    (args, last), = [(a, d) for a, d in node.commands.sent if a[0] == "XREVRANGE"]
    assert args[1] == "reactorapp:stream:a"
    last.callback([[b"2-0", [b"m", b""]]])
    read(b"2-0", b"late")
    read(b"3-0", b"after")
    assert [unpack_entry(e)[0].payload for _, e in store.forwarded] == [b"before", b"late"]


def test_a_batch_sent_again_is_added_to_the_stream_once():
    """A batch whose XADD Redis ran but whose answer was lost with the
    connection is sent again: the stream keeps one copy, so a QoS 2 message
    crosses nodes once. Another sender (a restarted node) starts afresh."""
    import socket

    from tests.redisserver import redis_server

    def call(sock, *args):
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            arg = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        sock.sendall(b"".join(parts))
        reply = sock.recv(4096)
        assert reply[:1] == b":", reply  # every call here answers an integer
        return int(reply[1:reply.index(b"\r\n")])

    stream = "reactorapp:stream:b"
    with redis_server() as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        add = lambda sender, seq, data: call(  # noqa: E731
            sock, "EVAL", ADD_ONCE, 2, stream, seen_key(stream), sender, seq, data)
        assert add("a", 0, b"first") == 1
        assert add("a", 0, b"first") == 0  # the same batch again
        assert add("a", 1, b"second") == 1
        assert add("a", 1, b"second") == 0
        assert add("restarted", 0, b"third") == 1
        assert call(sock, "XLEN", stream) == 3


def test_a_new_batch_waits_behind_the_ones_to_send_again():
    """Redis is back but the outbox has not yet sent again what waited: a
    batch made meanwhile goes after them, never before (each stream sees a
    sender's numbers in order)."""
    clock, hub, link, outbox, node = outbox_and_node()
    link.connected = False
    hub.route(Message("t/1", b"one", 1))
    clock.advance(0)
    link.connected = True
    hub.route(Message("t/2", b"two", 1))
    clock.advance(0)
    assert link.sent == []
    outbox.connected()
    sent = [[m.payload for m in frames.decode(args[7])] for args, _ in link.sent]
    assert sent == [[b"one"], [b"two"]]
    assert link.sent[0][0][6] < link.sent[1][0][6]


class Heard:
    """A local subscriber that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list = []

    def deliver(self, message, qos, retained):
        self.messages.append(message)


def node_with_will_waiting():
    """Node a, with the detached session of c (expiry 60 s) whose will waits
    30 s, and a local subscriber to wills."""
    from twisted.internet.testing import MemoryReactorClock

    from reactorapp.cluster.node import ClusterNode
    from reactorapp.mqtt.session import MQTTSettings, Session

    clock = MemoryReactorClock()
    hub = ClusterHub(clock)
    node = ClusterNode(hub, RedisURL("127.0.0.1"), "a", clock, expiry=5.0)
    node.commands = FakeLink()
    heard = Heard()
    hub.subscribe(heard, "wills/#", 0)
    session = Session("c", True, hub, MQTTSettings())
    hub.add_session("c", session)
    session.set_expiry(60.0, chosen=True)
    session.detach()
    session.delay_will(Message("wills/c", b"gone"), 30)
    return clock, hub, node, heard


def test_a_session_let_go_leaves_its_expiry_and_waiting_will_to_the_other_node():
    """[MQTT-3.1.3-9] The client of a detached session with a will waiting
    for its delay connected to node b: b holds the session and its will now,
    so a neither sends that will when the delay ends nor ends the session."""
    clock, hub, node, heard = node_with_will_waiting()
    node._taken_over("c", "b")
    clock.advance(120)
    assert heard.messages == [] and hub.get_session("c") is None
    assert hub.stats.sessions_expired == 0


def test_a_session_ended_by_a_clean_start_on_another_node_sends_its_waiting_will():
    """[MQTT-3.1.2-4] [MQTT-3.1.3-9] With Clean Start on node b the session
    on a ends: its waiting will goes out at once, and once only."""
    clock, hub, node, heard = node_with_will_waiting()
    node._taken_over("c", "b", clean=True)
    assert [m.payload for m in heard.messages] == [b"gone"]
    clock.advance(120)
    assert len(heard.messages) == 1 and hub.stats.sessions_expired == 0


def test_a_claim_tells_the_node_that_had_the_client_whether_its_session_ended():
    """The takeover notice carries Clean Start, and the node it is for acts
    on it: the session ends there and its waiting will goes out."""
    import json

    clock, hub, node, heard = node_with_will_waiting()
    node.claim("c", clean=True)
    (args, answer), = node.commands.sent
    assert args[:3] == ("SET", "reactorapp:client:c", "a")
    assert node.commands.flushed == 1  # sent before the CONNACK is
    answer.callback(b"b")  # node b had it
    (args, _), = node.commands.sent[1:]
    notice = json.loads(args[2])
    assert (notice["k"], notice["to"], notice["c"], notice["clean"]) == (
        "takeover", "b", "c", True)
    node._notice(b"notices", json.dumps(dict(notice, to="a", n="b")))
    assert [m.payload for m in heard.messages] == [b"gone"]
