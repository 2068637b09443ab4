"""Output to a plain TCP connection goes out in the turn that made it.

``write_now`` sends straight to the socket when nothing is queued before the
data, and hands the rest to Twisted's buffer otherwise. A client must see
every byte, in order, whichever way each piece went.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from reactorapp.mqtt.writes import write_now

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


async def _exchange(pieces: list[bytes]) -> tuple[Sender, bytes]:
    senders: list[Sender] = []

    def build(_addr):
        senders.append(Sender(pieces))
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
