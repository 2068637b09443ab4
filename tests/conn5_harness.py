"""In-memory MQTT 5 clients for connection tests (CONNECT, sessions, AUTH):
the broker's protocol on a StringTransport and a Clock, a guard and a store
of the test's choosing, packets encoded and read at level 5 with the codec
(tests/test_codec5*.py check the codec itself)."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from reactorapp.hub.hub import Hub
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import Parser, encode
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings


class Broker5:
    def __init__(self, guard=None, store=None, **settings):
        self.clock = Clock()
        self.hub = Hub(self.clock, store=store)
        self.factory = MQTTFactory(self.hub, self.clock, MQTTSettings(**settings), guard=guard)

    def client(self) -> Client5:
        return Client5(self)

    def connect(self, client_id="c", clean=True, keep_alive=0, will=None, properties=None,
                **kw) -> Client5:
        """A 5.0 client whose CONNECT was accepted (``client.connack``)."""
        client = self.client()
        connack = client.connect(client_id, clean, keep_alive, will, properties, **kw)
        assert connack.return_code == 0, connack
        return client

    def connect311(self, client_id="old", clean=True, **kw) -> Client5:
        client = Client5(self, level=P.MQTT_3_1_1)
        client.send(P.Connect(client_id=client_id, clean_session=clean, **kw))
        (connack,) = client.take()
        assert connack.return_code == 0, connack
        return client


class Client5:
    """One connection to the broker, driven by hand."""

    def __init__(self, broker: Broker5, level: int = P.MQTT_5):
        self.broker = broker
        self.level = level
        self.transport = StringTransport()
        self.protocol = broker.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.parser = Parser(protocol_level=level, server_side=False)
        self.lost = False
        self.connack = None
        self._next_id = 0

    def connect(self, client_id="c", clean=True, keep_alive=0, will=None, properties=None,
                **kw) -> P.ConnAck:
        self.send(P.Connect(client_id=client_id, clean_session=clean, keep_alive=keep_alive,
                            will=will, protocol_level=self.level,
                            properties=dict(properties or {}), **kw))
        packets = self.take()
        self.connack = packets[0]
        self.backlog = packets[1:]
        assert type(self.connack) is P.ConnAck, packets
        return self.connack

    def send(self, *packets) -> None:
        self.send_bytes(b"".join(encode(p, self.level) for p in packets))

    def send_bytes(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self._reap()

    def raw(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def take(self) -> list:
        """Every packet the broker sent since the last call."""
        packets = getattr(self, "backlog", [])
        self.backlog = []
        return packets + self.parser.feed(self.raw())

    def _reap(self) -> None:
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def drop(self) -> None:
        """The network goes away without a DISCONNECT."""
        self.lost = True
        self.transport.disconnecting = True
        self.protocol.connectionLost(Failure(ConnectionLost()))

    def advance(self, seconds: float) -> None:
        self.broker.clock.advance(seconds)
        self._reap()

    @property
    def closed(self) -> bool:
        self._reap()
        return self.transport.disconnecting

    def packet_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def subscribe(self, *filters_qos) -> list[int]:
        pid = self.packet_id()
        self.send(P.Subscribe(pid, [P.SubscriptionRequest(f, q) for f, q in filters_qos]))
        packets = self.take()
        assert type(packets[0]) is P.SubAck, packets
        self.backlog = packets[1:]
        return packets[0].return_codes

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None) -> int | None:
        packet_id = self.packet_id() if qos else None
        self.send(P.Publish(topic, payload, qos, retain, packet_id=packet_id,
                            properties=dict(properties or {})))
        return packet_id
