"""Base classes for protocols that talk to the hub.

Subclass `HubProtocol` and write only the parsing: each connection gets a
`reactorapp.api.HubClient` as ``self.hub``, its subscriptions are cancelled
when the connection is lost, and work started with `HubProtocol.run` runs in
the order it was asked for, with failures logged instead of lost, and a peer
that stops reading loses live deliveries instead of filling the memory: no
more of its requests are read or run until it reads again. The hub's
guard applies as it does to MQTT: connection limits, the ACL, and, when
clients must log in, nothing is allowed before `HubProtocol.authenticate`.
Subclass `HubFactory` to say which protocol it builds and under which name.
"""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.addresses import address_text
from reactorapp.api import HubClient, NotAuthorized
from reactorapp.auth.guard import Guard
from reactorapp.auth.tls import peer_certificate

__all__ = ["HubProtocol", "HubFactory"]


@implementer(IPushProducer)
class HubProtocol(Protocol):
    """One connection of a hub protocol.

    ``self.hub`` is the connection's `HubClient`; ``self.factory`` the
    `HubFactory` that built it (its ``options`` hold the plugin's settings).
    A subclass that overrides `connectionLost` calls this one.

    It is the transport's streaming producer. While the transport's buffer
    is full (the peer is not reading), live messages for this connection
    are dropped (and counted in ``publish_dropped``), no further `run`
    starts, `Subscription.deliverRetained` waits, and reading from the peer
    pauses. Reading also pauses while ``maxPendingRuns`` requests wait
    (behind a slow log-in, say). Bytes reach the subclass's parser
    (``dataReceived``) at most ``readChunk`` at a time, so one read cannot
    queue many more requests than that: what a peer can make the hub hold
    is bounded whatever it sends.
    """

    log = Logger()
    factory: HubFactory
    hub: HubClient

    #: Requests waiting in `run` before reading from the peer pauses.
    maxPendingRuns = 16
    #: Bytes handed to the subclass's parser at a time.
    readChunk = 4096

    _address = None

    def makeConnection(self, transport):
        """Admit the connection under the guard's connection limits, or
        close it at once (`connectionMade` is then not called)."""
        self._queue = succeed(None)
        self._pending = 0  # runs asked for and not finished
        self._held = None  # bytes read but not parsed yet, while requests wait
        self._readPaused = False
        guard = self.factory.guard
        address = guard.admit(transport.getPeer())
        if address is None:
            self.transport = transport
            transport.abortConnection()
            return
        self._address = address
        # As Protocol.makeConnection, with the anonymous log-in queued first.
        self.connected = True
        self.transport = transport
        transport.registerProducer(self, True)
        # The transport calls dataReceived; the subclass's parser is reached
        # through _received, whatever class defines it.
        self._parse = self.dataReceived
        self.dataReceived = self._received
        if not self.hub.authenticated:
            self.run(self._logInAnonymously)
        self.connectionMade()

    def connectionLost(self, reason=connectionDone):
        """Stop deliveries and drop work not yet started."""
        self.connected = False
        self.hub.close()
        if self._address is not None:
            self.factory.guard.release(self._address)
            self._address = None
        self.log.debug("{client} disconnected: {reason}",
                       client=self.hub.client_id, reason=reason.getErrorMessage())

    # -- IPushProducer: the transport says when its buffer is full ---------

    def pauseProducing(self) -> None:
        self.hub.paused = True
        self._pauseReading()

    def resumeProducing(self) -> None:
        self.hub.paused = False  # runs and retained deliveries waiting go on
        self._proceed()

    def stopProducing(self) -> None:
        self.hub.paused = True

    # -- reading: paused while the peer does not read or requests wait ------

    def _mustWait(self) -> bool:
        return self._pending >= self.maxPendingRuns or self.hub.paused

    def _received(self, data: bytes) -> None:
        if self._held is not None:
            self._held += data  # at most one read: reading is paused
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        chunk = self.readChunk
        for start in range(0, len(data), chunk):
            if not self.connected:
                return
            if self._mustWait():
                self._held = bytearray(data[start:])
                self._pauseReading()
                return
            self._parse(data[start:start + chunk])

    def _pauseReading(self) -> None:
        if not self._readPaused and self.connected:
            self._readPaused = True
            self.transport.pauseProducing()

    def _proceed(self) -> None:
        """Parse what was held and read again, unless there is still a
        reason to wait."""
        if not self.connected or self._mustWait():
            return
        if self._held is not None:
            data, self._held = bytes(self._held), None
            self._feed(data)
            if self._held is not None or not self.connected:
                return
        if self._readPaused:
            self._readPaused = False
            self.transport.resumeProducing()

    def authenticate(self, username: str | None, password: bytes | None):
        """Log in with the hub's authenticator; as `HubClient.authenticate`,
        with the peer's address and TLS certificate filled in."""
        return self.hub.authenticate(username, password, peer=self.transport.getPeer(),
                                     certificate=peer_certificate(self.transport))

    def _logInAnonymously(self):
        """When the hub lets anonymous clients (or TLS certificates) in, a
        connection needs no log-in."""
        return self.authenticate(None, None).addErrback(_ignoreNotAuthorized)

    def run(self, f, *args, **kwargs) -> None:
        """Call ``f(*args, **kwargs)`` once earlier runs have finished.

        ``f`` may return a value, a Deferred or a coroutine (``async def``).
        Replies written by ``f`` so keep the order of the requests, even when
        the hub takes time to place a message. A failure ``f`` lets through
        goes to `runFailed`, which by default logs it and drops the
        connection, so nothing queued behind it runs; a `runFailed` that
        answers the peer instead lets the next run go on. While the peer is
        not reading, runs wait; while ``maxPendingRuns`` wait, reading pauses.
        """
        self._pending += 1
        self._queue.addCallback(self._step, f, args, kwargs)

    def _step(self, _previous, f, args, kwargs):
        if not self.connected:
            return None
        if self.hub.paused:
            # The peer is not reading: nothing more is written until it does.
            return self.hub.whenWritable().addCallback(self._step, f, args, kwargs)
        d = maybeDeferred(f, *args, **kwargs).addErrback(self.runFailed, f)
        return d.addBoth(self._ran)

    def _ran(self, result):
        self._pending -= 1
        if self._held is not None or self._readPaused:
            self._proceed()
        return result

    def runFailed(self, failure, f) -> None:
        """Log a failure that ``f`` did not handle, and drop the connection:
        its state is no longer known, so nothing queued behind runs either.
        Override to answer the peer instead."""
        self.log.failure("{client}: {function} failed", failure,
                         client=self.hub.client_id, function=getattr(f, "__name__", f))
        self.connected = False
        self.transport.abortConnection()


class HubFactory(Factory):
    """Builds the connections of one protocol, all bound to one hub.

    ``name`` is the protocol's name (``--listen NAME:ENDPOINT``), used for
    its connections' client ids and the hub's traffic counters. ``guard``
    holds the authorizer and connection limits that every listener shares;
    the service sets it, and by default it lets everyone in.
    """

    protocol = HubProtocol
    name = "plugin"

    def __init__(self, hub, options=None, *, guard: Guard | None = None) -> None:
        self.hub = hub
        self.clock = hub.clock
        self.options = options
        self.guard = guard if guard is not None else Guard()

    def buildProtocol(self, addr):
        protocol = self.protocol()
        protocol.factory = self
        protocol.hub = self.makeClient(addr)
        return protocol

    def makeClient(self, addr) -> HubClient:
        """The `HubClient` for a connection from ``addr``."""
        return HubClient(self.hub, f"{self.name}:{address_text(addr)}",
                         front_end=self.name, guard=self.guard)


def _ignoreNotAuthorized(failure) -> None:
    failure.trap(NotAuthorized)
