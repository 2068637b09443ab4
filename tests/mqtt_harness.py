"""In-memory MQTT clients for protocol tests: a broker protocol on a
StringTransport, a Clock for time, and the independent wire reader."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from reactorapp.hub.hub import Hub
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings
from tests.wire import read_packets


class Broker:
    def __init__(self, guard=None, store=None, **settings):
        self.clock = Clock()
        self.hub = Hub(self.clock, store=store)
        self.factory = MQTTFactory(self.hub, self.clock, MQTTSettings(**settings), guard=guard)

    def client(self) -> "Client":
        return Client(self)

    def connect(self, client_id="c", clean=True, keep_alive=0, will=None, **kw) -> "Client":
        client = self.client()
        client.send(P.Connect(client_id=client_id, clean_session=clean,
                              keep_alive=keep_alive, will=will, **kw))
        connack, *client.backlog = client.take()
        assert connack.type == "CONNACK" and connack.return_code == 0, connack
        client.connack = connack
        return client


class Client:
    """One connection to the broker, driven by hand."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.transport = StringTransport()
        self.protocol = broker.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.lost = False
        self.backlog = []
        self._next_id = 0

    def send(self, *packets) -> None:
        self.send_bytes(b"".join(encode(p) for p in packets))

    def send_bytes(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self._reap()

    def take(self):
        """Every packet the broker sent since the last call."""
        data = self.transport.value()
        self.transport.clear()
        packets, self.backlog = self.backlog + read_packets(data), []
        return packets

    def _reap(self) -> None:
        """Deliver connectionLost as the reactor would once closed."""
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

    def subscribe(self, *filters_qos):
        pid = self.packet_id()
        self.send(P.Subscribe(pid, [P.SubscriptionRequest(f, q) for f, q in filters_qos]))
        packets = self.take()
        assert packets[0].type == "SUBACK" and packets[0].packet_id == pid, packets
        return packets[0].return_codes, packets[1:]

    def publish(self, topic, payload=b"", qos=0, retain=False, packet_id=None):
        if qos and packet_id is None:
            packet_id = self.packet_id()
        self.send(P.Publish(topic, payload, qos, retain, packet_id=packet_id if qos else None))
        return packet_id
