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
