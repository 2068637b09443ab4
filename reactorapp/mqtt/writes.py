"""One write per connection for everything that one read caused.

Handling a single read from a publisher can put hundreds of PUBLISHes on
each subscriber's connection. Twisted buffers them until the socket is
writable either way, but every ``transport.write`` call goes through the
transport's bookkeeping (producer checks, registering with the reactor).
While a read is being handled, MQTT connections keep their output in a list
instead, and write it with one call when the outermost read is done.

Nothing is held past the end of the read, so what a client receives and
when is the same as with a write per packet.
"""

from __future__ import annotations

import socket

from twisted.internet.tcp import Connection, Server


class WriteBatch:
    """Connections with output held while a read is handled.

    ``depth`` counts the reads being handled (they can nest when a transport
    delivers synchronously); a connection appends itself to ``pending`` the
    first time it keeps output back, and ``flush`` asks each to write it.
    """

    __slots__ = ("depth", "pending")

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list = []

    def flush(self) -> None:
        while self.pending:
            pending, self.pending = self.pending, []
            for connection in pending:
                connection.flush_writes()


#: The reactor runs one read at a time, so one batch serves every connection.
BATCH = WriteBatch()


#: The parts of Twisted's TCP transport `write_now` and `read_now` look at
#: (there since Twisted 8; without them, writes simply wait their turn).
_SERVER_KNOWN = all(hasattr(Server, name) for name in (
    "dataBuffer", "connected", "disconnecting", "TLS",
    "_writeDisconnected", "doRead"))


def write_now(transport, data: bytes) -> None:
    """Write ``data``, sending it at once when the socket can take it.

    Twisted's TCP transport buffers every write and sends it on the next
    reactor turn, after registering for and waiting on writability. When
    nothing is queued before ``data`` that costs a turn of latency and
    three system calls per write for no gain, so a plain TCP connection
    sends straight away, the way Mosquitto does. Whatever the socket does
    not take (or an error, which Twisted then reports as usual) goes
    through ``transport.write`` and keeps its order and flow control.
    """
    if (type(transport) is Server and _SERVER_KNOWN and not getattr(transport, "_tempDataLen", 1)
            and not transport.dataBuffer and transport.connected
            and not transport.disconnecting and not transport.TLS
            and not transport._writeDisconnected):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def nodelay_for_accepted(port) -> None:
    """Set TCP_NODELAY on a listening socket: Linux copies it to each socket
    accepted from it, which saves a system call per connection (it counts
    when thousands of clients connect at once). The port is marked so that
    its connections do not set it again."""
    sock = getattr(port, "socket", None)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return
    port.accepted_nodelay = True


def set_nodelay(transport) -> None:
    """Every MQTT connection sends at once: its output is already one write
    per read (`WriteBatch`)."""
    if getattr(getattr(transport, "server", None), "accepted_nodelay", False):
        return
    if hasattr(transport, "setTcpNoDelay"):
        transport.setTcpNoDelay(True)


def read_now(transport) -> None:
    """Read what a just-accepted plain TCP connection has sent already.

    When thousands of clients connect at once, each CONNECT is usually
    waiting by the time its connection is accepted: reading it here answers
    it in the same turn, instead of one more poll and dispatch per client.
    With nothing there yet this costs one system call. An end of stream or
    an error found here is left for the reactor, which sees it again (its
    poller reports readiness for as long as it lasts)."""
    if type(transport) is Server and _SERVER_KNOWN and transport.connected and not transport.TLS:
        transport.doRead()


def flush_now(transport) -> None:
    """Send what a TCP transport (or the one under TLS) has buffered now,
    not on the reactor's next turn: for a write whose order against what
    this process sends next elsewhere matters. What the socket does not
    take stays buffered, as usual."""
    for layer in (transport, getattr(transport, "transport", None)):
        if (isinstance(layer, Connection) and _SERVER_KNOWN and layer.connected
                and not layer.disconnecting
                and (layer.dataBuffer or getattr(layer, "_tempDataLen", 0))):
            layer.doWrite()
