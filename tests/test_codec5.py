"""The codec at MQTT 5 (protocol level 5): properties and reason codes on
every packet, each malformed variant refused with its reason code, and the
two levels kept apart. Statement ids are the MQTT 5.0 specification's."""

from __future__ import annotations

import pytest

from reactorapp.mqtt.codec import (
    MalformedPacket,
    PacketTooLarge,
    Parser,
    ProtocolError,
    UnsupportedProtocol,
    encode,
    encode_puback,
    encode_publish5,
    encode_publish5_parts,
    property_bytes,
)
from reactorapp.mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    PubRec,
    PubRel,
    Publish,
    Subscribe,
    SubAck,
    SubscriptionRequest,
    Unsubscribe,
    UnsubAck,
    Will,
)

# -- raw wire helpers, written independently of the codec ----------------------


def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + vbi(len(body)) + body


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def s(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return u16(len(raw)) + raw


def props(*items: bytes) -> bytes:
    """A property block: length, then the items."""
    body = b"".join(items)
    return vbi(len(body)) + body


def connect5(flags: int = 0x02, properties: bytes = b"\x00", payload: bytes = s("c")) -> bytes:
    return frame(0x10, s("MQTT") + bytes([5, flags]) + u16(60) + properties + payload)


def server(**kw) -> Parser:
    """A server's parser on a connection that sent a level-5 CONNECT."""
    return Parser(protocol_level=5, **kw)


def client(**kw) -> Parser:
    return Parser(protocol_level=5, server_side=False, **kw)


def parse(data: bytes, parser: Parser | None = None) -> list:
    parser = parser or server()
    packets = parser.feed(data)
    assert parser.buffered == 0
    return packets


def rejects(data: bytes, code: int, parser: Parser | None = None,
            error=ProtocolError) -> ProtocolError:
    with pytest.raises(error) as info:
        (parser or server()).feed(data)
    assert info.value.reason_code == code, info.value.reason
    return info.value


# -- round trips ------------------------------------------------------------------

USER = [("k", "v"), ("k", "v2"), ("", "ü")]

CLIENT_PACKETS = [
    Connect("c", protocol_level=5),
    Connect("", clean_session=False, keep_alive=65535, protocol_level=5, properties={
        "session_expiry_interval": 0xFFFFFFFF, "receive_maximum": 10,
        "maximum_packet_size": 1 << 20, "topic_alias_maximum": 5,
        "request_response_information": 1, "request_problem_information": 0,
        "user_property": USER, "authentication_method": "SCRAM",
        "authentication_data": b"\x00\x01"}),
    Connect("c", will=Will("w/t", b"bye", 2, True, {
        "will_delay_interval": 30, "payload_format_indicator": 1,
        "message_expiry_interval": 60, "content_type": "text/plain",
        "response_topic": "r/t", "correlation_data": b"\xff", "user_property": USER}),
        username="u", password=b"p", protocol_level=5),
    Connect("c", password=b"only a password", protocol_level=5),
    Publish("a/b", b"payload"),
    Publish("a/b", b"", qos=1, packet_id=1, retain=True, properties={
        "payload_format_indicator": 0, "message_expiry_interval": 5, "topic_alias": 7,
        "response_topic": "resp", "correlation_data": b"id", "user_property": USER,
        "content_type": "application/json"}),
    Publish("", b"by alias", qos=2, packet_id=65535, dup=True, properties={"topic_alias": 1}),
    Publish("a/b", b"x" * 300, properties={"user_property": [("a", "b" * 200)]}),
    PubAck(7), PubAck(7, 0x10), PubAck(7, 0x99, {"reason_string": "bad payload"}),
    PubAck(7, 0, {"user_property": USER}),
    PubRec(8), PubRec(8, 0x80), PubRec(8, 0x91, {"reason_string": "in use"}),
    PubRel(9), PubRel(9, 0x92), PubRel(9, 0, {"reason_string": "x"}),
    PubComp(10), PubComp(10, 0x92, {"user_property": USER}),
    Subscribe(1, [SubscriptionRequest("a/+", 0), SubscriptionRequest("#", 2, True, True, 2),
                  SubscriptionRequest("$share/g/x", 1, False, True, 1)],
              {"subscription_identifier": 268_435_455, "user_property": USER}),
    Unsubscribe(2, ["a/+", "#"]),
    Unsubscribe(2, ["a"], {"user_property": USER}),
    PingReq(),
    Disconnect(), Disconnect(0x04), Disconnect(0x80, {"session_expiry_interval": 0,
                                                      "reason_string": "bye"}),
    Auth(), Auth(0x18, {"authentication_method": "SCRAM", "authentication_data": b"x"}),
    Auth(0x19, {"authentication_method": "SCRAM", "reason_string": "again"}),
]

SERVER_PACKETS = [
    ConnAck(), ConnAck(True, 0, {
        "session_expiry_interval": 10, "receive_maximum": 20, "maximum_qos": 1,
        "retain_available": 0, "maximum_packet_size": 1000,
        "assigned_client_identifier": "auto-1", "topic_alias_maximum": 10,
        "reason_string": "welcome", "user_property": USER,
        "wildcard_subscription_available": 1, "subscription_identifier_available": 0,
        "shared_subscription_available": 1, "server_keep_alive": 0,
        "response_information": "resp/", "server_reference": "other:1883",
        "authentication_method": "SCRAM", "authentication_data": b"\x00"}),
    ConnAck(False, 0x84), ConnAck(False, 0x9C, {"server_reference": "b"}),
    Publish("a/b", b"p", qos=1, packet_id=3, properties={"subscription_identifier": [1, 2, 300]}),
    PubAck(1, 0x10), PubRec(2), PubRel(3, 0x92), PubComp(4),
    SubAck(5, [0, 1, 2, 0x80, 0x8F, 0x9E, 0xA1, 0xA2]),
    SubAck(5, [0], {"reason_string": "ok", "user_property": USER}),
    UnsubAck(6, [0, 0x11]), UnsubAck(6, [0x87], {"reason_string": "no"}),
    PingResp(),
    Disconnect(0x8B, {"server_reference": "x", "reason_string": "shutting down"}),
    Disconnect(0x93), Disconnect(0x95),
    Auth(0x18, {"authentication_method": "SCRAM"}),
]


@pytest.mark.parametrize("packet", CLIENT_PACKETS, ids=lambda p: type(p).__name__)
def test_client_packets_round_trip(packet):
    """[§2.2.2] Every packet a client sends, with every property it may
    carry, comes back equal through a server's level-5 parser, whole or
    byte by byte."""
    wire = encode(packet, protocol_level=5)
    assert parse(wire) == [packet]
    parser = server()
    assert [p for i in range(len(wire)) for p in parser.feed(wire[i:i + 1])] == [packet]


@pytest.mark.parametrize("packet", SERVER_PACKETS, ids=lambda p: type(p).__name__)
def test_server_packets_round_trip(packet):
    """Every packet a server sends comes back equal through a client's parser."""
    assert parse(encode(packet, protocol_level=5), client()) == [packet]


def test_connect_encodes_by_its_own_level():
    """A level-5 CONNECT has the level-5 layout whatever level ``encode`` is
    given, as the parser reads a CONNECT by its own level."""
    packet = Connect("c", protocol_level=5, properties={"receive_maximum": 1})
    assert encode(packet) == encode(packet, protocol_level=5)


# -- the wire layout, byte by byte -----------------------------------------------

def test_connect_layout():
    """[§3.1.2.11] [§3.1.3.2] [MQTT-3.1.3-1] Properties after Keep Alive; the Will
    properties before the Will Topic; the CONNECT sets the connection's level."""
    wire = connect5(0x2E, props(b"\x11" + u32(30), b"\x21" + u16(5)),
                    s("c") + props(b"\x18" + u32(9)) + s("w") + s(b"\x01"))
    parser = Parser(max_connect_size=1000)
    (packet,) = parser.feed(wire)
    assert packet == Connect("c", True, 60, Will("w", b"\x01", 1, True, {"will_delay_interval": 9}),
                             protocol_level=5,
                             properties={"session_expiry_interval": 30, "receive_maximum": 5})
    assert parser.protocol_level == 5
    assert encode(packet) == wire


@pytest.mark.parametrize("wire, packet", [
    (b"\x40\x02\x00\x07", PubAck(7)),
    (b"\x40\x03\x00\x07\x10", PubAck(7, 0x10)),
    (b"\x40\x04\x00\x07\x10\x00", PubAck(7, 0x10)),
    (b"\x50\x04\x00\x07\x00\x00", PubRec(7)),
    (b"\x62\x03\x00\x07\x92", PubRel(7, 0x92)),
    (b"\x70\x08\x00\x07\x00\x04\x1f\x00\x01x", PubComp(7, 0, {"reason_string": "x"})),
])
def test_ack_reason_code_and_properties_may_be_omitted(wire, packet):
    """[§3.4.2.1] [§3.4.2.2.1] Remaining Length 2: Success, no properties; 3:
    a reason code, no properties; more: both."""
    assert parse(wire) == [packet]


def test_ack_encoding_is_as_short_as_allowed():
    """[§3.4.2.1] The encoder omits what it may: a Success PUBACK is the 3.1.1
    one, a reason code without properties has Remaining Length 3."""
    assert encode(PubAck(7), 5) == encode_puback(7) == b"\x40\x02\x00\x07"
    assert encode(PubAck(7, 0x10), 5) == b"\x40\x03\x00\x07\x10"
    assert encode(Disconnect(), 5) == b"\xe0\x00"
    assert encode(Disconnect(0x04), 5) == b"\xe0\x01\x04"
    assert encode(Auth(), 5) == b"\xf0\x00"


@pytest.mark.parametrize("wire, packet", [
    (b"\xe0\x00", Disconnect()),
    (b"\xe0\x01\x04", Disconnect(0x04)),
    (b"\xe0\x02\x00\x00", Disconnect()),
    (b"\xe0\x07\x8e\x05\x11" + u32(0), Disconnect(0x8E, {"session_expiry_interval": 0})),
    (b"\xf0\x00", Auth()),
    (b"\xf0\x02\x18\x00", Auth(0x18)),
])
def test_disconnect_and_auth_short_forms(wire, packet):
    """[§3.14.2.1] [§3.14.2.2.1] [§3.15.2.1] DISCONNECT may end after its reason
    code; both may be empty for Success."""
    assert parse(wire) == [packet]


def test_auth_omits_reason_and_properties_together():
    """[§3.15.2.1] AUTH has both reason code and property length, or neither."""
    rejects(b"\xf0\x01\x18", 0x81, error=MalformedPacket)


def test_subscription_options_bits():
    """[§3.8.3.1] QoS in bits 0-1, No Local bit 2, Retain As Published bit 3,
    Retain Handling bits 4-5."""
    wire = frame(0x82, u16(1) + b"\x00" + s("a") + b"\x2d" + s("b") + b"\x10")
    assert parse(wire) == [Subscribe(1, [SubscriptionRequest("a", 1, True, True, 2),
                                         SubscriptionRequest("b", 0, False, False, 1)])]
    assert encode(parse(wire)[0], 5) == wire


def test_publish_subscription_identifiers_are_a_list():
    """[MQTT-3.3.4-3] A PUBLISH to a client may carry several Subscription
    Identifiers; they come back as a list, in order."""
    wire = frame(0x30, s("t") + props(b"\x0b\x05", b"\x0b\x80\x01") + b"p")
    assert parse(wire, client()) == [Publish("t", b"p", properties={
        "subscription_identifier": [5, 128]})]


def test_user_properties_keep_order_and_repeats():
    """[MQTT-3.3.2-18] [§3.1.2.11.8] User Properties may repeat, names too; order is kept."""
    items = [b"\x26" + s("a") + s("1"), b"\x26" + s("b") + s("2"), b"\x26" + s("a") + s("3")]
    wire = frame(0x30, s("t") + props(*items))
    assert parse(wire)[0].properties == {"user_property": [("a", "1"), ("b", "2"), ("a", "3")]}


# -- the PUBLISH fast path ---------------------------------------------------------

@pytest.mark.parametrize("qos, packet_id", [(0, 0), (1, 9), (2, 65535)])
def test_encode_publish5_matches_encode(qos, packet_id):
    """Shared properties encoded once plus per-subscriber ones appended give
    the same bytes as encoding the whole packet."""
    shared = {"content_type": "text/plain", "user_property": USER}
    mine = {"subscription_identifier": [3, 70000], "topic_alias": 2}
    whole = Publish("a/b", b"x" * 200, qos, True, False, packet_id or None, {**shared, **mine})
    wire = encode_publish5("a/b", b"x" * 200, qos, True, False, packet_id,
                           property_bytes(shared) + property_bytes(mine))
    assert wire == encode(whole, 5)
    assert parse(wire, client()) == [whole]
    if qos:
        head, tail = encode_publish5_parts("a/b", b"x" * 200, qos, True,
                                           properties=property_bytes(shared) + property_bytes(mine))
        assert head + packet_id.to_bytes(2, "big") + tail == wire


def test_encode_publish5_without_properties():
    """An empty property block is one zero byte."""
    assert encode_publish5("t", b"p", 0, False) == b"\x30\x05\x00\x01t\x00p"


def test_property_bytes_refuses_what_the_wire_cannot_carry():
    """An unknown name, a value out of range: ValueError, never bad bytes."""
    for bad in ({"no_such_property": 1}, {"topic_alias": 65536},
                {"subscription_identifier": 268_435_456}, {"message_expiry_interval": 1 << 32},
                {"maximum_qos": 256}):
        with pytest.raises(ValueError):
            property_bytes(bad)


# -- malformed packets: 0x81 ---------------------------------------------------------

@pytest.mark.parametrize("wire", [
    connect5(properties=props(b"\x23" + u16(1))),                     # Topic Alias in CONNECT
    connect5(properties=props(b"\x18" + u32(1))),                     # Will Delay outside Will
    connect5(0x06, payload=s("c") + props(b"\x11" + u32(1)) + s("w") + s(b"")),  # in Will
    frame(0x30, s("t") + props(b"\x11" + u32(1))),                    # Session Expiry in PUBLISH
    frame(0x40, u16(1) + b"\x00" + props(b"\x01\x00")),               # PUBACK Payload Format
    frame(0x82, u16(1) + props(b"\x23" + u16(1)) + s("a") + b"\x00"),  # SUBSCRIBE Topic Alias
    frame(0xA2, u16(1) + props(b"\x0b\x01") + s("a")),                 # UNSUBSCRIBE Sub Id
    frame(0xE0, b"\x00" + props(b"\x21" + u16(1))),                    # DISCONNECT Receive Max
    frame(0xF0, b"\x18" + props(b"\x11" + u32(1))),                    # AUTH Session Expiry
    frame(0x30, s("t") + props(b"\x00")),                              # identifier 0
    frame(0x30, s("t") + props(b"\x7f\x00")),                          # unknown identifier
    frame(0x30, s("t") + props(b"\x81\x00")),                          # identifier as a 2-byte VBI
], ids=["connect-alias", "connect-will-delay", "will-session-expiry", "publish-session-expiry",
        "puback-payload-format", "subscribe-alias", "unsubscribe-subid",
        "disconnect-receive-max", "auth-session-expiry", "id-0", "id-0x7f", "id-vbi"])
def test_property_not_valid_in_packet_is_malformed(wire):
    """[§2.2.2.2] An identifier that is not valid for its packet
    type is a Malformed Packet."""
    rejects(wire, 0x81, error=MalformedPacket)


@pytest.mark.parametrize("wire", [
    frame(0x30, s("t") + b"\x05\x02\x00"),                              # block past the end
    frame(0x30, s("t") + props(b"\x02\x00\x00")),                      # U32 cut short
    frame(0x30, s("t") + props(b"\x23\x00")),                          # U16 cut short
    frame(0x30, s("t") + props(b"\x01")),                              # byte missing
    frame(0x30, s("t") + props(b"\x03\x00\x05ab")),                    # string past the block
    frame(0x30, s("t") + props(b"\x03" + s(b"\xff"))),                 # not UTF-8
    frame(0x30, s("t") + props(b"\x26" + s("a\x00b") + s("v"))),       # U+0000 in a name
    frame(0x30, s("t") + props(b"\x26" + s("a"))),                     # pair without value
    frame(0x30, s("t") + props(b"\x09\x00")),                          # binary cut short
    frame(0x30, s("t") + props(b"\x0b\x80\x80\x80\x80\x01")),          # 5-byte VBI
    frame(0x30, s("t") + props(b"\x0b\x80")),                          # VBI cut short
    frame(0x30, s("t") + b"\x80\x80\x80\x80\x01"),                     # 5-byte property length
    frame(0x30, s("t")),                                               # no property length
    frame(0x32, s("t") + u16(1)),                                      # none after the id
    frame(0x82, u16(1)),                                               # SUBSCRIBE without
    connect5(properties=b""),                                          # CONNECT without
], ids=["block", "u32", "u16", "byte", "string", "utf8", "nul", "pair", "binary", "vbi5",
        "vbi-short", "length5", "publish-none", "publish1-none", "subscribe-none",
        "connect-none"])
def test_property_values_that_do_not_decode_are_malformed(wire):
    """[MQTT-1.5.4-1] [MQTT-1.5.4-2] [MQTT-2.2.2-1] [§1.5.5] [§2.2.2.1] Lengths and values
    that do not fit, and bad strings, are a Malformed Packet."""
    rejects(wire, 0x81, error=MalformedPacket)


@pytest.mark.parametrize("options", [0x40, 0x80, 0xC1], ids=hex)
def test_subscription_options_reserved_bits(options):
    """[MQTT-3.8.3-5] Reserved bits 6-7 of the Subscription Options: malformed."""
    rejects(frame(0x82, u16(1) + b"\x00" + s("a") + bytes([options])), 0x81)


@pytest.mark.parametrize("wire", [
    frame(0x20, b"\x00\x00"),                                           # CONNACK without properties
    frame(0x20, b"\x02\x00\x00"),                                       # reserved ack flag
    frame(0x90, u16(1) + b"\x00"),                                      # SUBACK without codes
    frame(0xB0, u16(1) + b"\x00"),                                      # UNSUBACK without codes
    frame(0x20, b"\x00\x00\x00\x00"),                                   # bytes after properties
])
def test_server_packets_malformed(wire):
    """[MQTT-3.2.2-1] [§3.9.3] [§3.11.3] A client's parser refuses broken server packets."""
    rejects(wire, 0x81, client(), MalformedPacket)


def test_bytes_after_the_last_field():
    """[§2.2.2] An acknowledgement's properties end the packet."""
    rejects(frame(0x40, u16(1) + b"\x00\x00\x00"), 0x81)
    rejects(frame(0xE0, b"\x00\x00\x00"), 0x81)


# -- protocol errors: 0x82, 0x94 -----------------------------------------------------

@pytest.mark.parametrize("wire", [
    connect5(properties=props(b"\x11" + u32(1), b"\x11" + u32(2))),
    connect5(properties=props(b"\x15" + s("a"), b"\x15" + s("a"))),
    connect5(0x06, payload=s("c") + props(b"\x18" + u32(1), b"\x18" + u32(1)) + s("w") + s(b"")),
    frame(0x30, s("t") + props(b"\x23" + u16(1), b"\x23" + u16(1))),
    frame(0x30, s("t") + props(b"\x03" + s("a"), b"\x03" + s("b"))),
    frame(0x82, u16(1) + props(b"\x0b\x01", b"\x0b\x02") + s("a") + b"\x00"),
    frame(0x40, u16(1) + b"\x00" + props(b"\x1f" + s("a"), b"\x1f" + s("a"))),
    frame(0xE0, b"\x00" + props(b"\x11" + u32(1), b"\x11" + u32(1))),
], ids=["session-expiry", "auth-method", "will-delay", "topic-alias", "content-type",
        "subscribe-subid", "reason-string", "disconnect-session-expiry"])
def test_property_twice_is_a_protocol_error(wire):
    """[§2.2.2.2] [§3.1.2.11.2] [§3.3.2.3.4] [§3.8.2.1.2] It is a Protocol Error to
    include a property more than once, unless the specification allows it."""
    rejects(wire, 0x82)


@pytest.mark.parametrize("wire", [
    frame(0x30, s("t") + props(b"\x0b\x00")),                          # Subscription Identifier 0
    frame(0x82, u16(1) + props(b"\x0b\x00") + s("a") + b"\x00"),
    connect5(properties=props(b"\x21" + u16(0))),                      # Receive Maximum 0
    connect5(properties=props(b"\x27" + u32(0))),                      # Maximum Packet Size 0
    connect5(properties=props(b"\x17\x02")),                           # Request Problem Info 2
    connect5(properties=props(b"\x19\x02")),                           # Request Response Info 2
    frame(0x30, s("t") + props(b"\x01\x02")),                          # Payload Format 2
    connect5(properties=props(b"\x16" + s(b"x"))),                     # data without method
    frame(0xF0, b"\x18" + props(b"\x16" + s(b"x"))),
    frame(0x30, s("t") + props(b"\x08" + s("r/+"))),                   # wildcard Response Topic
    frame(0x30, s("t") + props(b"\x08" + s(""))),                      # empty Response Topic
    frame(0x30, s("") + b"\x00"),                                      # no topic, no alias
], ids=["publish-subid-0", "subscribe-subid-0", "receive-max-0", "max-packet-size-0",
        "request-problem-2", "request-response-2", "payload-format-2", "auth-data-connect",
        "auth-data-auth", "response-topic-wildcard", "response-topic-empty", "no-topic"])
def test_forbidden_values_are_protocol_errors(wire):
    """[§3.3.2.3.8] [§3.8.2.1.2] [§3.1.2.11.3] [§3.1.2.11.4] [§3.1.2.11.6]
    [§3.1.2.11.7] [§3.1.2.11.10] [MQTT-3.3.2-14] [§3.3.2.1]
    Values the specification forbids are a Protocol Error."""
    rejects(wire, 0x82)


def test_topic_alias_0():
    """[MQTT-3.3.2-8] Topic Alias 0 is refused with 0x94 Topic Alias invalid."""
    rejects(frame(0x30, s("t") + props(b"\x23" + u16(0))), 0x94)


def test_empty_topic_with_alias_is_legal():
    """[§3.3.2.1] [§3.3.2.3.4] A zero-length Topic Name with a Topic Alias;
    whether the alias is known is the connection's to check."""
    wire = frame(0x30, s("") + props(b"\x23" + u16(4)) + b"p")
    assert parse(wire) == [Publish("", b"p", properties={"topic_alias": 4})]


@pytest.mark.parametrize("options, what", [
    (0x03, "QoS 3"), (0x30, "Retain Handling 3"), (0x3E, "Retain Handling 3")])
def test_subscription_options_protocol_errors(options, what):
    """[§3.8.3.1] It is a Protocol Error to ask for QoS 3 or Retain Handling 3."""
    error = rejects(frame(0x82, u16(1) + b"\x00" + s("a") + bytes([options])), 0x82)
    assert what in error.reason


def test_no_local_on_a_shared_subscription():
    """[MQTT-3.8.3-4] No Local on a shared subscription is a Protocol Error."""
    rejects(frame(0x82, u16(1) + b"\x00" + s("$share/g/a") + b"\x04"), 0x82)
    assert parse(frame(0x82, u16(1) + b"\x00" + s("$share/g/a") + b"\x00"))


def test_subscribe_without_filters():
    """[MQTT-3.8.3-2] A SUBSCRIBE needs at least one filter."""
    rejects(frame(0x82, u16(1) + b"\x00"), 0x82)


@pytest.mark.parametrize("first, code", [
    (0x40, 0x92), (0x40, 0x01), (0x50, 0x04), (0x62, 0x10), (0x70, 0x80)], ids=str)
def test_ack_reason_code_not_its_own(first, code):
    """[MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1] Each
    acknowledgement uses its own reason codes."""
    rejects(frame(first, u16(1) + bytes([code])), 0x82)


@pytest.mark.parametrize("wire", [
    frame(0xE0, b"\x18"), frame(0xE0, b"\x05\x00"), frame(0xF0, b"\x04\x00"),
])
def test_disconnect_and_auth_reason_codes(wire):
    """[MQTT-3.14.2-1] [MQTT-3.15.2-1] DISCONNECT and AUTH use their own reason codes."""
    rejects(wire, 0x82)


@pytest.mark.parametrize("wire", [
    frame(0x20, b"\x00\x03\x00"),                       # not a CONNACK reason code
    frame(0x20, b"\x01\x80\x00"),                       # Session Present with a refusal
    frame(0x90, u16(1) + b"\x00\x03"),                  # SUBACK code 3
    frame(0xB0, u16(1) + b"\x00\x01"),                  # UNSUBACK code 1
])
def test_server_packets_protocol_errors(wire):
    """[MQTT-3.2.2-6] [MQTT-3.2.2-8] [MQTT-3.9.3-2] [MQTT-3.11.3-2] A client's
    parser refuses reason codes a server may not use."""
    rejects(wire, 0x82, client())


def test_packet_too_large_at_level_5():
    """[MQTT-3.2.2-15] [§3.2.2.3.6] A packet over the limit: 0x95, from its header."""
    error = rejects(b"\x30\xff\x7f", 0x95, server(max_packet_size=1000), PacketTooLarge)
    assert "exceeds" in error.reason


def test_connect_errors_carry_the_level():
    """[MQTT-4.13.1-1] A server may answer a bad level-5 CONNECT with a level-5
    CONNACK: the error says the CONNECT was level 5."""
    error = rejects(connect5(properties=props(b"\x21" + u16(0))), 0x82, Parser())
    assert error.protocol_level == 5
    with pytest.raises(ProtocolError) as info:
        Parser().feed(frame(0x10, s("MQTT") + bytes([4, 0x01]) + u16(0) + s("c")))
    assert info.value.protocol_level is None


def test_unsupported_level_is_still_refused():
    """[MQTT-3.1.2-2] A level other than 3, 4 and 5 gets UnsupportedProtocol (0x84)."""
    wire = frame(0x10, s("MQTT") + bytes([6, 2]) + u16(0) + b"\x00" + s("c"))
    rejects(wire, 0x84, Parser(), UnsupportedProtocol)


# -- the two levels kept apart --------------------------------------------------------

def test_3_1_1_publish_bytes_are_payload():
    """A PUBLISH on a 3.1.1 connection has no properties: bytes that would be a
    property block at level 5 are the payload."""
    wire = frame(0x30, s("t") + props(b"\x23" + u16(0)) + b"p")
    assert Parser().feed(wire) == [Publish("t", b"\x03\x23\x00\x00p")]
    rejects(wire, 0x94)


def test_level_5_publish_reads_properties():
    """The same bytes at level 5: a property block, then the payload."""
    wire = frame(0x30, s("t") + props(b"\x02" + u32(7)) + b"p")
    assert parse(wire) == [Publish("t", b"p", properties={"message_expiry_interval": 7})]
    assert Parser().feed(wire)[0].payload == props(b"\x02" + u32(7)) + b"p"


def test_auth_is_refused_at_3_1_1():
    """[§2.2.1 (3.1.1)] Packet type 15 is reserved in 3.1.1; AUTH at level 5 only."""
    rejects(b"\xf0\x00", 0x81, Parser(), MalformedPacket)
    rejects(encode(Auth(0x18, {"authentication_method": "m"}), 5), 0x81, Parser())
    with pytest.raises(ValueError):
        encode(Auth())


@pytest.mark.parametrize("wire", [
    b"\x40\x03\x00\x01\x10",                                # PUBACK with a reason code
    b"\x40\x04\x00\x01\x00\x00",                            # PUBACK with properties
    b"\xe0\x01\x04",                                        # DISCONNECT with a reason code
    frame(0x82, u16(1) + s("a") + b"\x04"),                 # No Local
    frame(0x82, u16(1) + s("a") + b"\x10"),                 # Retain Handling
])
def test_level_5_fields_are_malformed_at_3_1_1(wire):
    """[§3.4.1 (3.1.1)] [§3.14.1 (3.1.1)] [MQTT-3.8.3-4 (3.1.1)]
    What only level 5 may carry is malformed on a 3.1.1 connection."""
    rejects(wire, 0x81, Parser(), MalformedPacket)


def test_level_5_subscribe_at_3_1_1():
    """A level-5 SUBSCRIBE (property length 0, then the filter) on a 3.1.1
    connection is not read as a filter: it does not parse."""
    wire = encode(Subscribe(1, [SubscriptionRequest("a", 1)]), 5)
    with pytest.raises(MalformedPacket):
        Parser().feed(wire)


def test_password_without_user_name():
    """[§3.1.2.9] MQTT 5 allows a password without a user name;
    [MQTT-3.1.2-22 (3.1.1)] 3.1.1 does not."""
    assert parse(connect5(0x42, payload=s("c") + s(b"pw")), Parser())[0].password == b"pw"
    wire = frame(0x10, s("MQTT") + bytes([4, 0x42]) + u16(0) + s("c") + s(b"pw"))
    rejects(wire, 0x81, Parser(), MalformedPacket)


def test_connect_decides_the_level_for_pipelined_packets():
    """The packets behind a CONNECT in one read are decoded by its level: a
    level-5 CONNECT makes the PUBLISH behind it carry properties, a 3.1.1
    one makes the same bytes payload."""
    publish = frame(0x30, s("t") + props(b"\x02" + u32(7)) + b"p")
    parser = Parser(max_connect_size=1000)
    assert parser.feed(connect5() + publish)[1].properties == {"message_expiry_interval": 7}
    assert parser.protocol_level == 5
    parser = Parser(max_connect_size=1000)
    old = frame(0x10, s("MQTT") + bytes([4, 2]) + u16(0) + s("c"))
    assert parser.feed(old + publish)[1].properties == {}
    assert parser.protocol_level == 4


def test_3_1_1_encoding_drops_what_it_cannot_carry():
    """Encoding at 3.1.1 writes no properties or reason codes."""
    packet = Publish("t", b"p", properties={"message_expiry_interval": 1})
    assert encode(packet) == b"\x30\x04\x00\x01tp"
    assert encode(PubAck(1, 0x10, {"reason_string": "x"})) == b"\x40\x02\x00\x01"
    assert encode(Disconnect(0x04)) == b"\xe0\x00"


def test_ping_packets_are_the_same():
    """[§3.12] [§3.13] PINGREQ and PINGRESP have no properties at level 5."""
    assert encode(PingReq(), 5) == b"\xc0\x00"
    assert encode(PingResp(), 5) == b"\xd0\x00"
    rejects(b"\xc0\x01\x00", 0x81)


# -- the PUBLISH property cache -----------------------------------------------------------

def test_each_publish_gets_its_own_properties():
    """Properties read from the block cache are a fresh dict with fresh lists
    each time: changing one PUBLISH's properties changes no other."""
    wire = frame(0x30, s("t") + props(b"\x03" + s("text/plain"), b"\x26" + s("k") + s("v"),
                                      b"\x26" + s("k") + s("w")) + b"p")
    first, second = parse(wire + wire)
    first.properties["user_property"].append(("x", "y"))
    first.properties["content_type"] = "changed"
    (third,) = parse(wire)
    expected = {"content_type": "text/plain", "user_property": [("k", "v"), ("k", "w")]}
    assert second.properties == third.properties == expected


def test_a_refused_block_is_refused_every_time():
    """A block that broke a rule is never remembered as good."""
    wire = frame(0x30, s("t") + props(b"\x23" + u16(1), b"\x23" + u16(1)))
    for _ in range(2):
        rejects(wire, 0x82)


def test_block_cache_is_bounded():
    """However many different blocks arrive, the cache holds a bounded number."""
    from reactorapp.mqtt import codec

    parser = server()
    for i in range(codec._PROPERTY_BLOCKS_MAX + 10):
        parser.feed(frame(0x30, s("t") + props(b"\x02" + u32(i))))
        assert len(codec._PROPERTY_BLOCKS) <= codec._PROPERTY_BLOCKS_MAX


def test_client_publish_with_subscription_identifier():
    """[MQTT-3.3.4-6] A PUBLISH from a client carries no Subscription Identifier:
    a server refuses it with 0x82, with or without a topic name; a client
    reads it."""
    for topic, extra in ((s("t"), b""), (s(""), b"\x23" + u16(1))):
        wire = frame(0x30, topic + props(b"\x0b\x05", extra) + b"p")
        rejects(wire, 0x82)
        assert parse(wire, client())[0].properties["subscription_identifier"] == [5]


@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("size", [0, 100, 200, 20000])
def test_the_qos0_fan_out_encoder_writes_what_encode_writes(retain, size):
    """`encode_publish0_plain5` is the level-5 QoS 0 PUBLISH without
    properties, byte for byte, on both sides of a one-byte length."""
    from reactorapp.mqtt.codec import encode_publish0_plain5

    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    packet = Publish("a/b", payload, 0, retain)
    assert encode_publish0_plain5("a/b", payload, retain) == encode(packet, 5)
