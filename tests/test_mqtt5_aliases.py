"""MQTT 5 Topic Aliases, both ways, on raw packets (a client library hides
them): what a client may send under our Topic Alias Maximum, and the aliases
the broker uses towards a client that allows them, which Mosquitto never
does."""

from __future__ import annotations

import pytest

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.publish5 import MIN_ALIASED, AliasError, TopicAliases
from tests.mqtt5_harness import Broker, connect5

TOPIC = "building/7/floor/3/room/12/temperature"


def closed_with(client, code) -> bool:
    """Closed, after a DISCONNECT with ``code`` where one is sent."""
    if not client.closed:
        return False
    sent = [p for p in client.take() if type(p) is P.Disconnect]
    return not sent or sent[-1].reason_code == code


# -- client to server ---------------------------------------------------------

def test_an_alias_set_by_the_client_stands_for_its_topic():
    """[MQTT-3.3.2-12]: aliases 1 to our maximum are accepted; an empty topic
    with a known alias is that alias's topic, and a new topic replaces it."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("#", 0))
    pub = connect5(broker, "pub")
    pub.publish("a/b", b"1", topic_alias=1)
    pub.publish("", b"2", topic_alias=1)
    pub.publish("c/d", b"3", topic_alias=1)
    pub.publish("", b"4", topic_alias=1)
    maximum = broker.factory.settings.topic_alias_maximum
    pub.publish("e", b"5", topic_alias=maximum)
    pub.publish("", b"6", topic_alias=maximum)
    assert [(p.topic, p.payload) for p in sub.take()] == [
        ("a/b", b"1"), ("a/b", b"2"), ("c/d", b"3"), ("c/d", b"4"), ("e", b"5"), ("e", b"6")]


def test_an_alias_over_our_maximum_is_refused_with_0x94():
    """[MQTT-3.3.2-9]: DISCONNECT 0x94 Topic Alias invalid, nothing forwarded."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("#", 0))
    pub = connect5(broker, "pub")
    pub.publish("a", b"x", topic_alias=broker.factory.settings.topic_alias_maximum + 1)
    assert closed_with(pub, 0x94)
    assert sub.take() == []


def test_alias_zero_is_refused_with_0x94():
    """[MQTT-3.3.2-8]: Topic Alias 0 is not permitted."""
    broker = Broker()
    pub = connect5(broker, "pub")
    raw = bytes.fromhex("30 08 0001 61 03 23 0000 78".replace(" ", ""))  # topic "a", alias 0
    pub.send_bytes(raw)
    assert closed_with(pub, 0x94)


def test_an_unknown_alias_with_an_empty_topic_is_a_protocol_error():
    """§3.3.2.3.4: an empty Topic Name needs an alias the client set on this
    connection: otherwise DISCONNECT 0x82 Protocol Error."""
    broker = Broker()
    pub = connect5(broker, "pub")
    pub.publish("", b"x", topic_alias=2)
    assert closed_with(pub, 0x82)


def test_aliases_do_not_outlive_the_connection():
    """[MQTT-3.3.2-7]: a new connection of the same client starts with none."""
    broker = Broker()
    pub = connect5(broker, "pub", clean=False)
    pub.publish("a", b"x", topic_alias=1)
    pub.drop()
    again = connect5(broker, "pub", clean=False)
    again.publish("", b"y", topic_alias=1)
    assert closed_with(again, 0x82)


def test_the_alias_table_by_itself():
    aliases = TopicAliases(0)
    assert aliases.resolve("t", None, 0) == "t"
    with pytest.raises(AliasError) as caught:
        aliases.resolve("t", 1, 0)  # a maximum of 0: no aliases at all
    assert caught.value.reason_code == 0x94


# -- server to client ---------------------------------------------------------

def resolve(packets, table):
    """The topics a client sees once it applies the aliases, as it must."""
    out = []
    for p in packets:
        alias = p.properties.get("topic_alias")
        if alias is not None:
            assert 0 < alias
            if p.topic:
                table[alias] = p.topic
            out.append((table[alias], p.payload))
        else:
            out.append((p.topic, p.payload))
    return out


def test_the_broker_sends_aliases_to_a_client_that_allows_them():
    """§3.3.2.3.4: the first PUBLISH on a topic carries the topic and its
    alias, the next ones an empty topic and the alias; never above the
    client's Topic Alias Maximum [MQTT-3.3.2-11], least recently used
    aliases reused."""
    broker = Broker()
    sub = connect5(broker, "sub", topic_alias_maximum=2)
    sub.subscribe(("#", 1))
    pub = connect5(broker, "pub")
    topics = ["topic/one", "topic/two", "topic/one", "topic/three", "topic/one", "topic/two"]
    for i, topic in enumerate(topics):
        pub.publish(topic, b"%d" % i, 1)
    packets = [p for p in sub.take() if type(p) is P.Publish]
    aliases = [p.properties["topic_alias"] for p in packets]
    assert set(aliases) <= {1, 2}
    assert [p.topic for p in packets] == [
        "topic/one", "topic/two", "", "topic/three", "", "topic/two"]
    assert resolve(packets, {}) == [(t, b"%d" % i) for i, t in enumerate(topics)]


def test_no_aliases_for_a_client_that_does_not_allow_them():
    """[MQTT-3.3.2-11]: a client with no Topic Alias Maximum gets none."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("#", 0))
    pub = connect5(broker, "pub")
    pub.publish(TOPIC, b"1")
    pub.publish(TOPIC, b"2")
    assert [(p.topic, p.properties) for p in sub.take()] == [(TOPIC, {}), (TOPIC, {})]


def test_short_topics_are_sent_as_they_are():
    """An alias costs three bytes a PUBLISH: a topic shorter than that saves
    nothing, so it gets none."""
    broker = Broker()
    sub = connect5(broker, "sub", topic_alias_maximum=5)
    sub.subscribe(("#", 0))
    pub = connect5(broker, "pub")
    short = "ab"[:MIN_ALIASED - 1]
    pub.publish(short, b"1")
    pub.publish(short, b"2")
    assert [(p.topic, p.properties) for p in sub.take()] == [(short, {}), (short, {})]


def test_a_re_sent_publish_can_be_read_with_the_aliases_the_client_holds():
    """A QoS 1 PUBLISH re-sent on the same connection (DUP) uses the
    client's current table, so it still names its topic."""
    broker = Broker()
    sub = connect5(broker, "sub", topic_alias_maximum=1)
    sub.subscribe(("#", 1))
    pub = connect5(broker, "pub")
    pub.publish(TOPIC, b"1", 1)
    table = {}
    first = [p for p in sub.take() if type(p) is P.Publish]
    assert resolve(first, table) == [(TOPIC, b"1")]
    session = sub.protocol.session
    (packet_id, flight), = session.inflight.items()
    sub.protocol.send_publish(flight.message, 1, False, packet_id, True)
    (again,) = sub.take()
    assert again.dup and resolve([again], table) == [(TOPIC, b"1")]


def test_aliases_save_bytes_on_the_wire():
    """What the aliases are for: the same 100 messages on a long topic take
    fewer bytes to a client that allows aliases than to one that does not."""
    broker = Broker()
    plain = connect5(broker, "plain")
    aliased = connect5(broker, "aliased", topic_alias_maximum=10)
    for client in (plain, aliased):
        client.subscribe(("building/#", 0))
    pub = connect5(broker, "pub")
    for i in range(100):
        pub.publish(TOPIC, b"21.%d" % (i % 10))
    plain_bytes = len(plain.transport.value())
    aliased_bytes = len(aliased.transport.value())
    # Each PUBLISH after the first leaves out the topic (2 + 38 bytes) for a
    # 3-byte alias: 37 bytes saved on every one but the first, which costs 3.
    assert plain_bytes - aliased_bytes == 99 * (2 + len(TOPIC) - 2 - 3) - 3
    assert [p.payload for p in aliased.take()] == [p.payload for p in plain.take()]


def test_a_re_sent_qos2_publish_still_sets_its_alias():
    """A QoS 2 PUBLISH re-sent on a new connection (its PUBREC was lost) is
    not forwarded again [MQTT-4.3.3-2], but the alias it sets on that
    connection counts for the PUBLISHes after it."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("#", 2))
    pub = connect5(broker, "pub", clean=False, session_expiry_interval=60)
    pub.send(P.Publish("a/long/topic", b"once", 2, packet_id=7, properties={"topic_alias": 1}))
    pub.drop()
    again = connect5(broker, "pub", clean=False, session_expiry_interval=60)
    again.send(P.Publish("a/long/topic", b"once", 2, dup=True, packet_id=7,
                         properties={"topic_alias": 1}),
               P.Publish("", b"next", 0, properties={"topic_alias": 1}))
    assert not again.closed
    assert [(p.topic, p.payload) for p in sub.take() if type(p) is P.Publish] == [
        ("a/long/topic", b"once"), ("a/long/topic", b"next")]
