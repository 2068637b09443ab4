"""MQTT over WebSocket at /mqtt, on the HTTP listener.

Autobahn speaks WebSocket; the MQTT side is the very `MQTTProtocol` that
serves TCP, built by an `MQTTFactory` of its own so that its traffic is
counted as "websocket". The WebSocket connection is the MQTT protocol's
transport: MQTT bytes ride in binary messages, and incoming message data is
fed to the MQTT parser as it arrives, so a frame may hold part of a packet
or several packets [MQTT-6.0.0-2] and nothing is buffered per message.
"""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from reactorapp.web.errors import ApiError, error_body

#: WebSocket subprotocols for MQTT, in order of preference [MQTT-6.0.0-4];
#: "mqttv3.1" is what older clients (MQTT 3.1 era) ask for.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")


def choose_subprotocol(offered) -> str | None:
    for name in SUBPROTOCOLS:
        if name in offered:
            return name
    return None


@implementer(ITransport, IConsumer, IPushProducer)
class WebSocketTransport:
    """What the MQTT protocol sees as its transport: one binary message per
    write; producer calls go to the TCP connection underneath, so
    back-pressure works as it does over plain TCP."""

    def __init__(self, websocket: MQTTWebSocketProtocol) -> None:
        self._websocket = websocket

    @property
    def bufferSize(self) -> int:
        """The TCP connection's: where --send-buffer applies (an
        AttributeError, as for a transport without one, when it has none)."""
        return self._websocket.transport.bufferSize

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        transport = self._websocket.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = size

    def write(self, data: bytes) -> None:
        websocket = self._websocket
        if websocket.state == WebSocketProtocol.STATE_OPEN:
            websocket.sendMessage(data, isBinary=True)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """A WebSocket closing handshake; autobahn drops TCP afterwards."""
        websocket = self._websocket
        if websocket.state == WebSocketProtocol.STATE_OPEN:
            websocket.sendClose(WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL)
        else:
            websocket.dropConnection(abort=False)

    def abortConnection(self) -> None:
        self._websocket.dropConnection(abort=True)

    def registerProducer(self, producer, streaming) -> None:
        self._websocket.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._websocket.unregisterProducer()

    def pauseProducing(self) -> None:
        self._websocket.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._websocket.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._websocket.transport.stopProducing()

    def getPeer(self):
        return self._websocket.transport.getPeer()

    def getHost(self):
        return self._websocket.transport.getHost()


class MQTTWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection carrying one MQTT connection."""

    mqtt = None
    _binary = False

    def onConnect(self, request):
        protocol = choose_subprotocol(request.protocols)
        if protocol is None:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 "MQTT over WebSocket needs the subprotocol 'mqtt'.")
        return protocol

    def onOpen(self) -> None:
        self.factory.stats.websocket_connections += 1
        self.mqtt = self.factory.mqtt_factory.buildProtocol(self.transport.getPeer())
        self.mqtt.makeConnection(WebSocketTransport(self))

    # Streaming reception: autobahn hands over message data as it arrives
    # instead of collecting whole messages.

    def onMessageBegin(self, isBinary: bool) -> None:
        self._binary = isBinary
        if not isBinary:
            # [MQTT-6.0.0-1]: MQTT travels in binary messages only.
            self._fail_connection(WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA,
                                  "MQTT over WebSocket uses binary messages only.")

    def onMessageFrameBegin(self, length: int) -> None:
        pass

    def onMessageFrameData(self, payload: bytes) -> None:
        if self._binary and self.mqtt is not None and not self.failedByMe:
            self.mqtt.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        pass

    def onClose(self, wasClean, code, reason) -> None:
        mqtt, self.mqtt = self.mqtt, None
        if mqtt is not None:
            self.factory.stats.websocket_connections -= 1
            mqtt.connectionLost(Failure(ConnectionDone()))


class MQTTWebSocketFactory(WebSocketServerFactory):
    """Builds WebSocket connections whose MQTT side comes from ``mqtt_factory``."""

    protocol = MQTTWebSocketProtocol

    def __init__(self, mqtt_factory, stats, reactor) -> None:
        super().__init__(reactor=reactor, protocols=list(SUBPROTOCOLS), server="reactorapp")
        self.mqtt_factory = mqtt_factory
        self.stats = stats
        # A close handshake rather than a dropped TCP connection on errors,
        # so clients see why; no compression (MQTT payloads are the clients'
        # business, and inflating costs memory).
        self.setProtocolOptions(failByDrop=False, openHandshakeTimeout=10,
                                closeHandshakeTimeout=5)


class MQTTWebSocketResource(WebSocketResource):
    """/mqtt: hands the connection over to autobahn after checking that the
    request is a WebSocket upgrade for MQTT, answering JSON errors otherwise."""

    def render(self, request):
        problem = self._problem(request)
        if problem is not None:
            return error_body(request, problem)
        # The HTTP channel is the connection's producer until now; the
        # WebSocket side registers its own.
        request.transport.unregisterProducer()
        # From here on the connection is MQTT's, counted by its limiter.
        release_connection(request)
        return super().render(request)

    @staticmethod
    def _problem(request) -> ApiError | None:
        if request.postpath not in ([], [b""]):
            return ApiError(404, "not found",
                            f"There is nothing at {request.path.decode('utf-8', 'replace')}.")
        if request.method != b"GET":
            return ApiError(405, "method not allowed", "/mqtt answers GET (a WebSocket upgrade).",
                            {b"Allow": b"GET"})
        upgrade = (request.getHeader(b"Upgrade") or b"").lower()
        if upgrade != b"websocket":
            return ApiError(426, "upgrade required",
                            "/mqtt is MQTT over WebSocket; connect with a WebSocket client "
                            "and the subprotocol 'mqtt'.", {b"Upgrade": b"websocket"})
        offered = [p.strip().decode("latin-1")
                   for value in request.requestHeaders.getRawHeaders(b"Sec-WebSocket-Protocol", [])
                   for p in value.split(b",")]
        if choose_subprotocol(offered) is None:
            return ApiError(400, "bad request",
                            "MQTT over WebSocket needs the subprotocol 'mqtt'.")
        return None


def release_connection(request) -> None:
    """The connection of ``request`` is handed over to a WebSocket: it no
    longer counts as an HTTP connection (`WebSite.buildProtocol` gave its
    protocol a ``releaseSlot``). Found as autobahn finds it, TLS included."""
    transport = request.transport
    if isinstance(transport, ProtocolWrapper):  # TLS
        protocol = transport.wrappedProtocol
    else:
        protocol = getattr(transport, "protocol", None)
        if isinstance(protocol, ProtocolWrapper):
            protocol = protocol.wrappedProtocol
    release = getattr(protocol, "releaseSlot", None)
    if release is not None:
        release()
