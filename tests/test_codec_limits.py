"""What the codec holds for a peer that has not logged in, and what its
caches hold for any peer: both bounded, whatever the bytes."""

from __future__ import annotations

import pytest

from reactorapp.mqtt.codec import (
    MAX_CONNECT_SIZE, PacketTooLarge, Parser, ProtocolError, encode,
)
from reactorapp.mqtt.packets import Connect, PingReq, Publish, Will


def server_parser(**kw) -> Parser:
    return Parser(max_connect_size=MAX_CONNECT_SIZE, **kw)


@pytest.mark.parametrize("first", [0x30, 0x32, 0x82, 0xC0, 0xE0, 0x00, 0x20])
def test_a_first_packet_other_than_connect_is_refused_from_its_first_byte(first):
    """[MQTT-3.1.0-1] One byte is enough to know; nothing is buffered."""
    parser = server_parser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(bytes((first,)))
    assert "first packet must be CONNECT" in info.value.reason
    assert parser.buffered == 0


def test_a_publish_announcing_200_mb_before_connect_is_refused_at_once():
    parser = server_parser()
    with pytest.raises(ProtocolError):
        parser.feed(b"\x30\x80\xda\xc4\x5f")  # Remaining Length 200,000,000
    assert parser.buffered == 0


def test_a_large_connect_is_refused_from_its_header():
    parser = server_parser()
    with pytest.raises(PacketTooLarge):
        parser.feed(b"\x10\xff\xff\x7f")  # announces about 2 MB, sends none
    assert parser.buffered == 0


def test_the_largest_connect_allowed_still_parses():
    will = Will("w", b"x" * (MAX_CONNECT_SIZE - 40), 0, False)
    wire = encode(Connect(client_id="c", will=will))
    assert len(wire) <= MAX_CONNECT_SIZE
    assert server_parser().feed(wire)[0].will == will


def test_connect_bound_is_never_above_max_packet_size():
    wire = encode(Connect(client_id="c" * 200))
    with pytest.raises(PacketTooLarge):
        Parser(max_packet_size=100, max_connect_size=MAX_CONNECT_SIZE).feed(wire)


def test_after_connect_large_packets_are_read_as_before():
    """The CONNECT bound ends with CONNECT, in the same read too."""
    big = Publish("t", b"p" * (2 * MAX_CONNECT_SIZE))
    parser = server_parser()
    packets = parser.feed(encode(Connect(client_id="c")) + encode(big) + encode(PingReq()))
    assert packets[1:] == [big, PingReq()]


def test_a_parser_without_the_connect_rule_buffers_any_first_packet():
    """Clients and tests parse without it, as before."""
    parser = Parser()
    assert parser.feed(b"\x30\x80\xda\xc4\x5f") == []
    assert parser.buffered == 5


# -- the topic caches -----------------------------------------------------------

def _cached_sizes():
    from reactorapp.mqtt import codec
    names = sum(len(raw) + len(topic) for raw, topic in codec._TOPIC_NAMES.items())
    fields = sum(len(topic) + len(field) for topic, field in codec._TOPIC_FIELDS.items())
    return names, fields


@pytest.mark.parametrize("topic_size", [60_000, 1000])
def test_topic_caches_are_bounded_by_size(topic_size):
    """The issue's case: 1,000 PUBLISHes to distinct 60 KB topics once left
    120 MB in the caches. Now neither holds more than about 2 MiB."""
    from reactorapp.mqtt.codec import encode_publish
    parser = Parser()
    for n in range(1000):
        topic = f"{n:06d}/" + "t" * (topic_size - 7)
        (publish,) = parser.feed(encode(Publish(topic, b"x")))
        assert publish.topic == topic
        encode_publish(topic, b"x", 0, False)
    names, fields = _cached_sizes()
    assert names <= 2 * 1024 * 1024 + 2 * 1024
    assert fields <= 2 * 1024 * 1024 + 2 * 1024


def test_long_topics_still_parse_and_encode_the_same():
    from reactorapp.mqtt.codec import encode_publish
    topic = "a/" + "b" * 5000
    wire = encode_publish(topic, b"p", 1, False, packet_id=7)
    assert Parser().feed(wire) == [Publish(topic, b"p", 1, packet_id=7)]
    assert Parser().feed(wire) == [Publish(topic, b"p", 1, packet_id=7)]
