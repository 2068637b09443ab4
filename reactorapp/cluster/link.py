"""One connection to Redis, kept up with back-off: txredisapi's protocol
under Twisted's `ClientService`.

txredisapi's own factories keep pools and reconnect too, but run their
timers on the global reactor and hide when a connection comes and goes; a
node must know both (to resend, to resynchronise, to say it is not ready).
So each `RedisLink` is one `ClientService` (the clock injected, back-off
from 0.1 s to 5 s) building `txredisapi.RedisProtocol` (or its
subscriber), with the bytes as they are: no decoding, no number guessing.

A command sent on a link whose connection is lost fails with txredisapi's
``ConnectionError``; whether Redis ran it is unknown, so its sender decides
(the outbox sends the message again, the heartbeat just waits for the
next beat).
"""

from __future__ import annotations

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from reactorapp.mqtt.writes import flush_now

log = Logger()

#: Seconds to wait for Redis to accept a connection.
CONNECT_TIMEOUT = 5.0


class NotConnected(Exception):
    """Redis is not connected now; the node reconnects on its own."""


def _protocol_classes():
    """txredisapi imports the global reactor: only a cluster node loads it."""
    import txredisapi

    class Subscriber(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern, channel, message):
            self.factory.link._message(channel, message)

    return txredisapi.RedisProtocol, Subscriber


class _Factory(Factory):
    """What txredisapi's protocol expects of its factory, and no pool."""

    isLazy = True  # txredisapi: report a failed log-in by logging, not raising

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def buildProtocol(self, addr):
        return self.link._build()

    def stopTrying(self) -> None:
        """AUTH or SELECT was refused: keep trying (the operator may fix
        Redis), it is logged once by `connectionError`."""

    def connectionError(self, why) -> None:
        self.link._refused(why)


@implementer(IPushProducer)
class RedisLink:
    """A connection to Redis that comes back after it is lost.

    ``on_ready(link)`` runs each time a connection is usable (after AUTH
    and SELECT), ``on_lost(link)`` each time it is lost; ``on_message``
    makes it a pub/sub subscriber (``on_message(channel, data)``).
    ``paused`` is true while the connection's write buffer is over
    Twisted's high-water mark (``on_pause``/``on_resume`` are told).
    With ``reply_timeout``, a command (not a blocking one) whose reply takes
    longer fails with txredisapi's ``TimeoutError`` (a ``ConnectionError``)
    and the connection is dropped and made again.
    """

    def __init__(self, url, reactor, name: str, *, on_ready=None, on_lost=None,
                 on_message=None, on_pause=None, on_resume=None,
                 reply_timeout: float | None = None) -> None:
        self.url = url
        self.name = name
        self.connection = None
        self.paused = False
        self._reactor = reactor
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_message = on_message
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._refusal = None
        #: Seconds a reply may take before the connection is dropped (and
        #: made again): a Redis that went silent without closing it.
        self.reply_timeout = reply_timeout
        endpoint = HostnameEndpoint(reactor, url.host, url.port, timeout=CONNECT_TIMEOUT)
        if url.tls:
            endpoint = wrapClientTLS(url.client_tls(), endpoint)
        self._factory = _Factory(self)
        self._service = ClientService(endpoint, self._factory, clock=reactor,
                                      retryPolicy=backoffPolicy(0.1, 5.0))

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def start(self) -> None:
        self._service.startService()

    def stop(self):
        """Close the connection and stop reconnecting; a Deferred."""
        if self.connection is not None:
            # Over TLS, Twisted closes a connection only once no producer is
            # registered: without this a rediss:// node never stops.
            self.connection.transport.unregisterProducer()
        return self._service.stopService()

    def command(self, *args):
        """Send one command: a Deferred of its reply (bytes, ints, lists),
        or failed with `NotConnected` at once if there is no connection."""
        return self._execute(args, {})

    def flush(self) -> None:
        """Send the commands written so far now rather than on the reactor's
        next turn (`reactorapp.mqtt.writes.flush_now`)."""
        if self.connection is not None:
            flush_now(self.connection.transport)

    def blocking_command(self, *args):
        """A command that may wait in Redis (XREAD BLOCK, SUBSCRIBE): no reply timeout."""
        return self._execute(args, {"apply_timeout": False})

    def _execute(self, args, kwargs):
        connection = self.connection
        if connection is None:
            return fail(NotConnected(f"Redis at {self.url} is not connected"))
        try:
            return connection.execute_command(*args, **kwargs)
        except Exception:  # txredisapi raises when the connection just closed
            return fail()

    # -- the connection's life ----------------------------------------------

    def _build(self):
        command, subscriber = _protocol_classes()
        cls = subscriber if self._on_message is not None else command
        url = self.url
        protocol = cls(None, password=url.password, dbid=url.db or None,
                       convertNumbers=False, username=url.username,
                       replyTimeout=self.reply_timeout)
        protocol.factory = self._factory
        protocol.callLater = self._reactor.callLater  # its reply timer, on our clock
        protocol.whenConnected().addCallback(self._ready)
        return protocol

    def _ready(self, protocol) -> None:
        # Fired from inside connectionMade: hand it over on the next turn, as
        # txredisapi's own factory does, once the transport is in place.
        self._reactor.callLater(0, self._usable, protocol)

    def _usable(self, protocol) -> None:
        if not protocol.connected:
            return
        if self._refusal is not None:
            log.info("Redis at {url} ({name}) accepts us again", url=str(self.url),
                     name=self.name)
        self._refusal = None
        self.connection = protocol
        protocol.whenDisconnected().addCallback(self._lost)
        protocol.transport.registerProducer(self, True)
        log.info("Connected to Redis at {url} ({name})", url=str(self.url), name=self.name)
        if self._on_ready is not None:
            self._on_ready(self)

    def _lost(self, protocol) -> None:
        if self.connection is not protocol:
            return
        self.connection = None
        if self.paused:
            self.resumeProducing()
        log.warn("Lost the connection to Redis at {url} ({name}); reconnecting",
                 url=str(self.url), name=self.name)
        if self._on_lost is not None:
            self._on_lost(self)

    def _refused(self, why) -> None:
        if why != self._refusal:
            log.error("{why} ({name}); trying again", why=why, name=self.name)
        self._refusal = why

    def _message(self, channel, data) -> None:
        try:
            self._on_message(channel, data)
        except Exception:
            log.failure("Handling a notice from Redis failed")

    # -- IPushProducer: Twisted tells us when the write buffer is full ------

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            if self._on_pause is not None:
                self._on_pause()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            if self._on_resume is not None:
                self._on_resume()

    def stopProducing(self) -> None:
        """The connection is closing: `_lost` follows."""
