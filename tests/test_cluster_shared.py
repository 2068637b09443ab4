"""Shared subscriptions across nodes, without Redis: two `ClusterHub`s
whose outboxes write to recording links, and what one writes is routed by
the other as its inbox would. Each group gets each message once in the
whole cluster; plain subscribers on every node get every message."""

from __future__ import annotations

from twisted.internet.task import Clock

from reactorapp.cluster import frames
from reactorapp.cluster.adopt import AdoptedSessions
from reactorapp.cluster.hub import ClusterHub
from reactorapp.cluster.outbox import ClusterStats, Outbox, RemoteNode
from reactorapp.hub.message import Message
from reactorapp.hub.shared import AWAY, READY

from tests.test_cluster_units import FakeLink, Publisher

GROUP = "$share/g/t/#"


class Member:
    """A subscriber that records payloads, as a plain subscriber and as a
    member of a shared subscription."""

    def __init__(self, name: str, state: int = READY) -> None:
        self.name = name
        self.state = state
        self.got: list[bytes] = []

    def deliver(self, message, qos, retained):
        self.got.append(message.payload)

    def deliver_shared(self, message, qos, share_filter):
        self.got.append(message.payload)

    def share_state(self, qos):
        return self.state

    def __repr__(self) -> str:
        return f"Member({self.name!r})"


class Side:
    """One node: its hub, its outbox, and the other node as a `RemoteNode`."""

    def __init__(self, clock: Clock, other: str) -> None:
        self.hub = ClusterHub(clock)
        self.link = FakeLink()
        self.outbox = Outbox(self.hub, self.link, clock, ClusterStats())
        self.remote = RemoteNode(other, self.outbox)

    def announce(self, *filters: str) -> None:
        """The other node said it has subscribers for ``filters``."""
        for topic_filter in filters:
            self.hub.add_remote(self.remote, topic_filter)

    def sent(self) -> list:
        """The (message, groups) this node wrote to the other's stream so far."""
        entries = []
        for args, answer in self.link.sent:
            entries.extend(frames.decode_entry(args[-1]))  # the frames are the last argument
            if not answer.called:
                answer.callback(b"1-0")
        self.link.sent = []
        return entries


def two_nodes():
    clock = Clock()
    return clock, Side(clock, "b"), Side(clock, "a")


def carry(clock: Clock, source: Side, target: Side) -> list:
    """Flush ``source``'s outbox and route what it wrote on ``target``."""
    clock.advance(0)
    entries = source.sent()
    for message, groups in entries:
        target.hub.route_incoming(message, groups)
    clock.advance(0)
    return entries


def test_frames_name_the_groups_a_node_was_chosen_for():
    message = Message("t/1", b"x", 1, properties={"content_type": "text/plain"})
    plain = frames.encode(message)
    chosen = frames.with_groups(plain, ["$share/g/t/#", "$share/h/+/1"])
    data = plain + chosen
    [(first, none), (second, groups)] = frames.decode_entry(data)
    assert none == () and groups == ("$share/g/t/#", "$share/h/+/1")
    assert (second.topic, second.payload, second.qos, second.properties) == (
        "t/1", b"x", 1, {"content_type": "text/plain"})
    assert [m.payload for m in frames.decode(data)] == [b"x", b"x"]
    assert frames.encode(message) is plain  # the cached frame is left as it was


def test_another_node_is_one_member_of_the_group_in_turn():
    clock, a, b = two_nodes()
    local = Member("a1")
    a.hub.subscribe(local, GROUP, 1)
    a.announce(GROUP)
    for n in range(4):
        a.hub.route(Message(f"t/{n}", b"%d" % n, 1))
    clock.advance(0)
    entries = a.sent()
    assert local.got == [b"0", b"2"]
    assert [(m.payload, groups) for m, groups in entries] == [(b"1", (GROUP,)), (b"3", (GROUP,))]


def test_each_group_gets_each_message_once_across_two_nodes():
    clock, a, b = two_nodes()
    a1, a2, b1, b2 = Member("a1"), Member("a2"), Member("b1"), Member("b2")
    plain_a, plain_b = Member("plain-a"), Member("plain-b")
    for member in (a1, a2):
        a.hub.subscribe(member, GROUP, 1)
    for member in (b1, b2):
        b.hub.subscribe(member, GROUP, 1)
    a.hub.subscribe(plain_a, "t/#", 1)
    b.hub.subscribe(plain_b, "t/#", 1)
    a.announce("t/#", GROUP)
    b.announce("t/#", GROUP)
    sent = [b"%d" % n for n in range(12)]
    for payload in sent[:6]:
        a.hub.route(Message("t/x", payload, 1))
    carry(clock, a, b)
    for payload in sent[6:]:
        b.hub.route(Message("t/x", payload, 1))
    carry(clock, b, a)
    shared = a1.got + a2.got + b1.got + b2.got
    assert sorted(shared) == sorted(sent)
    assert plain_a.got == sent and plain_b.got == sent
    assert a1.got and a2.got and b1.got and b2.got  # every member had a turn


def test_a_node_sent_a_message_for_its_plain_subscribers_keeps_it_from_its_group():
    clock, a, b = two_nodes()
    a1, b1, plain_b = Member("a1"), Member("b1"), Member("plain-b")
    a.hub.subscribe(a1, GROUP, 0)
    b.hub.subscribe(b1, GROUP, 0)
    b.hub.subscribe(plain_b, "t/#", 0)
    a.announce("t/#", GROUP)
    b.announce(GROUP)  # node b's view of node a: a member of the group
    for n in range(4):
        a.hub.route(Message("t/x", b"%d" % n, 0))
    entries = carry(clock, a, b)
    # One frame per message for node b, naming the group only when b was chosen.
    assert [(m.payload, groups) for m, groups in entries] == [
        (b"0", ()), (b"1", (GROUP,)), (b"2", ()), (b"3", (GROUP,))]
    assert plain_b.got == [b"0", b"1", b"2", b"3"]
    assert a1.got == [b"0", b"2"] and b1.got == [b"1", b"3"]
    # Node b's own view of node a never takes what came from a.
    assert b.link.sent == []


def test_a_node_that_cannot_take_more_gets_no_turn_while_a_local_member_can():
    clock, a, b = two_nodes()
    local = Member("a1")
    a.hub.subscribe(local, GROUP, 1)
    a.announce(GROUP)
    a.outbox.congest(a.remote)
    publisher = Publisher()
    a.hub.flow.current = publisher
    for n in range(3):
        a.hub.route(Message("t/x", b"%d" % n, 1))
    a.hub.flow.current = None
    clock.advance(0)
    assert local.got == [b"0", b"1", b"2"] and a.sent() == []
    assert publisher.holds == set()  # nobody waits for the stuck node
    a.outbox.uncongest(a.remote)
    a.hub.route(Message("t/x", b"3", 1))
    a.hub.route(Message("t/x", b"4", 1))
    clock.advance(0)
    assert [m.payload for m, _ in a.sent()] and len(local.got) == 4


def test_a_gone_node_gets_no_turn_while_a_local_member_is_connected():
    clock, a, b = two_nodes()
    local = Member("a1")
    a.hub.subscribe(local, GROUP, 1)
    a.announce(GROUP)
    a.remote.gone = True
    assert a.remote.share_state(1) == AWAY
    for n in range(3):
        a.hub.route(Message("t/x", b"%d" % n, 1))
    assert local.got == [b"0", b"1", b"2"]


def test_a_qos1_message_for_another_nodes_member_waits_for_its_stream():
    clock, a, b = two_nodes()
    a.announce(GROUP)
    commit = a.hub.route(Message("t/x", b"kept", 1))
    assert commit is not None and not commit.done
    clock.advance(0)
    [(args, answer)] = a.link.sent
    answer.callback(b"1-0")
    assert commit.done and commit.failure is None


def test_what_a_gone_node_left_goes_to_an_adopted_member_only_for_its_groups():
    class Session(Member):
        def __init__(self, name, subscriptions):
            super().__init__(name)
            self.subscriptions = subscriptions

    member = Session("s1", {GROUP: 1})
    plain = Session("s2", {"t/#": 1})
    adopted = AdoptedSessions([member, plain])
    adopted.deliver(Message("t/x", b"plain only", 1), ())
    adopted.deliver(Message("t/x", b"for the group", 1), (GROUP,))
    assert member.got == [b"for the group"]
    assert plain.got == [b"plain only", b"for the group"]


def test_a_message_a_member_left_unacknowledged_may_go_to_a_member_on_another_node():
    clock, a, b = two_nodes()
    a1, b1 = Member("a1"), Member("b1")
    a.hub.subscribe(a1, GROUP, 1)
    b.hub.subscribe(b1, GROUP, 1)
    a.announce(GROUP)
    b.announce(GROUP)
    a.hub.route(Message("t/x", b"0", 1))  # a1's turn
    a.hub.route(Message("t/x", b"1", 1))  # node b's: b1 gets it there
    carry(clock, a, b)
    assert a1.got == [b"0"] and b1.got == [b"1"]
    message = Message("t/x", b"1", 1)
    # b1 went away without acknowledging it; node b has no other member.
    b.hub.unsubscribe(b1, GROUP)
    assert b.hub.hand_over(GROUP, message, b1)
    carry(clock, b, a)
    assert a1.got == [b"0", b"1"] and b1.got == [b"1"]


def test_a_node_chosen_for_two_groups_and_its_plain_subscribers_gets_one_frame():
    clock, a, b = two_nodes()
    other = "$share/h/t/+"
    a.announce("t/#", GROUP, other)
    b1, b2, plain_b = Member("b1"), Member("b2"), Member("plain-b")
    b.hub.subscribe(b1, GROUP, 1)
    b.hub.subscribe(b2, other, 1)
    b.hub.subscribe(plain_b, "t/#", 1)
    a.hub.route(Message("t/x", b"once", 1))
    [(message, groups)] = carry(clock, a, b)
    assert sorted(groups) == sorted([GROUP, other])
    assert b1.got == b2.got == plain_b.got == [b"once"]
