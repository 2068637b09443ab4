"""The MQTT 3.1.1 server side, driven in memory (StringTransport + Clock).

Each test names the specification statements it covers."""

from __future__ import annotations

import pytest

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.mqtt_harness import Broker


@pytest.fixture
def broker():
    return Broker()


def connect_bytes(**kw) -> bytes:
    return encode(P.Connect(**kw))


# -- CONNECT / CONNACK ----------------------------------------------------


def test_accepts_connect_with_clean_session(broker):
    """[MQTT-3.1.4-4] [MQTT-3.2.2-1] [MQTT-3.2.0-1] [MQTT-3.1.3-5]"""
    client = broker.connect("sensor42", clean=True)
    assert client.connack.session_present is False
    assert client.connack.flags == 0
    assert not client.closed
    assert broker.hub.stats.clients_connected == 1


def test_first_packet_must_be_connect(broker):
    """[MQTT-3.1.0-1] close without CONNACK."""
    client = broker.client()
    client.send(P.PingReq())
    assert client.take() == []
    assert client.closed


def test_second_connect_is_a_violation(broker):
    """[MQTT-3.1.0-2]"""
    client = broker.connect("a")
    client.send(P.Connect(client_id="a"))
    assert client.take() == []
    assert client.closed


def test_unsupported_protocol_level_gets_connack_1(broker):
    """[MQTT-3.1.2-2] a 3.1.1 CONNACK 0x01 (4 bytes), then close."""
    client = broker.client()
    data = bytearray(connect_bytes(client_id="x"))
    level_at = data.index(b"MQTT") + 4
    data[level_at] = 6
    client.send_bytes(bytes(data))
    (connack,) = client.take()
    assert (connack.type, connack.return_code, connack.session_present) == ("CONNACK", 1, False)
    assert client.closed


def test_mqtt_3_1_is_spoken():
    """[MQTT-3.1.2-1] "MQIsdp" level 3 is MQTT 3.1: handled under its own
    rules (below), with the 3.1.1 packet layout."""
    broker = Broker()
    client = broker.connect("old-device", protocol_name="MQIsdp", protocol_level=3)
    client.send(P.Subscribe(1, [P.SubscriptionRequest("t/#", 1)]))
    (suback,) = client.take()
    assert suback.return_codes == [1]
    client.send(P.Publish("t/x", b"hi", qos=1, packet_id=2))
    by_type = {packet.type: packet for packet in client.take()}
    assert by_type["PUBACK"].packet_id == 2
    delivered = by_type["PUBLISH"]
    assert (delivered.topic, delivered.payload, delivered.qos) == ("t/x", b"hi", 1)


def test_mqtt_3_1_connack_has_no_session_present():
    """The CONNACK flags byte is reserved in MQTT 3.1: 0 even for a kept session."""
    broker = Broker()
    broker.connect("old-device", clean=False, protocol_name="MQIsdp", protocol_level=3).drop()
    again = broker.connect("old-device", clean=False, protocol_name="MQIsdp", protocol_level=3)
    assert again.connack.flags == 0
    assert broker.hub.get_session("old-device") is not None


@pytest.mark.parametrize("client_id", ["", "x" * 24])
def test_mqtt_3_1_client_id_has_1_to_23_characters(client_id):
    """MQTT 3.1 rejects an empty or longer id with CONNACK 2 [MQTT-3.1.3-9]."""
    client = Broker().client()
    client.send(P.Connect(client_id=client_id, protocol_name="MQIsdp", protocol_level=3))
    (connack,) = client.take()
    assert connack.return_code == 2
    assert client.closed


def test_mqtt_3_1_23_character_id_is_accepted():
    Broker().connect("y" * 23, protocol_name="MQIsdp", protocol_level=3)


@pytest.mark.parametrize(("name", "level"), [("MQIsdp", 4), ("MQTT", 3)])
def test_protocol_name_and_level_must_agree(name, level):
    """[MQTT-3.1.2-2] a level that is not the name's gets CONNACK 1."""
    client = Broker().client()
    client.send(P.Connect(client_id="x", protocol_name=name, protocol_level=level))
    (connack,) = client.take()
    assert connack.return_code == 1
    assert client.closed


def test_empty_client_id_with_clean_session_gets_an_id(broker):
    """[MQTT-3.1.3-6] [MQTT-3.1.3-3]"""
    client = broker.connect("", clean=True)
    assert client.protocol.client_id
    assert broker.hub.get_session(client.protocol.client_id) is not None


def test_empty_client_id_without_clean_session_is_rejected(broker):
    """[MQTT-3.1.3-8] [MQTT-3.1.3-9] [MQTT-3.2.2-4] [MQTT-3.2.2-5]"""
    client = broker.client()
    client.send(P.Connect(client_id="", clean_session=False))
    (connack,) = client.take()
    assert (connack.return_code, connack.session_present) == (2, False)
    assert client.closed


def test_bytes_after_a_refused_connect_are_ignored(broker):
    """[MQTT-3.1.4-5]"""
    client = broker.client()
    client.send_bytes(encode(P.Connect(client_id="", clean_session=False))
                      + encode(P.Publish("t", b"x")))
    assert [p.type for p in client.take()] == ["CONNACK"]
    assert broker.hub.stats.publish_received == 0


def test_packets_right_after_connect_are_processed_in_order(broker):
    """[§3.1.4] a client need not wait for CONNACK."""
    client = broker.client()
    client.send(P.Connect(client_id="eager"),
                P.Subscribe(1, [P.SubscriptionRequest("t", 1)]),
                P.PingReq())
    assert [p.type for p in client.take()] == ["CONNACK", "SUBACK", "PINGRESP"]


def test_malformed_connect_closes_without_connack(broker):
    """[MQTT-3.1.4-1] [MQTT-3.2.2-6] [MQTT-3.1.2-3] reserved flag set."""
    client = broker.client()
    data = bytearray(connect_bytes(client_id="x"))
    flags_at = data.index(b"MQTT") + 5
    data[flags_at] |= 0x01
    client.send_bytes(bytes(data))
    assert client.take() == []
    assert client.closed


# -- keep-alive --------------------------------------------------------------


def test_keepalive_expiry_closes_and_publishes_will(broker):
    """[MQTT-3.1.2-24] [MQTT-3.1.2-8] silent for 1.5 x keep-alive."""
    watcher = broker.connect("watcher")
    watcher.subscribe(("wills/#", 0))
    client = broker.connect("sleepy", keep_alive=10, will=P.Will("wills/sleepy", b"gone"))
    client.advance(14.9)
    assert not client.closed
    client.advance(0.2)
    assert client.closed
    (will,) = watcher.take()
    assert (will.topic, will.payload) == ("wills/sleepy", b"gone")


def test_any_packet_restarts_the_keepalive_window(broker):
    """[MQTT-3.1.2-24] [MQTT-3.12.4-1] a PINGREQ counts, and is answered."""
    client = broker.connect("pinger", keep_alive=2)
    for _ in range(5):
        client.advance(2.9)
        client.send(P.PingReq())
        assert [p.type for p in client.take()] == ["PINGRESP"]
    assert not client.closed
    client.advance(3.0)
    assert client.closed


def test_keepalive_zero_never_expires(broker):
    """[§3.1.2.10]"""
    client = broker.connect("forever", keep_alive=0)
    client.advance(10 * 24 * 3600)
    assert not client.closed


# -- PUBLISH from clients --------------------------------------------------


def test_qos0_publish_is_delivered_without_acknowledgement(broker):
    """[MQTT-4.1.0-2] (a clean session serves its whole connection) [MQTT-3.3.4-1] [MQTT-4.3.1-1] [MQTT-3.3.2-3]"""
    sub = broker.connect("sub")
    sub.subscribe(("a/+", 0))
    pub = broker.connect("pub")
    pub.publish("a/b", b"hi")
    assert pub.take() == []
    (msg,) = sub.take()
    assert (msg.topic, msg.payload, msg.qos, msg.dup, msg.retain, msg.packet_id) == (
        "a/b", b"hi", 0, False, False, None)


def test_qos1_publish_gets_puback(broker):
    """[MQTT-3.3.4-1] [MQTT-4.3.2-2] [MQTT-2.3.1-6]"""
    pub = broker.connect("pub")
    pid = pub.publish("t", b"x", qos=1)
    (ack,) = pub.take()
    assert (ack.type, ack.packet_id, ack.flags) == ("PUBACK", pid, 0)


def test_qos2_exchange_delivers_exactly_once(broker):
    """[MQTT-4.3.3-2] a repeated PUBLISH before PUBREL gets PUBREC again and is
    not forwarded twice; PUBREL gets PUBCOMP; after that the id is new."""
    sub = broker.connect("sub")
    sub.subscribe(("t", 0))
    pub = broker.connect("pub")
    pub.publish("t", b"once", qos=2, packet_id=7)
    assert [(p.type, p.packet_id) for p in pub.take()] == [("PUBREC", 7)]
    pub.send(P.Publish("t", b"once", 2, dup=True, packet_id=7))
    assert [(p.type, p.packet_id) for p in pub.take()] == [("PUBREC", 7)]
    pub.send(P.PubRel(7))
    assert [(p.type, p.packet_id) for p in pub.take()] == [("PUBCOMP", 7)]
    assert [m.payload for m in sub.take()] == [b"once"]
    pub.publish("t", b"again", qos=2, packet_id=7)
    assert [m.payload for m in sub.take()] == [b"again"]


def test_pubrel_for_unknown_id_still_gets_pubcomp(broker):
    """[MQTT-4.3.3-2]"""
    client = broker.connect("c")
    client.send(P.PubRel(99))
    assert [(p.type, p.packet_id, p.flags) for p in client.take()] == [("PUBCOMP", 99, 0)]


def test_acknowledgements_keep_publish_order(broker):
    """[MQTT-4.6.0-2] [MQTT-4.6.0-3]"""
    client = broker.connect("c")
    client.send(P.Publish("t", b"1", 1, packet_id=1), P.Publish("t", b"2", 2, packet_id=2),
                P.Publish("t", b"3", 1, packet_id=3))
    assert [(p.type, p.packet_id) for p in client.take()] == [
        ("PUBACK", 1), ("PUBREC", 2), ("PUBACK", 3)]


def test_wildcard_in_publish_topic_closes_only_that_client(broker):
    """[MQTT-3.3.2-2] [MQTT-4.8.0-1] other clients carry on."""
    bystander = broker.connect("bystander")
    bystander.subscribe(("#", 0))
    bad = broker.connect("bad")
    bad.publish("a/+", b"x")
    assert bad.closed
    good = broker.connect("good")
    good.publish("a/b", b"fine")
    assert [m.payload for m in bystander.take()] == [b"fine"]
    assert not bystander.closed


def test_clients_cannot_publish_to_sys(broker):
    """[§4.7.2] acknowledged and dropped [MQTT-3.3.5-2]."""
    sub = broker.connect("sub")
    sub.subscribe(("$SYS/#", 0))
    pub = broker.connect("pub")
    pub.publish("$SYS/broker/version", b"fake", qos=1)
    assert [p.type for p in pub.take()] == ["PUBACK"]
    assert sub.take() == []


# -- SUBSCRIBE ---------------------------------------------------------------


def test_suback_codes_follow_filters_and_cap_qos(broker):
    """[MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-2.3.1-7] [MQTT-3.8.4-4] [MQTT-3.8.4-5] [MQTT-3.9.3-1]
    [MQTT-3.9.3-2] [MQTT-4.7.1-2] invalid filters get 0x80."""
    client = broker.connect("c")
    codes, _ = client.subscribe(("a", 0), ("b/#", 1), ("c/+/d", 2), ("bad#", 1), ("a/#/b", 0))
    assert codes == [0, 1, 2, 0x80, 0x80]


def test_delivery_at_lower_of_published_and_granted_qos(broker):
    """[MQTT-3.8.4-6]"""
    sub = broker.connect("sub")
    sub.subscribe(("low", 0), ("high", 2))
    pub = broker.connect("pub")
    pub.publish("low", b"1", qos=2)
    pub.publish("high", b"2", qos=1)
    got = {m.topic: m.qos for m in sub.take() if m.type == "PUBLISH"}
    assert got == {"low": 0, "high": 1}


def test_overlapping_subscriptions_deliver_once_at_highest_qos(broker):
    """[MQTT-3.3.5-1]"""
    sub = broker.connect("sub")
    sub.subscribe(("a/#", 0), ("a/+", 1), ("a/b", 0))
    pub = broker.connect("pub")
    pub.publish("a/b", b"x", qos=2)
    (msg,) = sub.take()
    assert msg.qos == 1


def test_resubscribe_replaces_and_resends_retained(broker):
    """[MQTT-3.8.4-3]"""
    pub = broker.connect("pub")
    pub.publish("r", b"kept", qos=1, retain=True)
    sub = broker.connect("sub")
    _, first = sub.subscribe(("r", 0))
    _, second = sub.subscribe(("r", 1))
    assert [m.payload for m in first] == [b"kept"] and second[0].payload == b"kept"
    assert second[0].qos == 1
    assert broker.hub.subscription_count == 1


def test_unsubscribe_removes_exact_filter_and_always_answers(broker):
    """[MQTT-3.10.4-1] [MQTT-3.10.4-2] [MQTT-3.10.4-4] [MQTT-3.10.4-5] [MQTT-3.10.4-6]"""
    sub = broker.connect("sub")
    sub.subscribe(("a/+", 0), ("b", 0))
    sub.send(P.Unsubscribe(5, ["a/b", "a/+", "nothing"]))
    assert [(p.type, p.packet_id, p.flags) for p in sub.take()] == [("UNSUBACK", 5, 0)]
    pub = broker.connect("pub")
    pub.publish("a/x", b"gone")
    pub.publish("b", b"still")
    assert [m.payload for m in sub.take()] == [b"still"]


# -- retained ----------------------------------------------------------------


def test_retained_message_lifecycle(broker):
    """[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8] [MQTT-3.3.1-9] [MQTT-3.3.1-10]
    [MQTT-3.3.1-11] [MQTT-3.3.1-12] [MQTT-3.3.1-7]"""
    live = broker.connect("live")
    live.subscribe(("home/#", 0))
    pub = broker.connect("pub")
    pub.publish("home/temp", b"20", qos=0, retain=True)
    (m,) = live.take()
    assert m.retain is False  # live traffic never carries RETAIN
    pub.publish("home/temp", b"21", retain=False)  # not stored
    late = broker.connect("late")
    _, retained = late.subscribe(("home/+", 1))
    assert [(m.payload, m.retain, m.qos) for m in retained] == [(b"20", True, 0)]
    pub.publish("home/temp", b"", retain=True)  # clears
    later = broker.connect("later")
    _, retained = later.subscribe(("home/#", 0))
    assert retained == []
    assert broker.hub.retained_count == 0
    assert b"" in [m.payload for m in live.take()]  # the clearing publish is delivered


def test_retained_is_sent_at_min_of_stored_and_granted(broker):
    """[MQTT-3.8.4-6] retained messages too."""
    pub = broker.connect("pub")
    pub.publish("r/1", b"a", qos=2, retain=True)
    pub.send(P.PubRel(1))
    sub = broker.connect("sub")
    _, retained = sub.subscribe(("r/#", 1))
    assert [(m.qos, m.retain) for m in retained] == [(1, True)]


def test_retained_outlive_the_publisher_session(broker):
    """[MQTT-3.1.2-7]"""
    pub = broker.connect("pub", clean=True)
    pub.publish("r", b"v", retain=True)
    pub.send(P.Disconnect())
    assert pub.closed
    sub = broker.connect("pub", clean=True)
    _, retained = sub.subscribe(("r", 0))
    assert [m.payload for m in retained] == [b"v"]


def test_no_wildcard_start_sees_dollar_topics(broker):
    """[MQTT-4.7.2-1]"""
    broker.hub.publish(__import__("reactorapp.hub.message", fromlist=["Message"]).Message(
        "$SYS/broker/version", b"1", retain=True))
    sub = broker.connect("sub")
    _, r1 = sub.subscribe(("#", 0))
    _, r2 = sub.subscribe(("+/broker/version", 0))
    _, r3 = sub.subscribe(("$SYS/#", 0))
    assert (r1, r2, [m.topic for m in r3]) == ([], [], ["$SYS/broker/version"])


# -- outgoing QoS 1/2 and sessions -----------------------------------------


def test_outgoing_qos1_uses_fresh_ids_and_window(broker):
    """[MQTT-4.3.2-1] [MQTT-2.3.1-4] in-flight bounded; the rest waits."""
    broker = Broker(max_inflight=2)
    sub = broker.connect("sub")
    sub.subscribe(("t", 1))
    pub = broker.connect("pub")
    for i in range(3):
        pub.publish("t", b"%d" % i, qos=1)
    sent = sub.take()
    assert [(m.payload, m.dup) for m in sent] == [(b"0", False), (b"1", False)]
    assert len({m.packet_id for m in sent}) == 2 and all(m.packet_id for m in sent)
    sub.send(P.PubAck(sent[0].packet_id))
    (third,) = sub.take()
    assert third.payload == b"2" and third.packet_id not in (sent[1].packet_id, 0)


def test_outgoing_qos2_exchange(broker):
    """[MQTT-4.3.3-1] PUBREC -> PUBREL (0x62) -> PUBCOMP frees the id."""
    broker = Broker(max_inflight=1)
    sub = broker.connect("sub")
    sub.subscribe(("t", 2))
    pub = broker.connect("pub")
    pub.publish("t", b"a", qos=2)
    pub.publish("t", b"b", qos=2)
    (first,) = sub.take()
    sub.send(P.PubRec(first.packet_id))
    (rel,) = sub.take()
    assert (rel.type, rel.flags, rel.packet_id) == ("PUBREL", 2, first.packet_id)
    sub.send(P.PubComp(first.packet_id))
    (second,) = sub.take()
    assert second.payload == b"b"


def test_persistent_session_resumes_with_queued_and_unacked(broker):
    """[MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-4.4.0-1] [MQTT-4.6.0-1]
    [MQTT-3.3.1-1] [MQTT-4.5.0-1] [MQTT-4.1.0-1]"""
    sub = broker.connect("dev", clean=False)
    assert sub.connack.session_present is False  # [MQTT-3.2.2-3]
    sub.subscribe(("t/#", 2))
    pub = broker.connect("pub")
    pub.publish("t/1", b"unacked", qos=1)
    pub.publish("t/2", b"half", qos=2)
    first, second = sub.take()
    sub.send(P.PubRec(second.packet_id))
    assert [p.type for p in sub.take()] == ["PUBREL"]
    sub.drop()
    pub.publish("t/3", b"while away", qos=1)
    pub.publish("t/4", b"qos0 not queued", qos=0)
    back = broker.connect("dev", clean=False)
    assert back.connack.session_present is True
    resent = back.take()
    assert [(p.type, p.packet_id, getattr(p, "dup", None)) for p in resent[:2]] == [
        ("PUBLISH", first.packet_id, True), ("PUBREL", second.packet_id, None)]
    assert resent[0].payload == b"unacked"
    assert [(p.payload, p.dup) for p in resent[2:]] == [(b"while away", False)]


def test_clean_session_discards_stored_state(broker):
    """[MQTT-3.1.4-3] [MQTT-3.1.2-6] [MQTT-3.2.2-1]"""
    sub = broker.connect("dev", clean=False)
    sub.subscribe(("t", 1))
    sub.drop()
    back = broker.connect("dev", clean=True)
    assert back.connack.session_present is False
    pub = broker.connect("pub")
    pub.publish("t", b"x", qos=1)
    assert back.take() == []
    back.send(P.Disconnect())
    again = broker.connect("dev", clean=False)
    assert again.connack.session_present is False


def test_offline_queue_is_bounded_and_counts_drops():
    """[§4.1] administrative limit on stored session size."""
    broker = Broker(max_queued_messages=3)
    sub = broker.connect("dev", clean=False)
    sub.subscribe(("t", 1))
    sub.drop()
    pub = broker.connect("pub")
    for i in range(5):
        pub.publish("t", b"%d" % i, qos=1)
    assert broker.hub.stats.publish_dropped == 2
    back = broker.connect("dev", clean=False)
    assert [m.payload for m in back.take()] == [b"0", b"1", b"2"]


def test_per_topic_order_is_kept(broker):
    """[MQTT-4.6.0-5] [MQTT-4.6.0-6]"""
    broker = Broker(max_inflight=3)
    sub = broker.connect("sub")
    sub.subscribe(("t", 1))
    pub = broker.connect("pub")
    for i in range(10):
        pub.publish("t", b"%d" % i, qos=1)
    got = []
    while True:
        batch = sub.take()
        if not batch:
            break
        got.extend(batch)
        for m in batch:
            sub.send(P.PubAck(m.packet_id))
    assert [m.payload for m in got] == [b"%d" % i for i in range(10)]


# -- takeover and wills ----------------------------------------------------


def test_takeover_closes_the_old_connection_and_publishes_its_will(broker):
    """[MQTT-3.1.4-2] [MQTT-3.1.2-8]"""
    watcher = broker.connect("watcher")
    watcher.subscribe(("w", 0))
    old = broker.connect("same", will=P.Will("w", b"old gone"))
    new = broker.connect("same")
    assert old.closed and not new.closed
    assert [m.payload for m in watcher.take()] == [b"old gone"]
    assert broker.hub.stats.clients_connected == 2


def test_will_on_dropped_connection_with_retain_and_qos(broker):
    """[MQTT-3.1.2-9] [MQTT-3.1.2-17] [MQTT-3.8.4-6] [MQTT-3.1.2-10]"""
    watcher = broker.connect("watcher")
    watcher.subscribe(("status/#", 1))
    dev = broker.connect("dev", will=P.Will("status/dev", b"offline", qos=2, retain=True))
    dev.drop()
    (will,) = watcher.take()
    assert (will.payload, will.qos, will.retain) == (b"offline", 1, False)
    late = broker.connect("late")
    _, retained = late.subscribe(("status/dev", 2))
    assert [(m.payload, m.retain, m.qos) for m in retained] == [(b"offline", True, 2)]


def test_no_will_after_disconnect(broker):
    """[MQTT-3.14.4-3] [MQTT-3.1.2-10]"""
    watcher = broker.connect("watcher")
    watcher.subscribe(("w", 0))
    dev = broker.connect("dev", will=P.Will("w", b"x"))
    dev.send(P.Disconnect(), P.Publish("w", b"after disconnect"))
    assert dev.closed
    assert watcher.take() == []
    assert broker.hub.stats.clients_connected == 1


def test_will_after_protocol_error(broker):
    """[MQTT-3.1.2-8] [MQTT-4.8.0-1] a protocol error is not a DISCONNECT."""
    watcher = broker.connect("watcher")
    watcher.subscribe(("w", 0))
    dev = broker.connect("dev", will=P.Will("w", b"broken"))
    dev.send_bytes(b"\xe1\x00")  # DISCONNECT with reserved flags set [MQTT-3.14.1-1]
    assert dev.closed
    assert [m.payload for m in watcher.take()] == [b"broken"]


def test_without_will_flag_nothing_is_published(broker):
    """[MQTT-3.1.2-12]"""
    watcher = broker.connect("watcher")
    watcher.subscribe(("#", 0))
    dev = broker.connect("dev")
    dev.drop()
    assert watcher.take() == []


def test_disconnect_followed_by_garbage_still_drops_the_will(broker):
    """[MQTT-3.14.4-3] [§3.14.4] the DISCONNECT counts; what follows is ignored."""
    watcher = broker.connect("watcher")
    watcher.subscribe(("w", 0))
    dev = broker.connect("dev", will=P.Will("w", b"x"))
    dev.send_bytes(encode(P.Disconnect()) + b"\x00\x00garbage")
    assert dev.closed
    assert watcher.take() == []


def test_oversized_packet_closes_the_connection():
    """[§2.2.3] bounded input: refused from its header, before the body arrives."""
    broker = Broker(max_packet_size=1024)
    dev = broker.connect("dev")
    dev.send_bytes(b"\x30\xff\xff\x03")  # PUBLISH announcing ~64 KiB
    assert dev.closed


def test_deliveries_already_started_finish_after_unsubscribe():
    """[MQTT-3.10.4-3] [MQTT-3.10.4-2]: in-flight QoS 1 and 2 complete; nothing new is queued."""
    broker = Broker(max_inflight=10)
    sub = broker.connect("sub")
    sub.subscribe(("t/#", 2))
    pub = broker.connect("pub")
    pub.publish("t/1", b"one", qos=1)
    pub.publish("t/2", b"two", qos=2)
    first, second = sub.take()
    sub.send(P.Unsubscribe(9, ["t/#"]))
    assert [p.type for p in sub.take()] == ["UNSUBACK"]
    sub.send(P.PubRec(second.packet_id))
    assert [(p.type, p.packet_id) for p in sub.take()] == [("PUBREL", second.packet_id)]
    sub.send(P.PubAck(first.packet_id), P.PubComp(second.packet_id))
    pub.publish("t/3", b"after", qos=1)
    assert sub.take() == []
    assert sub.protocol.session.inflight == {}


def test_pubrels_follow_the_order_pubrecs_arrived():
    """[MQTT-4.6.0-4]"""
    broker = Broker(max_inflight=10)
    sub = broker.connect("sub")
    sub.subscribe(("t", 2))
    pub = broker.connect("pub")
    pub.publish("t", b"a", qos=2)
    pub.publish("t", b"b", qos=2)
    a, b = sub.take()
    sub.send(P.PubRec(b.packet_id), P.PubRec(a.packet_id))
    assert [(p.type, p.packet_id) for p in sub.take()] == [
        ("PUBREL", b.packet_id), ("PUBREL", a.packet_id)]


def test_a_message_that_cannot_be_placed_closes_without_acknowledgement(broker):
    """[MQTT-4.8.0-2]: a transient failure (the store refusing a write) closes
    the connection; no PUBACK promises what was not kept."""
    from reactorapp.hub.commit import Commit

    pub = broker.connect("pub")
    broker.hub.route = lambda message: Commit.failed(OSError("disk full"))
    pub.publish("t", b"x", qos=1)
    assert pub.take() == []
    assert pub.closed


def test_a_connection_keeps_its_attributes_in_a_small_dict(broker):
    """Memory per idle connection (at most 8 KB, docs/benchmarks.md): CPython
    keeps an instance's attributes in a compact dict sharing its keys with
    the class's other instances only up to about 30 of them. One attribute
    too many made every connection 1.3 KB bigger; keep new per-connection
    state inside existing attributes, or find one to remove."""
    import sys

    for client in (broker.connect("plain"), broker.connect("kept", clean=False)):
        client.publish("t", b"x", qos=1)
        assert sys.getsizeof(client.protocol.__dict__) < 512, len(client.protocol.__dict__)
