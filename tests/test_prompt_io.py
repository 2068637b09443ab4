"""A plain TCP connection is read and written without waiting a turn.

``write_now`` sends straight to the socket when nothing is queued before the
data, and hands the rest to Twisted's buffer otherwise: a client must see
every byte, in order, whichever way each piece went. ``read_now`` reads what
a client sent before its connection was accepted (a connection storm): such
clients are answered, and one that has already gone is cleaned up as usual.
"""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.testing import StringTransport

from reactorapp.hub.hub import Hub
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings
from reactorapp.mqtt.writes import flush_now, nodelay_for_accepted, write_now
from tests.wire import read_packets

TIMEOUT = 20.0


class Sender(protocol.Protocol):
    """Writes ``pieces`` with write_now on connection, recording how much
    each call left in the transport's buffer."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.queued_after: list[int] = []

    def connectionMade(self) -> None:
        for piece in self.pieces:
            write_now(self.transport, piece)
            self.queued_after.append(self.transport._tempDataLen + len(self.transport.dataBuffer))
        self.transport.loseConnection()


class Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.done: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.received))


async def _exchange(pieces: list[bytes], kind=Sender) -> tuple[Sender, bytes]:
    senders: list[Sender] = []

    def build(_addr):
        senders.append(kind(pieces))
        return senders[-1]

    factory = protocol.Factory.forProtocol(protocol.Protocol)
    factory.buildProtocol = build
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        collector = Collector()
        creator = protocol.ClientCreator(reactor, lambda: collector)
        await creator.connectTCP("127.0.0.1", port.getHost().port)
        received = await collector.done.addTimeout(TIMEOUT, reactor)
    finally:
        await port.stopListening()
    return senders[0], received


@pytest_twisted.ensureDeferred
async def test_small_writes_leave_nothing_queued_and_arrive_in_order():
    pieces = [b"\x20\x02\x00\x00", b"\x30\x05\x00\x01ahi", b"\xd0\x00"]
    sender, received = await _exchange(pieces)
    assert sender.queued_after == [0, 0, 0]
    assert received == b"".join(pieces)


@pytest_twisted.ensureDeferred
async def test_what_the_socket_does_not_take_is_queued_and_later_writes_wait_behind_it():
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than any socket buffer
    pieces = [big, b"after"]
    sender, received = await _exchange(pieces)
    assert 0 < sender.queued_after[0] < len(big)
    assert sender.queued_after[1] == sender.queued_after[0] + len(b"after")
    assert received == big + b"after"


def test_other_transports_write_as_before():
    transport = StringTransport()
    write_now(transport, b"abc")
    write_now(transport, b"def")
    assert transport.value() == b"abcdef"


class Reader(protocol.Protocol):
    """A client socket handed to the reactor: fires ``got`` once ``size``
    bytes have arrived."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = b""
        self.got: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.size and not self.got.called:
            self.got.callback(self.data)


def _adopt(sock: socket.socket, reader: Reader) -> None:
    sock.setblocking(False)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET,
                                  protocol.Factory.forProtocol(lambda: reader))
    sock.close()  # the reactor holds its own duplicate


def _connected(port, *packets) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port.getHost().port))
    sock.sendall(b"".join(encode(p) for p in packets))
    return sock


@pytest_twisted.ensureDeferred
async def test_clients_that_sent_before_they_were_accepted_are_answered():
    """[MQTT-3.2.0-1] for 200 clients whose CONNECT waited in the listen
    queue; one that sent a will and a PUBLISH and closed before being
    accepted still has both delivered, and its session ends."""
    hub = Hub(reactor)
    readers: list[Reader] = []
    factory = MQTTFactory(hub, reactor, MQTTSettings(connect_timeout=0))
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    try:
        watcher = Reader(4 + 5)  # CONNACK, then SUBACK
        _adopt(_connected(port, P.Connect(client_id="watcher"), P.Subscribe(
            1, [P.SubscriptionRequest("t/#", 0)])), watcher)
        await watcher.got.addTimeout(TIMEOUT, reactor)

        port.stopReading()  # nothing is accepted: what clients send waits
        waiting = [_connected(port, P.Connect(client_id=f"storm-{i}")) for i in range(200)]
        gone = _connected(port, P.Connect(client_id="gone", will=P.Will("t/will", b"bye")),
                          P.Publish("t/last", b"words"))
        gone.close()
        delivered = Reader(len(watcher.data) + 2 * 13)
        delivered.data = watcher.data
        watcher.dataReceived = delivered.dataReceived
        readers = [Reader(4) for _ in waiting]
        for sock, reader in zip(waiting, readers):
            _adopt(sock, reader)
        port.doRead()  # one accept event: each CONNECT is handled as it is accepted
        assert hub.get_session("storm-0") is not None
        port.startReading()

        answers = await gatherResults([r.got for r in readers]).addTimeout(TIMEOUT, reactor)
        assert all(read_packets(a)[0].type == "CONNACK" and read_packets(a)[0].return_code == 0
                   for a in answers)
        got = read_packets((await delivered.got.addTimeout(TIMEOUT, reactor))[9:])
        assert [(p.topic, p.payload) for p in got] == [("t/last", b"words"), ("t/will", b"bye")]
        assert hub.get_session("gone") is None
    finally:
        await port.stopListening()
        for reader in [watcher, *readers]:
            if reader.transport is not None:
                reader.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_mqtt_connections_start_with_nodelay_from_their_listener():
    """Small packets (a PUBACK, a PUBLISH) go out at once, not after Nagle's
    wait, whether the option came from the listener or was set per socket."""
    for inherited in (True, False):
        hub = Hub(reactor)
        accepted: list = []
        factory = MQTTFactory(hub, reactor, MQTTSettings(connect_timeout=0))
        build = factory.buildProtocol

        def keep(addr, build=build):
            accepted.append(build(addr))
            return accepted[-1]

        factory.buildProtocol = keep
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        try:
            if inherited:
                nodelay_for_accepted(port)
            reader = Reader(4)
            _adopt(_connected(port, P.Connect(client_id="c")), reader)
            await reader.got.addTimeout(TIMEOUT, reactor)
            server_socket = accepted[0].transport.getHandle()
            assert server_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert getattr(port, "accepted_nodelay", False) is inherited
        finally:
            reader.transport.abortConnection()
            await port.stopListening()


class Flusher(Sender):
    """Writes each piece the usual way, then flushes it at once."""

    def connectionMade(self) -> None:
        for piece in self.pieces:
            self.transport.write(piece)
            buffered = self.transport._tempDataLen + len(self.transport.dataBuffer)
            flush_now(self.transport)
            self.queued_after.append((buffered, self.transport._tempDataLen
                                      + len(self.transport.dataBuffer)))
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_flush_now_sends_what_a_write_buffered_in_the_same_turn():
    """A claim written to Redis is on its way before the CONNACK that
    follows it (the cluster's takeover order)."""
    pieces = [b"SET client:c a GET", b"more"]
    sender, received = await _exchange(pieces, Flusher)
    assert sender.queued_after == [(len(pieces[0]), 0), (len(pieces[1]), 0)]
    assert received == b"".join(pieces)
    flush_now(StringTransport())  # other transports: nothing to do
