"""The built-in line protocol, against an in-memory hub (reactorapp.testing).

Written as trial SynchronousTestCases, so they run under trial and pytest.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from reactorapp.protocols.line import LineFactory, LineOptions, escape, unescape
from reactorapp.testing import MemoryHub


class LineProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()
        self.user = self.kit.connect(LineFactory(self.kit.hub))

    def say(self, *lines: str) -> list[bytes]:
        self.user.send("".join(line + "\n" for line in lines).encode("utf-8"))
        return self.user.lines()

    def test_ping(self):
        self.assertEqual(self.say("PING"), [b"PONG"])

    def test_commands_are_case_insensitive_and_take_crlf(self):
        self.user.send(b"ping\r\nPiNg\r\n")
        self.assertEqual(self.user.lines(), [b"PONG", b"PONG"])

    def test_blank_lines_are_ignored(self):
        self.assertEqual(self.say("", "   ", "PING"), [b"PONG"])

    def test_pub(self):
        """The payload is the rest of the line, spaces included."""
        self.assertEqual(self.say("PUB rooms/hall the door is open"), [b"OK PUB rooms/hall"])
        message = self.kit.assert_published("rooms/hall", b"the door is open", qos=0)
        self.assertEqual(message.sender, "line:192.0.2.7:50123")

    def test_pub_empty_payload(self):
        self.assertEqual(self.say("PUB a"), [b"OK PUB a"])
        self.kit.assert_published("a", b"")

    def test_sub_then_live_messages(self):
        self.assertEqual(self.say("SUB rooms/+"), [b"OK SUB rooms/+"])
        self.kit.publish("rooms/hall", b"open")
        self.kit.publish("garden", b"not matched")
        self.assertEqual(self.user.lines(), [b"MSG rooms/hall open"])

    def test_sub_sends_retained_after_the_reply(self):
        """[MQTT-3.3.1-6] A new subscription gets the retained messages it matches."""
        self.kit.publish("rooms/hall", b"closed", retain=True)
        self.assertEqual(self.say("SUB rooms/#"), [b"OK SUB rooms/#", b"MSG rooms/hall closed"])

    def test_sub_twice_replaces(self):
        """[MQTT-3.8.4-3] The same filter again replaces the subscription: one copy."""
        self.say("SUB a", "SUB a")
        self.kit.publish("a", b"x")
        self.assertEqual(self.user.lines(), [b"MSG a x"])
        self.assertEqual(self.kit.hub.subscription_count, 1)

    def test_unsub(self):
        self.assertEqual(self.say("SUB a/#", "UNSUB a/#"), [b"OK SUB a/#", b"OK UNSUB a/#"])
        self.kit.publish("a/b", b"x")
        self.assertEqual(self.user.lines(), [])

    def test_unsub_unknown(self):
        self.assertEqual(self.say("UNSUB a/#"), [b"ERR Not subscribed to 'a/#'."])

    def test_own_messages_come_back(self):
        self.assertEqual(self.say("SUB a", "PUB a hi"), [b"OK SUB a", b"MSG a hi", b"OK PUB a"])

    def test_wildcards_do_not_match_sys(self):
        """[MQTT-4.7.2-1] '#' does not match topics that start with '$'."""
        self.say("SUB #")
        self.kit.publish("$SYS/broker/uptime", b"1")
        self.assertEqual(self.user.lines(), [])

    def test_mistakes_get_one_err_line_each(self):
        replies = self.say("HELLO", "PUB a/+ x", "SUB a/#/b", "SUB", "PUB $SYS/x 1")
        self.assertEqual([r.split(b" ")[0] for r in replies], [b"ERR"] * 5)
        self.assertIn(b"Unknown command 'HELLO'", replies[0])
        self.assertIn(b"wildcard", replies[1])
        self.assertIn(b"$SYS belong to the broker", replies[4])
        self.kit.assert_nothing_published()
        self.assertFalse(self.user.closed)

    def test_not_utf8(self):
        self.user.send(b"PUB \xff x\n")
        self.assertEqual(self.user.lines(), [b"ERR The line is not UTF-8 text."])

    def test_payload_escapes(self):
        self.say("SUB a", r"PUB a one\ntwo\\three\r")
        self.kit.assert_published("a", b"one\ntwo\\three\r")
        self.kit.publish("a", b"x\r\ny")
        self.assertEqual(self.user.lines(), [rb"MSG a x\r\ny"])

    def test_bad_escape(self):
        self.assertEqual(self.say(r"PUB a \q"),
                         [rb"ERR A backslash in a payload must start \\, \r or \n."])

    def test_line_too_long_closes(self):
        self.say("SUB a")
        self.user.send(b"PUB a " + b"x" * 70_000)
        self.assertEqual(self.user.lines(), [b"ERR The line is longer than 66560 bytes."])
        self.assertTrue(self.user.closed)
        self.assertEqual(self.kit.hub.subscription_count, 0)

    def test_disconnect_cancels_subscriptions(self):
        self.say("SUB a", "SUB b/#")
        self.assertEqual(self.kit.hub.subscription_count, 2)
        self.user.lose()
        self.assertEqual(self.kit.hub.subscription_count, 0)
        self.kit.publish("a", b"x")  # nothing to deliver to, nothing raised

    def test_replies_keep_request_order_while_the_hub_stores(self):
        """A PUB whose message takes time to place holds back later replies."""
        placed = Deferred()
        self.kit.hub.publish = lambda message: placed
        self.assertEqual(self.say("PUB a x", "PING"), [])
        placed.callback(None)
        self.assertEqual(self.user.lines(), [b"OK PUB a", b"PONG"])

    def test_counted_as_line_traffic(self):
        self.say("SUB a", "PUB a x")
        traffic = self.kit.hub.stats.traffic["line"]
        self.assertEqual((traffic.received, traffic.sent), ([1, 0, 0], [1, 0, 0]))


class LineOptionsTests(SynchronousTestCase):
    def test_max_line(self):
        kit = MemoryHub()
        user = kit.connect(kit.factory("line", "--max-line=10"))
        user.send(b"PUB a/b 12345\n")
        self.assertEqual(user.lines(), [b"ERR The line is longer than 10 bytes."])
        self.assertTrue(user.closed)

    def test_default(self):
        options = LineOptions()
        options.parseOptions([])
        self.assertEqual(options["max-line"], 66560)


class EscapeTests(SynchronousTestCase):
    @given(st.binary())
    def test_round_trip(self, payload):
        line = escape(payload)
        self.assertNotIn(b"\n", line)
        self.assertNotIn(b"\r", line)
        self.assertEqual(unescape(line), payload)
