"""A 5.0 and a 3.1.1 client on the same topic get the same messages; what
3.1.1 cannot carry (properties) is left out on the way to it. And one wire
form per message and protocol level, shared by every subscriber that needs
nothing of its own."""

from __future__ import annotations

import http.client
import json
import queue
import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import Parser, encode
from tests.brokerproc import running_broker
from tests.mqtt5_harness import Broker, connect5
from tests.paho_client import TIMEOUT, PahoClient, Received


def test_both_levels_get_the_same_messages():
    """Same topics, payloads, QoS and order; the 3.1.1 subscriber's
    PUBLISHes have no properties (its wire format has no room for them)."""
    broker = Broker()
    old = broker.connect("old")
    old.subscribe(("m/#", 2))
    new = connect5(broker, "new")
    new.subscribe(("m/#", 2))
    pub5 = connect5(broker, "pub5")
    pub3 = broker.connect("pub3")
    for i in range(3):
        pub5.publish("m/5", b"five %d" % i, i, content_type="text/plain",
                     user_property=[("i", str(i))], message_expiry_interval=100)
        pub3.publish("m/3", b"three %d" % i, i)
    got_old = [(p.topic, p.payload, p.qos) for p in old.take() if p.type == "PUBLISH"]
    got_new = [p for p in new.take() if type(p) is P.Publish]
    assert got_old == [(p.topic, p.payload, p.qos) for p in got_new]
    assert len(got_old) == 6
    assert [p.properties for p in got_new if p.topic == "m/3"] == [{}] * 3
    assert [p.properties["user_property"] for p in got_new if p.topic == "m/5"] == [
        [("i", "0")], [("i", "1")], [("i", "2")]]


def test_a_message_is_encoded_once_per_level():
    """`Message.encoded`: three subscribers at each level, one encoding per
    level (the 3.1.1 ones under their old keys, the 5.0 ones under keys that
    start with 5); a 5.0 subscriber with a Subscription Identifier gets its
    own packet and leaves the shared ones alone."""
    broker = Broker()
    olds = [broker.connect("old%d" % i) for i in range(3)]
    news = [connect5(broker, "new%d" % i) for i in range(3)]
    for client in olds + news:
        client.subscribe(("c/#", 1))
    special = connect5(broker, "special")
    special.subscribe(("c/#", 1), identifier=3)
    captured = []
    route = broker.hub.route
    broker.hub.route = lambda message: captured.append(message) or route(message)
    pub = connect5(broker, "pub")
    pub.publish("c/x", b"payload", 1, content_type="text/plain")
    (message,) = captured
    keys = set(message.encoded)
    assert keys == {(1, False), (1, False, 5), (5, "properties", None)}
    bodies = {bytes(c.transport.value()) for c in news}
    assert len(bodies) == 1  # same bytes, same packet id 1 for each
    (mine,) = [p for p in special.take() if type(p) is P.Publish]
    assert mine.properties == {"subscription_identifier": [3], "content_type": "text/plain"}


# -- end to end: paho-mqtt's 5.0 and 3.1.1 clients against twistd -n reactorapp ---

class Paho5:
    """A paho-mqtt MQTT 5 client on its own loop thread; what it receives
    (with properties), the reason codes of its SUBACKs and PUBACK/PUBRECs.
    Every wait is bounded."""

    @classmethod
    def resume(cls, broker, client_id: str, **connect_properties) -> Paho5:
        """Connect with Clean Start 0, taking back a kept session."""
        return cls(broker, client_id, clean_start=False, **connect_properties)

    def __init__(self, broker, client_id: str, clean_start: bool = True,
                 **connect_properties) -> None:
        self.client_id = client_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        self.messages: queue.Queue = queue.Queue()
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.changed = threading.Condition()
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connected.set()
        self.client.on_message = lambda c, u, message: self.messages.put(message)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        properties = Properties(PacketTypes.CONNECT)
        for name, value in connect_properties.items():
            setattr(properties, name, value)
        self.client.connect(broker.host, broker.port, keepalive=60, clean_start=clean_start,
                            properties=properties)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), f"{client_id}: no CONNACK"

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self.changed:
            self.subacks[mid] = [code.value for code in reason_codes]
            self.changed.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.changed:
            self.acks[mid] = reason_code.value
            self.changed.notify_all()

    def _wait(self, table: dict, mid: int):
        with self.changed:
            assert self.changed.wait_for(lambda: mid in table, TIMEOUT), self.client_id
            return table.pop(mid)

    def subscribe(self, topic_filter: str, qos: int = 1, identifier: int | None = None,
                  **options) -> list[int]:
        properties = None
        if identifier is not None:
            properties = Properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = identifier
        _, mid = self.client.subscribe(topic_filter, options=SubscribeOptions(qos, **options),
                                       properties=properties)
        return self._wait(self.subacks, mid)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                **props) -> int | None:
        """Publish; at QoS 1/2 wait for the broker's answer and return its
        reason code."""
        properties = Properties(PacketTypes.PUBLISH)
        for name, value in props.items():
            setattr(properties, name, value)
        info = self.client.publish(topic, payload, qos, retain, properties)
        return self._wait(self.acks, info.mid) if qos else None

    def next(self):
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {TIMEOUT} s") from None

    def until(self, topic: str) -> list:
        """What arrived before the marker on ``topic`` (consumed)."""
        before = []
        while (message := self.next()).topic != topic:
            before.append(message)
        return before

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with running_broker(tmp_path_factory.mktemp("mqtt5"), "--http", "none") as running:
        yield running


@pytest.fixture
def clients(broker):
    made = []

    def make(client_id, **properties):
        client = Paho5(broker, client_id, **properties)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def carried(message) -> dict:
    p = message.properties
    return {name: getattr(p, name) for name in (
        "PayloadFormatIndicator", "MessageExpiryInterval", "ContentType", "ResponseTopic",
        "CorrelationData", "UserProperty", "SubscriptionIdentifier") if hasattr(p, name)}


def test_paho_request_response_properties_pass_through(broker, clients):
    """[MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17]
    [MQTT-3.3.2-18] [MQTT-3.3.2-20] with paho on both ends: the responder
    sees the requester's properties as sent, retained messages included
    [MQTT-3.3.1-5]; a 3.1.1 client on the same topic gets the same message
    without them."""
    responder = clients("responder")
    responder.subscribe("req/#", 1)
    old = PahoClient(broker.host, broker.port, "old311").connect()
    try:
        old.subscribe(("req/#", 1))
        requester = clients("requester")
        sent = {"PayloadFormatIndicator": 1, "MessageExpiryInterval": 300,
                "ContentType": "application/json", "ResponseTopic": "resp/requester",
                "CorrelationData": b"\x01\x02", "UserProperty": [("trace", "a"), ("trace", "b")]}
        assert requester.publish("req/time", b'{"q": 1}', 1, retain=True, **sent) == 0
        message = responder.next()
        assert (message.topic, message.payload) == ("req/time", b'{"q": 1}')
        received = carried(message)
        assert received.pop("MessageExpiryInterval") <= 300
        sent.pop("MessageExpiryInterval")
        assert received == sent
        assert old.next() == Received("req/time", b'{"q": 1}', 1, False, False)
        late = clients("late")
        late.subscribe("req/#", 1)
        retained = late.next()
        assert retained.retain and carried(retained)["ContentType"] == "application/json"
        assert carried(retained)["UserProperty"] == [("trace", "a"), ("trace", "b")]
    finally:
        old.close()
        requester.publish("req/time", b"", 1, retain=True)  # clear for other tests


def test_paho_reason_codes_in_puback(broker, clients):
    """§3.4.2.1: 0x10 No matching subscribers; [MQTT-3.3.2-4] 0x99 for a
    payload marked UTF-8 that is not; 0 once somebody listens."""
    pub = clients("rc-pub")
    assert pub.publish("nobody/listens", b"x", 1) == 0x10
    assert pub.publish("nobody/listens", b"\xff\xfe", 1, PayloadFormatIndicator=1) == 0x99
    sub = clients("rc-sub")
    sub.subscribe("nobody/#", 1)
    assert pub.publish("nobody/listens", "ünïcode".encode(), 1, PayloadFormatIndicator=1) == 0
    assert sub.next().payload == "ünïcode".encode()


def test_paho_subscription_options(broker, clients):
    """No Local [MQTT-3.8.3-3], Retain As Published [MQTT-3.3.1-13], Retain
    Handling 2 [MQTT-3.3.1-11], and one PUBLISH carrying both identifiers of
    two overlapping subscriptions [MQTT-3.3.4-4]."""
    other = clients("opt-other")
    assert other.publish("opt/retained", b"old", 1, retain=True) in (0, 0x10)
    me = clients("opt-me")
    assert me.subscribe("opt/#", 1, identifier=1, noLocal=True, retainAsPublished=True,
                        retainHandling=2) == [1]
    assert me.subscribe("opt/+/deep", 1, identifier=2) == [1]
    me.publish("opt/mine", b"own", 1)
    other.publish("opt/theirs", b"live", 1, retain=True)
    other.publish("opt/x/deep", b"both", 1)
    other.publish("opt/end", b"marker", 0)
    got = me.until("opt/end")
    assert [(m.topic, m.payload, bool(m.retain)) for m in got] == [
        ("opt/theirs", b"live", True), ("opt/x/deep", b"both", False)]
    assert sorted(got[1].properties.SubscriptionIdentifier) == [1, 2]
    assert got[0].properties.SubscriptionIdentifier == [1]
    for topic in ("opt/retained", "opt/theirs"):
        other.publish(topic, b"", 1, retain=True)


def test_raw_topic_aliases_end_to_end(broker):
    """Aliases both ways over a socket, which paho does not resolve on
    receipt: the broker sends the topic once, then only its alias, to a
    client that allows 4; the publisher sets and reuses one of ours."""
    sub = Raw5(broker, "alias-sub", topic_alias_maximum=4)
    pub = Raw5(broker, "alias-pub")
    try:
        sub.send(P.Subscribe(1, [P.SubscriptionRequest("fleet/#", 0)]))
        assert type(sub.read()) is P.SubAck
        pub.send(P.Publish("fleet/truck/17/position", b"a", properties={"topic_alias": 1}),
                 P.Publish("", b"b", properties={"topic_alias": 1}),
                 P.Publish("", b"c", properties={"topic_alias": 1}))
        first, second, third = sub.read(), sub.read(), sub.read()
        assert first.topic == "fleet/truck/17/position"
        alias = first.properties["topic_alias"]
        assert 1 <= alias <= 4
        assert [(p.topic, p.properties, p.payload) for p in (second, third)] == [
            ("", {"topic_alias": alias}, b"b"), ("", {"topic_alias": alias}, b"c")]
    finally:
        sub.close()
        pub.close()


class Raw5:
    """A blocking level-5 client on a socket, written and read with the codec."""

    def __init__(self, broker, client_id: str, **properties) -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT)
        self.parser = Parser(protocol_level=P.MQTT_5, server_side=False)
        self.pending: list = []
        self.send(P.Connect(client_id, protocol_level=P.MQTT_5, properties=properties))
        connack = self.read()
        assert type(connack) is P.ConnAck and connack.return_code == 0, connack

    def send(self, *packets) -> None:
        self.sock.sendall(b"".join(encode(p, P.MQTT_5) for p in packets))

    def read(self):
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the broker closed the connection"
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def test_options_identifiers_and_queued_properties_survive_a_restart(tmp_path):
    """A persistent 5.0 session's subscription options and identifiers are
    kept in the store, and so is a queued message with its properties: after
    twistd restarts, the client gets the message it missed, with its
    properties and its subscription's identifier, and No Local still keeps
    its own messages from it."""
    with running_broker(tmp_path, "--http", "none") as broker:
        me = Paho5(broker, "keeper", SessionExpiryInterval=3600)
        assert me.subscribe("keep/#", 1, identifier=42, noLocal=True) == [1]
        me.close()
        other = Paho5(broker, "other")
        assert other.publish("keep/it", b"missed", 1, ContentType="text/plain",
                             UserProperty=[("k", "v")]) == 0
        other.close()
    with running_broker(tmp_path, "--http", "none") as broker:
        me = Paho5.resume(broker, "keeper", SessionExpiryInterval=3600)
        try:
            missed = me.next()
            assert (missed.topic, missed.payload) == ("keep/it", b"missed")
            assert carried(missed) == {"ContentType": "text/plain", "UserProperty": [("k", "v")],
                                       "SubscriptionIdentifier": [42]}
            me.publish("keep/mine", b"own", 1)
            other = Paho5(broker, "other")
            other.publish("keep/end", b"marker", 1)
            other.close()
            assert [m.payload for m in me.until("keep/end")] == []
        finally:
            me.close()


def get_json(broker, path: str):
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return json.loads(body)
    finally:
        connection.close()


def test_the_session_expiry_a_client_chose_survives_a_restart(tmp_path):
    """[MQTT-3.1.2-23] A 5.0 client's Session Expiry Interval (here two
    minutes, shorter than --session-expiry) holds after twistd restarts:
    the session API shows it, with the time left counting from start-up,
    where the session would otherwise be kept for --session-expiry."""
    with running_broker(tmp_path, "--session-expiry", "3600") as broker:
        me = Paho5(broker, "brief", SessionExpiryInterval=120)
        assert me.subscribe("brief/#", 1) == [1]
        me.close()
        assert get_json(broker, "/api/v1/sessions/brief")["session_expiry"] == 120
    with running_broker(tmp_path, "--session-expiry", "3600") as broker:
        shown = get_json(broker, "/api/v1/sessions/brief")
        assert shown["connected"] is False
        assert shown["session_expiry"] == 120
        assert 0 < shown["expires_in"] <= 120
        assert shown["subscriptions"] == {"brief/#": 1}


def test_a_delayed_will_survives_a_restart(tmp_path):
    """[§4.1] [MQTT-3.1.2-8] A will waiting for its Will Delay Interval is
    session state: twistd restarts before the delay ends, and the will
    still goes out once it has (counted again from start-up)."""
    with running_broker(tmp_path, "--http", "none") as broker:
        watcher = Paho5(broker, "watcher", SessionExpiryInterval=3600)
        assert watcher.subscribe("wills/#", 1) == [1]
        watcher.close()
        dev = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT)
        dev.sendall(encode(P.Connect(
            "dev", clean_session=False, protocol_level=P.MQTT_5,
            properties={"session_expiry_interval": 3600},
            will=P.Will("wills/dev", b"gone", 1, properties={"will_delay_interval": 1})),
            P.MQTT_5))
        assert dev.recv(64)[:1] == b"\x20"  # CONNACK
        # "Disconnect with Will Message" keeps the will; the broker closes
        # the connection once the will waits in the session.
        dev.sendall(encode(P.Disconnect(P.ReasonCode.DISCONNECT_WITH_WILL), P.MQTT_5))
        assert dev.recv(64) == b""
        dev.close()
    with running_broker(tmp_path, "--http", "none") as broker:
        watcher = Paho5.resume(broker, "watcher", SessionExpiryInterval=3600)
        try:
            will = watcher.next()
            assert (will.topic, will.payload) == ("wills/dev", b"gone")
        finally:
            watcher.close()
