"""The lpframe protocol: binary frames, each a 4-byte length and a body.

The body starts with one byte saying what it is (see the README):
``P`` publish, ``S`` subscribe, ``U`` unsubscribe from the device; ``K``
done, ``E`` error, ``M`` message from the hub. Only parsing lives here:
`HubProtocol` cancels subscriptions on disconnect and logs failures.
"""

from __future__ import annotations

import struct

from twisted.protocols.basic import Int32StringReceiver
from twisted.python import usage

from reactorapp.api import Forbidden, InvalidTopic
from reactorapp.protocols import HubFactory, HubProtocol

_TOPIC_LENGTH = struct.Struct(">H")


def with_topic(kind: bytes, topic: str, payload: bytes) -> bytes:
    """A ``P`` or ``M`` body."""
    encoded = topic.encode("utf-8")
    return kind + _TOPIC_LENGTH.pack(len(encoded)) + encoded + payload


def split_topic(rest: bytes) -> tuple[str, bytes]:
    """The topic and payload of a ``P`` or ``M`` body, without its kind byte."""
    if len(rest) < 2:
        raise ValueError("The frame is too short for a topic length.")
    (length,) = _TOPIC_LENGTH.unpack_from(rest)
    if len(rest) < 2 + length:
        raise ValueError("The frame is shorter than its topic length says.")
    return rest[2:2 + length].decode("utf-8"), rest[2 + length:]


class FrameProtocol(HubProtocol, Int32StringReceiver):
    """One device."""

    def connectionMade(self):
        self.MAX_LENGTH = self.factory.options["max-frame"]
        self.subscriptions = {}  # filter -> Subscription

    def stringReceived(self, frame: bytes) -> None:
        self.run(self.handle, frame)

    def lengthLimitExceeded(self, length):
        self.sendString(b"E" + b"Frames are limited to %d bytes." % self.MAX_LENGTH)
        self.transport.loseConnection()

    async def handle(self, frame: bytes) -> None:
        kind, rest = frame[:1], frame[1:]
        try:
            if kind == b"P":
                await self.hub.publish(*split_topic(rest))
                self.sendString(b"K")
            elif kind == b"S":
                await self.subscribe(rest.decode("utf-8"))
            elif kind == b"U":
                subscription = self.subscriptions.pop(rest.decode("utf-8"), None)
                if subscription is None:
                    raise ValueError("Not subscribed to that filter.")
                subscription.cancel()
                self.sendString(b"K")
            else:
                raise ValueError(f"Unknown frame kind {kind!r}.")
        except (ValueError, InvalidTopic, Forbidden) as e:  # UnicodeDecodeError too
            self.sendString(b"E" + str(e).encode("utf-8"))

    async def subscribe(self, topic_filter: str) -> None:
        subscription = await self.hub.subscribe(topic_filter, 0, self.deliver)
        old = self.subscriptions.pop(topic_filter, None)
        if old is not None:
            old.cancel()
        self.subscriptions[topic_filter] = subscription
        self.sendString(b"K")
        await subscription.deliverRetained()

    def deliver(self, message) -> None:
        self.sendString(with_topic(b"M", message.topic, message.payload))


class FrameOptions(usage.Options):
    """``--listen 'lpframe:tcp:7002 --max-frame=4096'``."""

    optParameters = [["max-frame", None, 65536, "Largest frame accepted, in bytes.", int]]


class FrameFactory(HubFactory):
    protocol = FrameProtocol
    name = "lpframe"

    def __init__(self, hub, options=None, **kwargs):
        if options is None:
            options = FrameOptions()
            options.parseOptions([])
        super().__init__(hub, options, **kwargs)
