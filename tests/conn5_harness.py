"""In-memory MQTT 5 clients for connection tests (CONNECT, sessions, AUTH):
the harness broker of `tests.mqtt_harness` with a guard and a store of the
test's choosing, packets encoded and read at level 5 with the codec
(tests/test_codec5*.py check the codec itself)."""

from __future__ import annotations

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import Parser, encode
from tests.mqtt_harness import Broker, Client


class Broker5(Broker):
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


class Client5(Client):
    """One connection at ``level`` (5 unless told), driven by hand."""

    def __init__(self, broker: Broker5, level: int = P.MQTT_5):
        super().__init__(broker)
        self.level = level
        self.parser = Parser(protocol_level=level, server_side=False)
        self.connack = None

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

    def raw(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def take(self) -> list:
        """Every packet the broker sent since the last call."""
        packets, self.backlog = self.backlog, []
        return packets + self.parser.feed(self.raw())

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
