"""MQTT 5 PUBLISH through the broker: properties handed on unchanged,
per-hop ones never, the Payload Format check, and the reason codes of
PUBACK/PUBREC. In memory, packets written and read with the codec at level
5 (the end-to-end tests with paho-mqtt are in test_mqtt5_mixed_e2e.py)."""

from __future__ import annotations

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.mqtt5_harness import Broker, connect5

#: Every property that travels with a message, user properties repeated and
#: in an order that must be kept.
CARRIED = {
    "payload_format_indicator": 1,
    "message_expiry_interval": 120,
    "content_type": "application/json",
    "response_topic": "replies/42",
    "correlation_data": b"\x00\xffid",
    "user_property": [("b", "2"), ("a", "1"), ("b", "3")],
}


def pair(broker=None, **sub_connect):
    broker = broker or Broker()
    sub = connect5(broker, "sub", **sub_connect)
    sub.subscribe(("t/#", 2))
    pub = connect5(broker, "pub")
    return broker, pub, sub


def test_properties_reach_a_5_0_subscriber_unchanged():
    """[MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17]
    [MQTT-3.3.2-18] [MQTT-3.3.2-20]: Payload Format Indicator, Response
    Topic, Correlation Data, User Properties (in order) and Content Type go
    to the subscriber as they came; the Message Expiry Interval too, having
    not waited [MQTT-3.3.2-6]."""
    broker, pub, sub = pair()
    for qos in (0, 1, 2):
        pub.publish("t/x", b'{"q": %d}' % qos, qos, **CARRIED)
        (received,) = sub.take()
        assert received.properties == CARRIED, qos
        assert received.payload == b'{"q": %d}' % qos


def test_per_hop_properties_are_not_forwarded():
    """[MQTT-3.3.2-7]: the publisher's Topic Alias stays on its connection;
    the subscriber gets the topic name."""
    broker, pub, sub = pair()
    pub.publish("t/aliased", b"1", 1, topic_alias=1, content_type="text/plain")
    pub.publish("", b"2", 1, topic_alias=1)
    first, second = [p for p in sub.take() if type(p) is P.Publish]
    assert (first.topic, first.properties) == ("t/aliased", {"content_type": "text/plain"})
    assert (second.topic, second.properties) == ("t/aliased", {})


def test_a_subscription_identifier_from_a_client_is_a_protocol_error():
    """[MQTT-3.3.4-6]: a PUBLISH from a client may not carry one."""
    broker, pub, sub = pair()
    pub.publish("t/x", b"x", 1, subscription_identifier=[4])
    assert pub.closed
    assert sub.take() == []


def test_retained_messages_keep_their_properties():
    """[MQTT-3.3.1-5]: the retained message is stored with its properties
    and a later subscriber gets them, with RETAIN 1."""
    broker, pub, _ = pair()
    pub.publish("t/r", b"kept", 1, retain=True, content_type="text/plain",
                user_property=[("k", "v")], correlation_data=b"c")
    late = connect5(broker, "late")
    _, (retained,) = late.subscribe(("t/r", 1))
    assert retained.retain and retained.payload == b"kept"
    assert retained.properties == {"content_type": "text/plain", "user_property": [("k", "v")],
                                   "correlation_data": b"c"}


def test_a_payload_that_is_not_the_utf8_it_claims_is_refused():
    """[MQTT-3.3.2-4] (§3.3.2.3.2): Payload Format Indicator 1 with a payload
    that is not UTF-8 gets PUBACK or PUBREC 0x99 and is not forwarded; a
    PUBREC that fails ends the exchange."""
    broker, pub, sub = pair()
    pid1 = pub.publish("t/x", b"\xff\xfe", 1, payload_format_indicator=1)
    pid2 = pub.publish("t/x", b"\xc3\x28", 2, payload_format_indicator=1)
    ok = pub.publish("t/x", "héllo".encode(), 1, payload_format_indicator=1)
    acks = pub.take()
    assert [(type(a), a.packet_id, a.reason_code) for a in acks] == [
        (P.PubAck, pid1, 0x99), (P.PubRec, pid2, 0x99), (P.PubAck, ok, 0)]
    assert [p.payload for p in sub.take()] == ["héllo".encode()]
    assert pid2 not in pub.protocol.session.awaiting_pubrel


def test_a_qos0_payload_that_is_not_utf8_ends_the_connection():
    """At QoS 0 there is no acknowledgement to refuse it with: the server
    disconnects (§4.13, reason code 0x99), and forwards nothing."""
    broker, pub, sub = pair()
    pub.publish("t/x", b"\xff", 0, payload_format_indicator=1)
    assert pub.closed
    sent = pub.take()
    if sent:  # a DISCONNECT goes first once level-5 connections send it
        assert [(type(p), p.reason_code) for p in sent] == [(P.Disconnect, 0x99)]
    assert sub.take() == []


def test_no_matching_subscribers_is_said_in_the_acknowledgement():
    """§3.4.2.1: PUBACK/PUBREC 0x10 when nobody subscribed; 0 otherwise. The
    message is still accepted (a retained one is kept)."""
    broker, pub, sub = pair()
    a = pub.publish("nobody/here", b"x", 1)
    b = pub.publish("nobody/here", b"x", 2, retain=True)
    c = pub.publish("t/someone", b"x", 1)
    acks = [(type(p), p.packet_id, p.reason_code) for p in pub.take()]
    assert acks == [(P.PubAck, a, 0x10), (P.PubRec, b, 0x10), (P.PubAck, c, 0)]
    assert broker.hub.retained_count == 1
    pub.send(P.PubRel(b))
    assert [(type(p), p.reason_code) for p in pub.take()] == [(P.PubComp, 0)]


def test_the_acknowledgement_is_two_bytes_when_all_is_well():
    """§3.4.2.1: reason 0 and no properties: the short form, as 3.1.1."""
    broker, pub, sub = pair()
    pub.publish("t/x", b"x", 1)
    assert pub.transport.value() == encode(P.PubAck(1), P.MQTT_5) == b"\x40\x02\x00\x01"


def test_a_will_carries_its_properties():
    """§3.1.3.2: the will is published with its properties, like a PUBLISH;
    the Will Delay Interval stays behind."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("will/#", 1))
    from tests.mqtt5_harness import Client5

    client = Client5(broker)
    will = P.Will("will/c", b"gone", 1, False,
                  {"content_type": "text/plain", "user_property": [("why", "lost")],
                   "will_delay_interval": 0})
    client.send(P.Connect("c", True, 0, will, protocol_level=P.MQTT_5))
    client.drop()
    (received,) = [p for p in sub.take() if type(p) is P.Publish]
    assert received.payload == b"gone"
    assert received.properties == {"content_type": "text/plain",
                                   "user_property": [("why", "lost")]}


def test_a_shared_subscription_counts_as_a_subscriber():
    """§3.4.2.1: members of a shared subscription are subscribers (no 0x10),
    and asking does not take a member's turn: the group still alternates."""
    broker = Broker()
    one, two = broker.connect("one"), broker.connect("two")
    for member in (one, two):
        member.subscribe(("$share/g/jobs/#", 1))
    pub = connect5(broker, "pub")
    for i in range(4):
        pub.publish("jobs/x", b"%d" % i, 1)
    assert [(type(a), a.reason_code) for a in pub.take()] == [(P.PubAck, 0)] * 4
    got = [[p.payload for p in member.take() if p.type == "PUBLISH"] for member in (one, two)]
    assert sorted(got) == [[b"0", b"2"], [b"1", b"3"]]


def test_a_publish_the_acl_refuses_gets_0x87():
    """§3.4.2.1: 0x87 Not authorized, and it is not forwarded."""
    from reactorapp.auth.acl import ACL, ACLAuthorizer
    from reactorapp.auth.guard import Guard

    broker = Broker()
    broker.factory.guard = Guard(authorizer=ACLAuthorizer(ACL.parse("topic readwrite open/#\n")))
    sub = connect5(broker, "sub")
    sub.subscribe(("open/#", 1))
    pub = connect5(broker, "pub")
    refused = pub.publish("closed/x", b"x", 1)
    allowed = pub.publish("open/x", b"y", 1)
    assert [(a.packet_id, a.reason_code) for a in pub.take()] == [(refused, 0x87), (allowed, 0)]
    assert [p.payload for p in sub.take()] == [b"y"]


def test_a_delayed_will_counts_its_expiry_from_when_it_is_published():
    """§3.1.3.2: the Will's Message Expiry Interval is the one its PUBLISH
    carries when the will goes out, after the Will Delay Interval."""
    from tests.mqtt5_harness import Client5

    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("will/#", 1))
    client = Client5(broker)
    will = P.Will("will/c", b"gone", 1, False,
                  {"message_expiry_interval": 30, "will_delay_interval": 10})
    client.send(P.Connect("c", True, 0, will, protocol_level=P.MQTT_5,
                          properties={"session_expiry_interval": 60}))
    client.drop()
    broker.clock.advance(10)
    (received,) = [p for p in sub.take() if type(p) is P.Publish]
    assert received.properties == {"message_expiry_interval": 30}


def test_qos0_publishes_that_are_dropped_get_no_answer_and_keep_the_connection():
    """[MQTT-3.3.5-2] §4.7.2, QoS 0 from a 5.0 client, with and without
    properties: to `$SYS` or refused by the ACL, the message goes nowhere;
    QoS 0 has no acknowledgement to say so, and the connection stays."""
    from reactorapp.auth.acl import ACL, ACLAuthorizer
    from reactorapp.auth.guard import Guard

    broker = Broker()
    broker.factory.guard = Guard(authorizer=ACLAuthorizer(ACL.parse(
        "topic readwrite open/#\ntopic readwrite $SYS/#\n")))
    sub = connect5(broker, "sub")
    sub.subscribe(("open/#", 0))
    pub = connect5(broker, "pub")
    for properties in ({}, {"content_type": "text/plain"}):
        pub.publish("$SYS/broker/x", b"x", 0, **properties)
        pub.publish("closed/x", b"x", 0, **properties)
        pub.publish("open/x", b"y", 0, **properties)
    assert pub.take() == []
    assert [p.payload for p in sub.take() if type(p) is P.Publish] == [b"y", b"y"]
    assert pub.protocol.state is not None and pub.transport.connected
