"""The level-5 codec against a real MQTT 5 client: paho-mqtt talks to a bare
socket served by this test, which reads paho's packets with our Parser and
answers with our encoder. Every property paho sends comes out as paho set
it, and paho reads what we encode (CONNACK, SUBACK, PUBACK with a reason
code, PUBLISH with Subscription Identifiers). Statement ids are MQTT 5.0's.

paho runs its loop on a thread; the test thread serves the socket and waits
on events and socket reads with a timeout, never a sleep.
"""

from __future__ import annotations

import queue
import socket
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from reactorapp.mqtt.codec import MAX_CONNECT_SIZE, Parser, encode
from reactorapp.mqtt.packets import (
    ConnAck, Connect, Disconnect, PubAck, Publish, SubAck, Subscribe, SubscriptionRequest,
)

TIMEOUT = 10.0


class Peer:
    """The server end of one connection: our codec on a plain socket."""

    def __init__(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        self.conn = conn
        self.parser = Parser(max_connect_size=MAX_CONNECT_SIZE)
        self.pending: list = []

    def read(self):
        while not self.pending:
            data = self.conn.recv(65536)
            assert data, "paho closed the connection"
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    def send(self, packet) -> None:
        self.conn.sendall(encode(packet, 5))


def properties(kind: int, **values) -> Properties:
    props = Properties(kind)
    for name, value in values.items():
        if name == "UserProperty":
            for pair in value:
                props.UserProperty = pair  # paho appends each pair
        else:
            setattr(props, name, value)
    return props


def test_paho_mqtt5_client_and_our_codec_understand_each_other():
    """[§2.2.2] [MQTT-3.3.2-18] [MQTT-3.3.4-3] [§3.4.2.1] [§3.8.3.1] [§3.14.2.1]
    A real 5.0 client's CONNECT (with Will properties), SUBSCRIBE (options and
    Subscription Identifier), PUBLISH (request/response properties, user
    properties in order), PUBACK and DISCONNECT decode to what it set; our
    CONNACK, SUBACK, PUBACK 0x10 and a PUBLISH with two Subscription
    Identifiers reach it intact."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(TIMEOUT)
    events = {name: threading.Event() for name in ("connect", "subscribe", "publish")}
    seen: dict = {}
    messages: queue.Queue = queue.Queue()

    def on_connect(client, userdata, flags, reason_code, props):
        seen["connack"] = (reason_code.value, props.TopicAliasMaximum, props.ReceiveMaximum)
        events["connect"].set()

    def on_subscribe(client, userdata, mid, reason_codes, props):
        seen["suback"] = [code.value for code in reason_codes]
        events["subscribe"].set()

    def on_publish(client, userdata, mid, reason_code, props):
        seen["puback"] = (reason_code.value, props.ReasonString)
        events["publish"].set()

    def on_message(client, userdata, message):
        messages.put(message)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-5",
                         protocol=mqtt.MQTTv5, reconnect_on_failure=False)
    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_publish, client.on_message = on_publish, on_message
    client.will_set("devices/paho-5/status", b"gone", 1, True, properties=properties(
        PacketTypes.WILLMESSAGE, WillDelayInterval=5, ContentType="text/plain"))
    client.connect_async("127.0.0.1", server.getsockname()[1], keepalive=60, clean_start=True,
                         properties=properties(PacketTypes.CONNECT, SessionExpiryInterval=30,
                                               ReceiveMaximum=10,
                                               UserProperty=[("who", "paho")]))
    client.loop_start()
    conn = None
    try:
        conn, _ = server.accept()
        peer = Peer(conn)

        connect = peer.read()
        assert type(connect) is Connect and connect.protocol_level == 5
        assert peer.parser.protocol_level == 5
        assert (connect.client_id, connect.keep_alive, connect.clean_session) == ("paho-5", 60, True)
        assert connect.properties == {"session_expiry_interval": 30, "receive_maximum": 10,
                                      "user_property": [("who", "paho")]}
        assert (connect.will.topic, connect.will.payload, connect.will.qos, connect.will.retain) \
            == ("devices/paho-5/status", b"gone", 1, True)
        assert connect.will.properties == {"will_delay_interval": 5, "content_type": "text/plain"}
        peer.send(ConnAck(False, 0, {"topic_alias_maximum": 3, "receive_maximum": 20}))
        assert events["connect"].wait(TIMEOUT)
        assert seen["connack"] == (0, 3, 20)

        _, mid = client.subscribe("a/+", options=SubscribeOptions(
            qos=1, noLocal=True, retainAsPublished=True, retainHandling=2),
            properties=properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
        assert peer.read() == Subscribe(mid, [SubscriptionRequest("a/+", 1, True, True, 2)],
                                        {"subscription_identifier": 7})
        peer.send(SubAck(mid, [1], {"reason_string": "granted"}))
        assert events["subscribe"].wait(TIMEOUT)
        assert seen["suback"] == [1]

        request = properties(
            PacketTypes.PUBLISH, ContentType="application/json", ResponseTopic="replies/paho-5",
            CorrelationData=b"\x00\x01", MessageExpiryInterval=60, PayloadFormatIndicator=1,
            UserProperty=[("trace", "1"), ("trace", "2"), ("a", "b")])
        info = client.publish("a/b", b'{"n": 1}', qos=1, properties=request)
        publish = peer.read()
        assert (publish.topic, publish.payload, publish.qos, publish.packet_id) == (
            "a/b", b'{"n": 1}', 1, info.mid)
        assert publish.properties == {
            "content_type": "application/json", "response_topic": "replies/paho-5",
            "correlation_data": b"\x00\x01", "message_expiry_interval": 60,
            "payload_format_indicator": 1,
            "user_property": [("trace", "1"), ("trace", "2"), ("a", "b")]}
        peer.send(PubAck(info.mid, 0x10, {"reason_string": "no subscribers"}))
        assert events["publish"].wait(TIMEOUT)
        assert seen["puback"] == (0x10, "no subscribers")

        peer.send(Publish("a/c", b"to you", 1, packet_id=9, properties={
            "subscription_identifier": [7, 300], "user_property": [("k", "v")]}))
        message = messages.get(timeout=TIMEOUT)
        assert (message.topic, message.payload, message.qos) == ("a/c", b"to you", 1)
        assert message.properties.SubscriptionIdentifier == [7, 300]
        assert message.properties.UserProperty == [("k", "v")]
        assert peer.read() == PubAck(9)

        client.disconnect(
            reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"),
            properties=properties(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
        assert peer.read() == Disconnect(0x04, {"session_expiry_interval": 0})
    finally:
        client.loop_stop()
        if conn is not None:
            conn.close()
        server.close()
