"""The HTTP site: the URL tree, and requests whose bodies have a size limit."""

from __future__ import annotations

import inspect
from io import BytesIO

from twisted.logger import Logger
from twisted.web import http, server

from reactorapp.addresses import address_key
from reactorapp.auth.limits import ConnectionLimiter

from reactorapp.web.api import Clients, OpenAPI, Publish, Retained, Sessions, Shared, Stats, Topics
from reactorapp.web.dashboard import DashboardPage, StaticFiles, load_static
from reactorapp.web.errors import (
    ApiError, Router, error_body, internal_error_body, json_bytes,
)
from reactorapp.web.health import Health, Ready
from reactorapp.web.metrics import HubCollector, Metrics, WebCollector
from reactorapp.web.sse import Stream
from reactorapp.web.stats import WebStats
from reactorapp.web.websocket import MQTTWebSocketFactory, MQTTWebSocketResource

log = Logger()

#: Seconds a connection is kept open, reading and discarding, after an
#: oversized body was refused, so that the client reads the 413 instead of
#: a reset connection.
LINGER = 2.0


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload too large",
                    f"The request body is larger than {limit} bytes (--max-body-size).")


class LimitedRequest(server.Request):
    """A request whose body may not exceed the site's ``max_body_size``.

    The limit is enforced as the body arrives: a Content-Length above it is
    refused before any of the body is read, and a chunked body as soon as
    it crosses the limit. Past that point the body is discarded, never
    buffered. Over HTTP/1.x the 413 goes out at once, and the connection
    closes when the client has finished sending or after `LINGER` seconds;
    elsewhere the 413 is the answer once the body has been read.
    """

    _refused = False  # the body is over the limit
    _answered = False  # ... and the 413 is already written
    _received = 0
    _linger = None

    def gotLength(self, length):
        limit = self.channel.site.max_body_size
        if length is not None and length > limit:
            self._refuse(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        limit = self.channel.site.max_body_size
        if self._received > limit:
            self._refuse(limit)
            return
        super().handleContentChunk(data)

    def _refuse(self, limit: int) -> None:
        self._refused = True
        self.content = BytesIO()  # what was read so far is let go
        channel = self.channel
        if not isinstance(channel, http.HTTPChannel) or channel.transport is None:
            return
        # No "100 Continue" for a body that will not be taken.
        self.requestHeaders.removeHeader(b"Expect")
        body = json_bytes({"error": "payload too large", "detail": too_large(limit).detail})
        channel.transport.write(
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self._answered = True
        self._linger = channel.site.reactor.callLater(LINGER, channel.loseConnection)

    def requestReceived(self, command, path, version):
        if self._answered:
            # The rest of the body was read and discarded; the 413 is out.
            self._stop_lingering()
            self.channel.loseConnection()
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        self._stop_lingering()
        super().connectionLost(reason)

    def _stop_lingering(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None

    def process(self):
        if self._refused:
            self.site = self.channel.site
            self.write(error_body(self, too_large(self.site.max_body_size)))
            self.finish()
            return
        super().process()

    def processingFailed(self, reason):
        """A bug, not the client's fault: log it, answer a JSON 500."""
        log.failure("Answering {method} {uri} failed", reason, method=self.method, uri=self.uri)
        if self.channel is None:
            return reason  # the client has gone: nothing to answer
        if not self.startedWriting:
            self.write(internal_error_body(self))
        self.finish()
        return reason


#: Whether this Twisted can be told not to parse request bodies as forms
#: (25.5 and later).
_FORMS_OPTIONAL = "parsePOSTFormSubmission" in inspect.signature(server.Site.__init__).parameters


class WebSite(server.Site):
    """A Site with `LimitedRequest` requests, no tracebacks for clients, and
    a bound on open connections (``limiter``: in total and per address).

    A connection over the bound is closed at once, before a byte is read
    (``refused`` counts them). One that becomes a WebSocket leaves the
    count: from then on it is an MQTT connection, counted as one.

    Request bodies are JSON, NDJSON or raw payloads, never form fields: the
    API reads only the URL's query. Twisted is told not to parse them as
    forms (``curl -d`` labels every body a form), which costs a publish
    request a third of its time and puts every field of a form in memory.
    """

    requestFactory = LimitedRequest
    displayTracebacks = False

    def __init__(self, root, *, max_body_size: int, reactor,
                 limiter: ConnectionLimiter | None = None) -> None:
        if _FORMS_OPTIONAL:
            super().__init__(root, reactor=reactor, parsePOSTFormSubmission=False)
        else:
            super().__init__(root, reactor=reactor)
        self.max_body_size = max_body_size
        self.limiter = limiter if limiter is not None else ConnectionLimiter()
        self.refused = 0

    def buildProtocol(self, addr):
        address = address_key(addr)
        if not self.limiter.admit(address):
            self.refused += 1
            return None  # the listening port closes the connection
        protocol = super().buildProtocol(addr)
        slot = [address]

        def release() -> None:
            if slot:
                self.limiter.release(slot.pop())

        lost = protocol.connectionLost

        def connectionLost(reason):
            release()
            return lost(reason)

        protocol.connectionLost = connectionLost
        protocol.releaseSlot = release
        return protocol


def make_site(hub, reactor, websocket_mqtt_factory, *, max_body_size: int,
              readiness, registry, stats: WebStats | None = None,
              api: dict | None = None, limiter: ConnectionLimiter | None = None,
              stream_sessions=None) -> WebSite:
    """Build the whole URL tree.

    ``websocket_mqtt_factory`` is the MQTTFactory whose protocols serve /mqtt;
    ``readiness`` decides /readyz; ``registry`` is what /metrics shows, and
    gets the hub's and this site's collectors here; ``api`` adds resources
    under /api/v1 by name (``{b"webhooks": ...}``). A resource with an
    ``openapi`` attribute (``{"paths": ..., "components": ...}``) is
    described in /api/v1/openapi.json too. ``limiter`` bounds open
    connections (none by default). ``stream_sessions`` keeps the
    named event-stream sessions (a `reactorapp.web.streams.StreamSessions`
    using this ``stats``), or is None: there are none.
    """
    stats = stats if stats is not None else WebStats()
    registry.register(HubCollector(hub))
    registry.register(WebCollector(stats))
    files = load_static()

    root = Router()
    root.putChild(b"", DashboardPage(files))
    root.putChild(b"static", StaticFiles(files))
    root.putChild(b"healthz", Health())
    root.putChild(b"readyz", Ready(readiness))
    root.putChild(b"metrics", Metrics(registry))
    root.putChild(b"mqtt", MQTTWebSocketResource(
        MQTTWebSocketFactory(websocket_mqtt_factory, stats, reactor)))

    v1 = Router()
    root.putChild(b"api", Router())
    root.children[b"api"].putChild(b"v1", v1)
    http_traffic = hub.stats.traffic_for("http")
    v1.putChild(b"publish", Publish(hub, http_traffic))
    v1.putChild(b"topics", Topics(hub, http_traffic))
    v1.putChild(b"retained", Retained(hub))
    v1.putChild(b"stream", Stream(hub, reactor, stats, hub.stats.traffic_for("sse"),
                                  sessions=stream_sessions))
    v1.putChild(b"clients", Clients(hub))
    v1.putChild(b"sessions", Sessions(hub, stream_sessions))
    v1.putChild(b"shared", Shared(hub))
    v1.putChild(b"stats", Stats(hub, stats))
    extra = api or {}
    for name, child in extra.items():
        v1.putChild(name, child)
    v1.putChild(b"openapi.json", OpenAPI(
        [child.openapi for child in extra.values() if getattr(child, "openapi", None)]))

    site = WebSite(root, max_body_size=max_body_size, reactor=reactor, limiter=limiter)
    site.stats = stats
    return site
