"""Test hub protocols in memory: no sockets, no reactor, no waiting.

`MemoryHub` is a real hub on a `Clock`, which remembers everything published
through it. Connect a protocol to it with `MemoryHub.connect` (the protocol
writes to a `StringTransport`) or connect two protocols to each other with
`MemoryHub.pair` and move their bytes with `Pump.flush`. Failed checks
raise `AssertionError`, so the same tests run under trial and pytest::

    from twisted.trial.unittest import SynchronousTestCase
    from reactorapp.testing import MemoryHub

    class LineTests(SynchronousTestCase):
        def test_publish(self):
            kit = MemoryHub()
            connection = kit.connect(LineFactory(kit.hub))
            connection.send(b"PUB a/b hello\\n")
            kit.assert_published("a/b", b"hello")
"""

from __future__ import annotations

import shlex

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from reactorapp.api import HubClient
from reactorapp.hub.hub import Hub
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.message import Message
from reactorapp.plugins import parseListener

__all__ = ["MemoryHub", "RecordingHub", "Inbox", "Connection", "BufferedTransport", "Pump"]

CLIENT_ADDRESS = IPv4Address("TCP", "192.0.2.7", 50123)
SERVER_ADDRESS = IPv4Address("TCP", "192.0.2.1", 7000)


class RecordingHub(Hub):
    """A `Hub` that also keeps every message published, in order."""

    def __init__(self, clock, **kwargs) -> None:
        super().__init__(clock, **kwargs)
        self.published: list[Message] = []

    def route(self, message):
        # Every publish goes through here: `Hub.publish`, and front ends
        # that acknowledge through `route` directly (MQTT).
        self.published.append(message)
        return super().route(message)


@implementer(ISubscriber)
class Inbox:
    """A subscriber that keeps what it is given: ``(message, qos, retained)``."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[Message, int, bool]] = []

    def deliver(self, message, qos, retained):
        self.deliveries.append((message, qos, retained))

    @property
    def messages(self) -> list[Message]:
        return [message for message, _, _ in self.deliveries]

    @property
    def payloads(self) -> list[bytes]:
        return [message.payload for message, _, _ in self.deliveries]


class MemoryHub:
    """A hub, its clock and what was published: everything a protocol test needs."""

    def __init__(self, clock: Clock | None = None, **hub_options) -> None:
        self.clock = clock if clock is not None else Clock()
        self.hub = RecordingHub(self.clock, **hub_options)

    @property
    def published(self) -> list[Message]:
        """Every message published so far, by anyone, oldest first."""
        return self.hub.published

    def advance(self, seconds: float) -> None:
        """Move time on: timeouts and looping calls due by then run."""
        self.clock.advance(seconds)

    # -- other parties -------------------------------------------------

    def client(self, client_id: str = "test-client", **options) -> HubClient:
        """A `HubClient` of its own, as a protocol's connection would have."""
        return HubClient(self.hub, client_id, front_end="test", **options)

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False) -> Message:
        """Publish as someone else would, at once, and return the message."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        message = Message(topic, payload, qos, retain, sender="test")
        self.hub.publish(message)
        return message

    def subscribe(self, topic_filter: str = "#", qos: int = 2) -> Inbox:
        """An `Inbox` that receives what ``topic_filter`` matches from now on."""
        inbox = Inbox()
        self.hub.subscribe(inbox, topic_filter, qos)
        return inbox

    # -- connections ---------------------------------------------------

    def connect(self, factory_or_protocol, peer=CLIENT_ADDRESS, *,
                bufferSize: int | None = None) -> Connection:
        """Connect a protocol (or one built by a factory) to a `StringTransport`.

        With ``bufferSize``, the transport behaves like a TCP connection to a
        peer that reads only when the test calls `Connection.received`: it
        pauses its producer once more than ``bufferSize`` bytes are unread,
        and resumes it when they are taken.
        """
        if bufferSize is None:
            transport = StringTransport(hostAddress=SERVER_ADDRESS, peerAddress=peer)
        else:
            transport = BufferedTransport(bufferSize, hostAddress=SERVER_ADDRESS,
                                          peerAddress=peer)
        return Connection(_build(factory_or_protocol, peer), transport)

    def pair(self, server, client) -> Pump:
        """Connect a server protocol (or factory) to a client protocol in memory."""
        return Pump(_build(server, CLIENT_ADDRESS), _build(client, SERVER_ADDRESS))

    def factory(self, plugin_name: str, *arguments: str, plugins=None):
        """The factory the installed plugin ``plugin_name`` makes for this hub,
        with its flags parsed as ``--listen 'NAME:ENDPOINT flags'`` would."""
        text = shlex.join([f"{plugin_name}:tcp:0", *arguments])
        return parseListener(text, plugins).makeFactory(self.hub)

    # -- assertions ----------------------------------------------------

    def assert_published(self, topic: str, payload: bytes | str | None = None, *,
                         qos: int | None = None, retain: bool | None = None) -> Message:
        """Return the last published message with these values, or fail."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        for message in reversed(self.published):
            if (message.topic == topic
                    and (payload is None or message.payload == payload)
                    and (qos is None or message.qos == qos)
                    and (retain is None or message.retain == retain)):
                return message
        wanted = ", ".join(f"{k}={v!r}" for k, v in [
            ("topic", topic), ("payload", payload), ("qos", qos), ("retain", retain)]
            if v is not None)
        raise AssertionError(f"nothing published with {wanted}; published: {self.published!r}")

    def assert_nothing_published(self) -> None:
        if self.published:
            raise AssertionError(f"expected no messages; published: {self.published!r}")


class BufferedTransport(StringTransport):
    """A `StringTransport` with a write buffer of ``bufferSize`` bytes: past
    it the registered producer is paused, as a TCP transport does."""

    def __init__(self, bufferSize: int, **kwargs) -> None:
        self.producerPaused = False
        super().__init__(**kwargs)
        self.bufferSize = bufferSize

    def write(self, data) -> None:
        super().write(data)
        self._check()

    def writeSequence(self, data) -> None:
        super().writeSequence(data)
        self._check()

    def _check(self) -> None:
        if (self.producer is not None and not self.producerPaused
                and len(self.io.getvalue()) > self.bufferSize):
            self.producerPaused = True
            self.producer.pauseProducing()

    def clear(self) -> None:
        """The peer read everything: a paused producer is resumed."""
        super().clear()
        if self.producerPaused and self.producer is not None:
            self.producerPaused = False
            self.producer.resumeProducing()


class Connection:
    """A protocol talking to a `StringTransport`.

    When the protocol closes the transport, ``connectionLost`` follows once
    its current call has returned, as it would with a reactor.
    """

    def __init__(self, protocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self.lost = False
        protocol.makeConnection(transport)
        self._settle()

    def send(self, data: bytes) -> None:
        """Bytes from the peer."""
        if self.lost:
            raise AssertionError(f"cannot send {data!r}: the connection is closed")
        self.protocol.dataReceived(data)
        self._settle()

    def received(self) -> bytes:
        """The bytes written to the peer since the last call."""
        self._settle()
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self, delimiter: bytes = b"\r\n") -> list[bytes]:
        """What `received` returns, split into lines."""
        lines = self.received().split(delimiter)
        if not lines[-1]:
            lines.pop()
        return lines

    @property
    def closed(self) -> bool:
        """Whether the protocol closed the connection or it was lost."""
        return self.lost or self.transport.disconnecting

    def lose(self, reason: type[Exception] = ConnectionDone) -> None:
        """The peer goes away."""
        if not self.lost:
            self.lost = True
            self.transport.disconnecting = True
            self.protocol.connectionLost(Failure(reason()))

    def _settle(self) -> None:
        if self.transport.disconnecting and not self.lost:
            self.lose(ConnectionLost if self.transport.disconnected else ConnectionDone)


class Pump:
    """Two protocols connected in memory. Nothing moves until `flush`."""

    def __init__(self, server, client) -> None:
        self.server, self.client = server, client
        self.serverTransport = StringTransport(SERVER_ADDRESS, CLIENT_ADDRESS)
        self.clientTransport = StringTransport(CLIENT_ADDRESS, SERVER_ADDRESS)
        self.lost = False
        server.makeConnection(self.serverTransport)
        client.makeConnection(self.clientTransport)

    def flush(self, rounds: int = 1000) -> None:
        """Deliver bytes both ways until both sides are quiet; then, if either
        side closed, tell both that the connection is lost."""
        ends = ((self.serverTransport, self.client), (self.clientTransport, self.server))
        for _ in range(rounds):
            moved = False
            for transport, peer in ends:
                data = transport.value()
                if data and not self.lost:
                    transport.clear()
                    peer.dataReceived(data)
                    moved = True
            if not moved:
                break
        else:
            raise AssertionError(f"the two ends still talk after {rounds} rounds")
        closing = [t for t in (self.serverTransport, self.clientTransport) if t.disconnecting]
        if closing and not self.lost:
            self.lost = True
            aborted = any(t.disconnected for t in closing)
            for protocol in (self.server, self.client):
                protocol.connectionLost(Failure(ConnectionLost() if aborted else ConnectionDone()))


def _build(factory_or_protocol, peer):
    if hasattr(factory_or_protocol, "buildProtocol"):
        return factory_or_protocol.buildProtocol(peer)
    return factory_or_protocol
