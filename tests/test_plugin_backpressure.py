"""Plugin protocols under a peer that does not read or floods requests:
what the hub holds for it stays bounded, and nothing is lost that the
peer is owed. In memory: StringTransport (with a write buffer) and Clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import IAuthenticator, Identity
from reactorapp.protocols.line import LineFactory
from reactorapp.testing import MemoryHub


class PausedTransportTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()

    def test_replies_wait_while_the_peer_does_not_read(self):
        user = self.kit.connect(LineFactory(self.kit.hub))
        user.protocol.pauseProducing()  # the transport's buffer is full
        user.send(b"PING\nPING\n")
        self.assertEqual(user.transport.value(), b"")
        self.assertEqual(user.transport.producerState, "paused")  # reading paused too
        user.protocol.resumeProducing()
        self.assertEqual(user.lines(), [b"PONG", b"PONG"])
        self.assertEqual(user.transport.producerState, "producing")

    def test_retained_messages_wait_for_the_peer_and_none_is_lost(self):
        for n in range(50):
            self.kit.publish(f"r/{n}", b"x" * 1000, retain=True)
        user = self.kit.connect(LineFactory(self.kit.hub), bufferSize=4096)
        user.send(b"SUB r/#\n")
        first = user.transport.value()
        self.assertLess(len(first), 4096 + 2000)  # the buffer, and one message
        lines = []
        while True:
            data = user.received()
            if not data:
                break
            lines += data.split(b"\r\n")[:-1]
        self.assertEqual(lines[0], b"OK SUB r/#")
        self.assertEqual(len(lines), 51)
        self.assertEqual(self.kit.hub.stats.publish_dropped, 0)

    def test_repeated_subs_from_a_peer_that_never_reads_hold_little(self):
        """The issue's case: SUB 2,000 times for 500 retained 1 KB messages,
        never reading. What is written stays near the transport's buffer."""
        for n in range(500):
            self.kit.publish(f"r/{n}", b"x" * 1000, retain=True)
        user = self.kit.connect(LineFactory(self.kit.hub), bufferSize=65536)
        user.send(b"SUB r/#\n" * 2000)
        self.assertLess(len(user.transport.value()), 65536 + 2000)
        self.assertEqual(user.transport.producerState, "paused")
        protocol = user.protocol
        self.assertLessEqual(protocol._pending, protocol.maxPendingRuns + protocol.readChunk)
        self.assertLessEqual(len(protocol._held), 2000 * 8)

    def test_live_messages_are_still_dropped_while_paused(self):
        user = self.kit.connect(LineFactory(self.kit.hub))
        user.send(b"SUB a\n")
        user.received()
        user.protocol.pauseProducing()
        self.kit.publish("a", b"lost")
        user.protocol.resumeProducing()
        self.assertEqual(user.lines(), [])
        self.assertEqual(self.kit.hub.stats.publish_dropped, 1)


@implementer(IAuthenticator)
class Slow:
    """An authenticator that answers when the test says so."""

    def __init__(self):
        self.pending = []

    def authenticate(self, username, password, client_id, peer, certificate):
        d = Deferred()
        self.pending.append(d)
        return d

    def authenticate_token(self, token, peer):
        return succeed(None)


class PendingRunsTests(SynchronousTestCase):
    def test_requests_behind_a_slow_login_are_bounded_and_kept_in_order(self):
        kit = MemoryHub()
        slow = Slow()
        factory = LineFactory(kit.hub, guard=Guard(slow))
        user = kit.connect(factory)
        user.send(b"LOGIN alice secret\n" + b"PING\n" * 2000)
        protocol = user.protocol
        # The anonymous log-in and LOGIN wait; what the peer sent beyond a
        # few requests is held as bytes, and reading is paused.
        self.assertLessEqual(protocol._pending, protocol.maxPendingRuns + protocol.readChunk // 5)
        self.assertEqual(user.transport.producerState, "paused")
        slow.pending[0].callback(None)  # the anonymous try: not let in
        slow.pending[1].callback(Identity("alice", "c"))
        self.assertEqual(user.lines(), [b"OK LOGIN alice"] + [b"PONG"] * 2000)
        self.assertEqual(user.transport.producerState, "producing")


class SubscriptionLimitTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()
        self.factory = LineFactory(self.kit.hub, guard=Guard(max_subscriptions=3))
        self.user = self.kit.connect(self.factory)

    def say(self, *lines):
        self.user.send(b"".join(line + b"\n" for line in lines))
        return self.user.lines()

    def test_a_connection_holds_at_most_max_subscriptions(self):
        self.assertEqual(self.say(b"SUB a", b"SUB b", b"SUB c"),
                         [b"OK SUB a", b"OK SUB b", b"OK SUB c"])
        (answer,) = self.say(b"SUB d")
        self.assertTrue(answer.startswith(b"ERR "), answer)
        self.assertEqual(self.factory.guard.stats.subscriptions_over_limit, 1)

    def test_a_filter_held_can_be_subscribed_again_at_the_limit(self):
        self.say(b"SUB a", b"SUB b", b"SUB c")
        self.assertEqual(self.say(b"SUB a", b"SUB a"), [b"OK SUB a", b"OK SUB a"])
        self.assertEqual(len(self.user.protocol.hub.subscriptions), 3)

    def test_unsubscribing_makes_room(self):
        self.say(b"SUB a", b"SUB b", b"SUB c", b"UNSUB a")
        self.assertEqual(self.say(b"SUB d"), [b"OK SUB d"])
