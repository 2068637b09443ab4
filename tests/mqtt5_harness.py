"""In-memory MQTT 5 clients for message-path tests: the harness broker of
`tests.mqtt_harness`, packets written with the codec's level-5 encoder and
read back with a client-side level-5 parser."""

from __future__ import annotations

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import Parser, encode
from tests.mqtt_harness import Broker, Client

__all__ = ["Broker", "Client5", "connect5"]


class Client5(Client):
    """One level-5 connection to the harness broker."""

    def __init__(self, broker: Broker):
        super().__init__(broker)
        self.parser = Parser(protocol_level=P.MQTT_5, server_side=False)

    def send(self, *packets) -> None:
        self.send_bytes(b"".join(encode(p, P.MQTT_5) for p in packets))

    def take(self):
        data = self.transport.value()
        self.transport.clear()
        packets, self.backlog = self.backlog + self.parser.feed(data), []
        return packets

    def subscribe(self, *requests, identifier=None):
        """``requests``: (filter, qos) pairs or `SubscriptionRequest`s."""
        pid = self.packet_id()
        requests = [r if isinstance(r, P.SubscriptionRequest) else P.SubscriptionRequest(*r)
                    for r in requests]
        properties = {} if identifier is None else {"subscription_identifier": identifier}
        self.send(P.Subscribe(pid, requests, properties))
        suback, *rest = self.take()
        assert type(suback) is P.SubAck and suback.packet_id == pid, suback
        return suback.return_codes, rest

    def publish(self, topic, payload=b"", qos=0, retain=False, packet_id=None, **properties):
        if qos and packet_id is None:
            packet_id = self.packet_id()
        self.send(P.Publish(topic, payload, qos, retain, packet_id=packet_id if qos else None,
                            properties=properties))
        return packet_id


def connect5(broker: Broker, client_id="c", clean=True, **properties) -> Client5:
    """A level-5 CONNECT, CONNACK read; ``properties`` are the CONNECT's."""
    client = Client5(broker)
    client.send(P.Connect(client_id=client_id, clean_session=clean,
                          protocol_level=P.MQTT_5, properties=properties))
    connack, *client.backlog = client.take()
    assert type(connack) is P.ConnAck and connack.return_code == 0, connack
    client.connack = connack
    return client
