"""The lpframe protocol against an in-memory hub (``trial lpframe``)."""

from __future__ import annotations

import struct

from twisted.protocols.basic import Int32StringReceiver
from twisted.trial.unittest import SynchronousTestCase

from lpframe.protocol import FrameFactory, split_topic, with_topic
from reactorapp.testing import MemoryHub


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def frames(data: bytes) -> list[bytes]:
    """Split bytes written by the protocol back into frame bodies."""
    found = []
    while data:
        (length,) = struct.unpack_from(">I", data)
        found.append(data[4:4 + length])
        data = data[4 + length:]
    return found


class FrameTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()
        self.device = self.kit.connect(FrameFactory(self.kit.hub))

    def exchange(self, *bodies: bytes) -> list[bytes]:
        self.device.send(b"".join(frame(b) for b in bodies))
        return frames(self.device.received())

    def test_publish(self):
        self.assertEqual(self.exchange(with_topic(b"P", "meters/7", b"\x00\x01")), [b"K"])
        self.kit.assert_published("meters/7", b"\x00\x01")

    def test_publish_byte_by_byte(self):
        for byte in frame(with_topic(b"P", "meters/7", b"42")):
            self.device.send(bytes([byte]))
        self.assertEqual(frames(self.device.received()), [b"K"])
        self.kit.assert_published("meters/7", b"42")

    def test_subscribe_gets_retained_then_live_messages(self):
        self.kit.publish("meters/1", b"old", retain=True)
        answers = self.exchange(b"Smeters/+")
        self.assertEqual(answers, [b"K", with_topic(b"M", "meters/1", b"old")])
        self.kit.publish("meters/2", b"new")
        self.assertEqual(frames(self.device.received()), [with_topic(b"M", "meters/2", b"new")])

    def test_unsubscribe(self):
        self.assertEqual(self.exchange(b"Smeters/#", b"Umeters/#"), [b"K", b"K"])
        self.kit.publish("meters/2", b"new")
        self.assertEqual(self.device.received(), b"")

    def test_mistakes_are_answered(self):
        answers = self.exchange(b"X", b"P\x00", b"Sa/#/b", b"Unever", with_topic(b"P", "a/+", b""))
        self.assertEqual([a[:1] for a in answers], [b"E"] * 5)
        self.assertIn(b"'#' must be a whole level", answers[2])
        self.kit.assert_nothing_published()
        self.assertFalse(self.device.closed)

    def test_oversized_frame_closes_and_cleans_up(self):
        self.exchange(b"Smeters/#")
        self.device.send(struct.pack(">I", 70000))
        self.assertTrue(self.device.closed)
        self.assertEqual(self.kit.hub.subscription_count, 0)

    def test_disconnect_cancels_subscriptions(self):
        self.exchange(b"Sa", b"Sb")
        self.device.lose()
        self.assertEqual(self.kit.hub.subscription_count, 0)

    def test_a_device_that_does_not_read_is_sent_no_more_than_its_buffer(self):
        """Retained messages and replies wait while the device does not
        read (HubProtocol does it), and all arrive once it reads."""
        for n in range(40):
            self.kit.publish(f"meters/{n}", b"x" * 1000, retain=True)
        device = self.kit.connect(FrameFactory(self.kit.hub), bufferSize=4096)
        device.send(frame(b"Smeters/+") * 100)
        self.assertLess(len(device.transport.value()), 4096 + 1100)
        bodies = []
        while True:
            data = device.received()
            if not data:
                break
            bodies += frames(data)
        self.assertEqual(len(bodies), 100 * 41)
        self.assertEqual(self.kit.hub.stats.publish_dropped, 0)


class PluginTests(SynchronousTestCase):
    def test_found_and_configured_like_twistd_does(self):
        kit = MemoryHub()
        device = kit.connect(kit.factory("lpframe", "--max-frame=16"))
        device.send(frame(with_topic(b"P", "a/long/topic", b"and a payload")))
        self.assertEqual(frames(device.received())[0][:1], b"E")
        self.assertTrue(device.closed)


class Device(Int32StringReceiver):
    """The other end, as a device would speak it."""

    def connectionMade(self):
        self.received = []

    def stringReceived(self, body):
        self.received.append(body)


class PairTests(SynchronousTestCase):
    def test_two_devices_talk_through_the_hub(self):
        kit = MemoryHub()
        factory = FrameFactory(kit.hub)
        reader, writer = Device(), Device()
        readerPump, writerPump = kit.pair(factory, reader), kit.pair(factory, writer)
        reader.sendString(b"Sdoors/+")
        readerPump.flush()
        writer.sendString(with_topic(b"P", "doors/front", b"open"))
        writerPump.flush()
        readerPump.flush()
        self.assertEqual([split_topic(m[1:]) for m in reader.received if m[:1] == b"M"],
                         [("doors/front", b"open")])
