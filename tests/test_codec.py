"""The MQTT codec on its own: framing, every validation rule, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactorapp.mqtt.codec import (
    PINGRESP_BYTES,
    MalformedPacket,
    PacketTooLarge,
    Parser,
    ProtocolError,
    UnsupportedProtocol,
    encode,
    encode_puback,
    encode_pubcomp,
    encode_publish,
    encode_publish_parts,
    encode_pubrec,
    encode_pubrel,
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

EXAMPLES = settings(max_examples=200, deadline=None)


# -- raw wire helpers, written independently of the codec ----------------------

def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def s(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return u16(len(raw)) + raw


def connect_bytes(
    flags: int = 0x02, payload: bytes = s("c"), name: bytes = b"MQTT", level: int = 4
) -> bytes:
    return frame(0x10, s(name) + bytes([level, flags]) + u16(60) + payload)


def parse(data: bytes, **kw) -> list:
    parser = Parser(**kw)
    packets = parser.feed(data)
    assert parser.buffered == 0
    return packets


def rejects(data: bytes, error=ProtocolError, **kw) -> ProtocolError:
    with pytest.raises(error) as info:
        Parser(**kw).feed(data)
    return info.value


# -- round trips by example -----------------------------------------------------

CLIENT_PACKETS = [
    Connect("client-1"),
    Connect("", clean_session=False, keep_alive=65535),
    Connect("c", will=Will("w/t", b"bye", 2, True), username="u", password=b"\x00\xff"),
    Connect("c", will=Will("w", b"", 0, False), username=""),
    Publish("a/b", b"payload"),
    Publish("a/b", b"", qos=1, packet_id=1, retain=True),
    Publish("a/b", b"x" * 300, qos=2, packet_id=65535, dup=True),
    PubAck(7),
    PubRec(8),
    PubRel(9),
    PubComp(10),
    Subscribe(1, [SubscriptionRequest("a/+", 0), SubscriptionRequest("#", 2)]),
    Unsubscribe(2, ["a/+", "#"]),
    PingReq(),
    Disconnect(),
]

SERVER_PACKETS = [
    ConnAck(),
    ConnAck(True, 0),
    ConnAck(False, 5),
    Publish("a/b", b"p", qos=1, packet_id=3),
    PubAck(1),
    PubRec(2),
    PubRel(3),
    PubComp(4),
    SubAck(5, [0, 1, 2, 0x80]),
    UnsubAck(6),
    PingResp(),
]


@pytest.mark.parametrize("packet", CLIENT_PACKETS, ids=lambda p: type(p).__name__)
def test_client_packets_round_trip(packet):
    """Every packet a client sends comes back equal through the server parser."""
    assert parse(encode(packet)) == [packet]


@pytest.mark.parametrize("packet", SERVER_PACKETS, ids=lambda p: type(p).__name__)
def test_server_packets_round_trip(packet):
    """Every packet a server sends comes back equal through a client-side parser."""
    assert parse(encode(packet), server_side=False) == [packet]


@pytest.mark.parametrize(
    "packet, wire",
    [
        (ConnAck(), b"\x20\x02\x00\x00"),
        (ConnAck(True, 0), b"\x20\x02\x01\x00"),
        (ConnAck(False, 1), b"\x20\x02\x00\x01"),
        (SubAck(0x1234, [0, 1, 2, 0x80]), b"\x90\x06\x12\x34\x00\x01\x02\x80"),
        (UnsubAck(7), b"\xb0\x02\x00\x07"),
        (PingResp(), b"\xd0\x00"),
        (PubAck(1), b"\x40\x02\x00\x01"),
        (PubRec(2), b"\x50\x02\x00\x02"),
        (PubRel(3), b"\x62\x02\x00\x03"),
        (PubComp(4), b"\x70\x02\x00\x04"),
        (Publish("t", b"p", qos=1, packet_id=5, retain=True, dup=True),
         b"\x3b\x06\x00\x01t\x00\x05p"),
        (Publish("t"), b"\x30\x03\x00\x01t"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "",
)
def test_server_sent_bytes(packet, wire):
    """[MQTT-2.2.2-1] [§3.2] [MQTT-3.10.4-4] [MQTT-3.12.4-1] [MQTT-3.6.1-1]
    Server packets use flags 0000 except PUBLISH and PUBREL (0010)."""
    assert encode(packet) == wire


def test_fast_ack_helpers_match_encode():
    """[MQTT-2.3.1-6] The ack helpers carry the id in the same bytes as encode()."""
    assert encode_puback(513) == encode(PubAck(513))
    assert encode_pubrec(513) == encode(PubRec(513))
    assert encode_pubrel(513) == encode(PubRel(513))
    assert encode_pubcomp(513) == encode(PubComp(513))
    assert PINGRESP_BYTES == encode(PingResp()) == b"\xd0\x00"


# -- hypothesis: strategies ---------------------------------------------------

mqtt_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
topic_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00+#"), min_size=1, max_size=12
)
packet_ids = st.integers(1, 65535)
payloads = st.binary(max_size=200)


@st.composite
def connects(draw):
    username = draw(st.none() | mqtt_text)
    return Connect(
        client_id=draw(mqtt_text),
        clean_session=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 65535)),
        will=draw(st.none() | st.builds(
            Will, topic_names, st.binary(max_size=30), st.integers(0, 2), st.booleans()
        )),
        username=username,
        password=None if username is None else draw(st.none() | st.binary(max_size=30)),
    )


@st.composite
def publishes(draw):
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(topic_names), draw(payloads), qos, draw(st.booleans()),
        dup=bool(qos) and draw(st.booleans()),
        packet_id=draw(packet_ids) if qos else None,
    )


acks = st.one_of(*(st.builds(cls, packet_ids) for cls in (PubAck, PubRec, PubRel, PubComp)))
subscribes = st.builds(
    Subscribe, packet_ids,
    st.lists(st.builds(SubscriptionRequest, mqtt_text, st.integers(0, 2)), min_size=1, max_size=4),
)
unsubscribes = st.builds(Unsubscribe, packet_ids, st.lists(mqtt_text, min_size=1, max_size=4))
client_packets = st.one_of(
    connects(), publishes(), acks, subscribes, unsubscribes,
    st.just(PingReq()), st.just(Disconnect()),
)
server_packets = st.one_of(
    st.builds(ConnAck, st.booleans(), st.integers(0, 5)),
    publishes(), acks,
    st.builds(SubAck, packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1)),
    st.builds(UnsubAck, packet_ids),
    st.just(PingResp()),
)


@EXAMPLES
@given(client_packets)
def test_client_packet_round_trip_property(packet):
    """parse(encode(p)) == p for every client-to-server packet."""
    assert parse(encode(packet)) == [packet]


@EXAMPLES
@given(server_packets)
def test_server_packet_round_trip_property(packet):
    """parse(encode(p)) == p for every server-to-client packet, parsed as a client."""
    assert parse(encode(packet), server_side=False) == [packet]


@EXAMPLES
@given(st.lists(client_packets, min_size=1, max_size=6), st.data())
def test_stream_split_anywhere_gives_the_same_packets(packets, data):
    """[§2.2.3] One read may hold part of a packet or several: framing is incremental."""
    stream = b"".join(encode(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = Parser()
    got = []
    for start, stop in zip([0] + cuts, cuts + [len(stream)]):
        got += parser.feed(stream[start:stop])
    assert got == packets
    assert parser.buffered == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(client_packets, min_size=1, max_size=4))
def test_one_byte_at_a_time_gives_the_same_packets(packets):
    """[§2.2.3] Feeding one byte per read yields the same packets as one read."""
    stream = b"".join(encode(p) for p in packets)
    parser = Parser()
    got = []
    for i in range(len(stream)):
        got += parser.feed(stream[i:i + 1])
    assert got == packets == parse(stream)


def feed_only_protocol_errors(data: bytes, chunk: int = 0, **kw) -> None:
    parser = Parser(**kw)
    try:
        if chunk:
            for i in range(0, len(data), chunk):
                parser.feed(data[i:i + chunk])
        else:
            parser.feed(data)
    except Exception as error:  # noqa: BLE001 - the point is to see any type
        assert isinstance(error, ProtocolError), repr(error)


@EXAMPLES
@given(st.binary(max_size=300), st.integers(0, 7), st.booleans())
def test_arbitrary_bytes_raise_only_protocol_errors(data, chunk, server_side):
    """[MQTT-4.8.0-1] Garbage is refused as a protocol error, never a crash."""
    feed_only_protocol_errors(data, chunk, server_side=server_side)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
)


@EXAMPLES
@given(
    st.lists(client_packets, min_size=1, max_size=3),
    st.lists(mutations, min_size=1, max_size=4),
)
def test_mutated_packets_raise_only_protocol_errors(packets, edits):
    """[MQTT-4.8.0-1] Near-valid packets with flipped, inserted or deleted bytes."""
    data = bytearray(b"".join(encode(p) for p in packets))
    for op, index, value in edits:
        index %= len(data) + 1
        if op == "insert":
            data.insert(index, value)
        elif index < len(data):
            if op == "flip":
                data[index] ^= 1 << value
            else:
                del data[index]
        if not data:
            break
    feed_only_protocol_errors(bytes(data))
    feed_only_protocol_errors(bytes(data), chunk=3)


@EXAMPLES
@given(topic_names, payloads, st.integers(0, 2), st.booleans(), st.booleans(), packet_ids)
def test_fast_publish_encoders_match_encode(topic, payload, qos, retain, dup, packet_id):
    """encode_publish and encode_publish_parts give the bytes of encode(Publish(...))."""
    dup = dup and bool(qos)
    packet = Publish(topic, payload, qos, retain, dup, packet_id if qos else None)
    fast = encode_publish(topic, payload, qos, retain, dup, packet_id if qos else 0)
    assert fast == encode(packet)
    if qos:
        head, body = encode_publish_parts(topic, payload, qos, retain, dup)
        assert body == payload
        assert head + packet_id.to_bytes(2, "big") + body == encode(packet)


# -- fixed header ---------------------------------------------------------------

def test_reserved_packet_type_0():
    """[§2.2.1] [MQTT-4.8.0-1] Packet type 0 is reserved: refused from its first byte."""
    error = rejects(b"\x00", MalformedPacket)
    assert error.reason_code == 0x81


def test_packet_type_15_is_reserved_in_3_1_1_and_auth_in_5():
    """[§2.2.1] Type 15 is reserved in 3.1.1; it is AUTH only at protocol level 5."""
    rejects(b"\xf0\x00", MalformedPacket)
    assert parse(b"\xf0\x00", protocol_level=5) == [Auth()]
    parser = Parser()
    parser.protocol_level = 5
    assert parser.feed(b"\xf0\x00") == [Auth()]


@pytest.mark.parametrize(
    "wire", [b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x00", b"\xb0\x02\x00\x01", b"\xd0\x00"]
)
def test_server_only_types_from_a_client(wire):
    """[§2.2.1] A client may not send CONNACK, SUBACK, UNSUBACK or PINGRESP."""
    error = rejects(wire)
    assert error.reason_code == 0x82


@pytest.mark.parametrize("packet", [Connect("c"), Subscribe(1, [SubscriptionRequest("a")]),
                                    Unsubscribe(1, ["a"]), PingReq(), Disconnect()],
                         ids=lambda p: type(p).__name__)
def test_client_only_types_from_a_server(packet):
    """A client-side parser refuses what only clients send (DISCONNECT too, in 3.1.1)."""
    rejects(encode(packet), server_side=False)


FLAG_TABLE = {0x1: 0, 0x4: 0, 0x5: 0, 0x6: 2, 0x7: 0, 0x8: 2, 0xA: 2, 0xC: 0, 0xE: 0}


@pytest.mark.parametrize(
    "first",
    [t << 4 | f for t, good in FLAG_TABLE.items() for f in range(16) if f != good],
    ids=lambda b: f"0x{b:02x}",
)
def test_wrong_fixed_header_flags(first):
    """[MQTT-2.2.2-2] [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] [MQTT-3.14.1-1]
    Flag bits that differ from the table are refused from the first byte."""
    rejects(bytes([first]), MalformedPacket)


def test_pubrel_subscribe_unsubscribe_need_flags_0010():
    """[MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] The 0010 forms are accepted."""
    assert parse(b"\x62\x02\x00\x01") == [PubRel(1)]
    subscribe = Subscribe(1, [SubscriptionRequest("a")])
    assert parse(frame(0x82, u16(1) + s("a") + b"\x00")) == [subscribe]
    assert parse(frame(0xA2, u16(1) + s("a"))) == [Unsubscribe(1, ["a"])]


def test_publish_qos_3():
    """[MQTT-3.3.1-4] A PUBLISH with both QoS bits set is refused."""
    rejects(b"\x36", MalformedPacket)


def test_publish_dup_with_qos_0():
    """[MQTT-3.3.1-2] DUP=1 with QoS 0 is a protocol violation."""
    error = rejects(b"\x38")
    assert error.reason_code == 0x82


@pytest.mark.parametrize("size, header_len", [
    (0, 2), (127, 2), (128, 3), (16_383, 3), (16_384, 4), (2_097_151, 4), (2_097_152, 5),
])
def test_remaining_length_boundaries(size, header_len):
    """[§2.2.3] 1 to 4 length bytes, 7 bits each, least significant group first."""
    payload = b"p" * (size - 3) if size else b""
    packet = Publish("t", payload) if size else PingReq()
    wire = encode(packet)
    assert len(wire) == header_len + size
    assert wire[1:header_len] == remaining_length(size)
    assert parse(wire) == [packet]


def test_remaining_length_of_five_bytes():
    """[§2.2.3] A 4th length byte with the continuation bit is refused at once,
    without waiting for a 5th (the Errata 01 check before the multiplier grows)."""
    error = rejects(b"\x30\xff\xff\xff\xff", MalformedPacket)
    assert "4 bytes" in error.reason
    rejects(b"\x30\x80\x80\x80\x80\x00", MalformedPacket)


def test_largest_remaining_length_waits_for_the_body():
    """[§2.2.3] 0xFF 0xFF 0xFF 0x7F (268,435,455) is a legal length."""
    parser = Parser()
    assert parser.feed(b"\x30\xff\xff\xff\x7f") == []
    assert parser.buffered == 5


def test_packet_over_the_limit_is_refused_from_its_header():
    """[§2.2.3] A packet over max_packet_size is refused before its body is buffered."""
    parser = Parser(max_packet_size=100)
    with pytest.raises(PacketTooLarge) as info:
        parser.feed(b"\x30\xe8\x07")  # announces 1000 bytes, sends none
    assert info.value.reason_code == 0x95


def test_limit_counts_the_whole_packet():
    """max_packet_size bounds header plus body, like MQTT 5's Maximum Packet Size."""
    wire = encode(Publish("t", b"x" * 95))  # 2 + 98 = 100 bytes
    assert len(wire) == 100
    assert Parser(max_packet_size=100).feed(wire) == [Publish("t", b"x" * 95)]
    with pytest.raises(PacketTooLarge):
        Parser(max_packet_size=99).feed(wire[:2])


def test_buffer_holds_only_the_incomplete_tail():
    """[§2.2.3] Complete packets leave the buffer at once; only a partial one stays."""
    whole = encode(Publish("a", b"1")) * 3
    partial = encode(Publish("b", b"22222"))[:4]
    parser = Parser()
    assert len(parser.feed(whole + partial)) == 3
    assert parser.buffered == len(partial)
    assert parser.feed(encode(Publish("b", b"22222"))[4:]) == [Publish("b", b"22222")]
    assert parser.buffered == 0


# -- fields and fixed sizes -------------------------------------------------------

@pytest.mark.parametrize("wire", [
    frame(0x30, u16(5) + b"abc"),                           # topic past the end
    frame(0x30, b"\x00"),                                   # half a topic length
    frame(0x32, s("a") + b"\x00"),                          # half a packet id
    frame(0x10, s("MQTT") + b"\x04\x02"),                   # truncated variable header
    connect_bytes(payload=u16(9) + b"c"),                   # client id past the end
    frame(0x82, u16(1) + s("a")),                           # filter without its QoS byte
    frame(0x82, u16(1) + u16(4) + b"a"),                    # filter past the end
    frame(0xA2, u16(1) + s("a") + b"\x00"),                 # half a second filter
    frame(0x82, b"\x00"),                                   # half a packet id
])
def test_field_overrunning_remaining_length(wire):
    """[§2.2.3] [§1.5.3] Every field must fit inside the Remaining Length."""
    rejects(wire, MalformedPacket)


@pytest.mark.parametrize("first", [0x40, 0x50, 0x62, 0x70])
@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x01\x00"])
def test_acks_are_exactly_two_bytes(first, body):
    """[§2.2.3] PUBACK, PUBREC, PUBREL and PUBCOMP have a Remaining Length of 2."""
    rejects(frame(first, body), MalformedPacket)


@pytest.mark.parametrize("first", [0xC0, 0xE0])
def test_pingreq_and_disconnect_are_empty(first):
    """[§2.2.3] PINGREQ and DISCONNECT have a Remaining Length of 0 in 3.1.1."""
    rejects(frame(first, b"\x00"), MalformedPacket)


@pytest.mark.parametrize("first", [0x40, 0x50, 0x62, 0x70])
def test_acks_with_packet_id_0(first):
    """[MQTT-2.3.1-1] No packet carries Packet Identifier 0."""
    rejects(frame(first, b"\x00\x00"))


# -- UTF-8 strings ------------------------------------------------------------------

def string_fields(raw: bytes) -> list[bytes]:
    """Packets with ``raw`` (a string's bytes) in each kind of string field."""
    return [
        connect_bytes(payload=s(raw)),                                               # client id
        connect_bytes(0x06, s("c") + s(raw) + s(b"")),                               # will topic
        connect_bytes(0x82, s("c") + s(raw)),                                        # user name
        frame(0x30, s(raw)),                                                         # topic name
        frame(0x82, u16(1) + s(raw) + b"\x00"),                                      # filter
        frame(0xA2, u16(1) + s(raw)),                                                # filter
        connect_bytes(payload=s("c"), name=raw),                                     # protocol name
    ]


@pytest.mark.parametrize("raw", [
    b"\xc0\xaf",          # overlong "/"
    b"\xe0\x80\xaf",      # overlong "/"
    b"\xed\xa0\x80",      # surrogate U+D800
    b"\xed\xbf\xbf",      # surrogate U+DFFF
    b"\xff",              # never valid
    b"a\xe2\x82",         # truncated sequence
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
], ids=lambda raw: raw.hex())
def test_ill_formed_utf8_in_every_string(raw):
    """[MQTT-1.5.3-1] [MQTT-3.1.3-4] [MQTT-3.1.3-10] [MQTT-3.1.3-11] [MQTT-3.3.2-1]
    [MQTT-3.8.3-1] Ill-formed UTF-8 in any string field is refused."""
    for wire in string_fields(raw):
        rejects(wire, MalformedPacket)


def test_u0000_in_every_string():
    """[MQTT-1.5.3-2] [MQTT-4.7.3-2] U+0000 in any string field is refused."""
    for wire in string_fields(b"a\x00b"):
        rejects(wire, MalformedPacket)


def test_bom_is_kept():
    """[MQTT-1.5.3-3] EF BB BF is U+FEFF and stays part of the string."""
    packet = parse(connect_bytes(payload=s(b"\xef\xbb\xbfid")))[0]
    assert packet.client_id == "\ufeffid"
    assert parse(frame(0x30, s(b"\xef\xbb\xbft")))[0].topic == "\ufefft"


def test_control_characters_are_allowed():
    """[§1.5.3] Policy: U+0001-U+001F, U+007F-U+009F and non-characters are accepted."""
    odd = "\x01a\x1f\x7f\x9f\ufffe"
    assert parse(encode(Publish(odd)))[0].topic == odd
    assert parse(encode(Connect(odd)))[0].client_id == odd


def test_password_and_will_message_are_binary():
    """[§3.1.3] Password and Will Message are not decoded as UTF-8."""
    payload = s("c") + s("w") + s(b"\x00\xff\xc0") + s("u") + s(b"\xed\xa0\x80\x00")
    wire = connect_bytes(0xC6, payload)
    packet = parse(wire)[0]
    assert packet.will.payload == b"\x00\xff\xc0"
    assert packet.password == b"\xed\xa0\x80\x00"


# -- CONNECT ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, level", [("MQTT", 3), ("MQTT", 6), ("MQTT", 0x84), ("MQIsdp", 4),
                                         ("MQIsdp", 5)])
def test_unsupported_protocol_level(name, level):
    """[MQTT-3.1.2-2] [MQTT-3.1.2-1] "MQTT" at a level other than 4 or 5, or "MQIsdp"
    at a level other than 3, gets UnsupportedProtocol: the server answers CONNACK 0x01."""
    wire = encode(Connect("c", protocol_name=name, protocol_level=level))
    error = rejects(wire, UnsupportedProtocol)
    assert error.reason_code == 0x84


def test_mqtt_3_1_connect_parses():
    """[MQTT-3.1.2-1] "MQIsdp" level 3 is MQTT 3.1, with the 3.1.1 layout."""
    wire = encode(Connect("old", keep_alive=30, username="u", password=b"p",
                          protocol_name="MQIsdp", protocol_level=3))
    (packet,) = parse(wire)
    assert (packet.client_id, packet.username, packet.password, packet.protocol_level) == (
        "old", "u", b"p", 3)


def test_unknown_protocol_name_is_not_answered():
    """[MQTT-3.1.2-1] Another protocol name closes without CONNACK."""
    error = rejects(encode(Connect("c", protocol_name="MQTX")))
    assert not isinstance(error, UnsupportedProtocol)


def test_connect_reserved_flag():
    """[MQTT-3.1.2-3] Reserved bit 0 of the Connect Flags must be 0."""
    rejects(connect_bytes(0x03), MalformedPacket)


@pytest.mark.parametrize("flags", [0x0A, 0x12, 0x22, 0x3A], ids=hex)
def test_will_qos_or_retain_without_will(flags):
    """[MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] Will Flag 0 needs Will QoS 0 and Retain 0."""
    rejects(connect_bytes(flags), MalformedPacket)


def test_will_qos_3():
    """[MQTT-3.1.2-14] Will QoS 3 is malformed."""
    rejects(connect_bytes(0x1E, s("c") + s("w") + s(b"")), MalformedPacket)


def test_password_without_user_name():
    """[MQTT-3.1.2-22] Password flag 1 with User Name flag 0 is malformed."""
    rejects(connect_bytes(0x42, s("c") + s(b"pw")), MalformedPacket)


@pytest.mark.parametrize("flags, payload", [
    (0x82, s("c")),                              # user name flag, no user name
    (0xC2, s("c") + s("u")),                     # password flag, no password
    (0x06, s("c") + s("w")),                     # will flag, no will message
    (0x06, s("c")),                              # will flag, no will topic
    (0x02, b""),                                 # no client id at all
    (0x02, s("c") + s("u")),                     # user name without its flag
    (0x82, s("c") + s("u") + b"\x00"),           # a stray byte at the end
])
def test_connect_fields_follow_their_flags(flags, payload):
    """[MQTT-3.1.2-18] [MQTT-3.1.2-19] [MQTT-3.1.2-20] [MQTT-3.1.2-21] [MQTT-3.1.2-9]
    [MQTT-3.1.3-1] [MQTT-3.1.3-3] Fields appear exactly when their flags say, in order."""
    rejects(connect_bytes(flags, payload), MalformedPacket)


def test_empty_client_id_is_legal():
    """[MQTT-3.1.3-3] The client id is always there but may be empty."""
    assert parse(connect_bytes(payload=s("")))[0].client_id == ""


@pytest.mark.parametrize("topic", ["", "a/+", "#", "a/#"])
def test_will_topic_must_be_a_topic_name(topic):
    """[MQTT-3.1.3-10] [MQTT-4.7.1-1] [MQTT-4.7.3-1] The Will Topic is a non-empty
    topic name without wildcards."""
    rejects(connect_bytes(0x06, s("c") + s(topic) + s(b"")))


def test_connect_sets_the_parser_level():
    """The parser adopts the CONNECT's level, so packets pipelined behind the
    CONNECT in one read are decoded by that level's rules."""
    parser = Parser(protocol_level=5)
    with pytest.raises(MalformedPacket) as info:
        parser.feed(encode(Connect("c")) + b"\xf0\x00")
    assert parser.protocol_level == 4
    assert info.value.packets == [Connect("c")]


# -- PUBLISH ----------------------------------------------------------------------------

@pytest.mark.parametrize("topic", ["a/+", "+", "a/#", "#", "a+b"])
def test_wildcard_in_publish_topic(topic):
    """[MQTT-3.3.2-2] [MQTT-4.7.1-1] A topic name with + or # is a protocol violation."""
    error = rejects(frame(0x30, s(topic)))
    assert error.reason_code == 0x82


def test_empty_publish_topic():
    """[MQTT-4.7.3-1] A topic name is at least one character long."""
    rejects(frame(0x30, s("")))


@pytest.mark.parametrize("first", [0x32, 0x34])
def test_publish_packet_id_0(first):
    """[MQTT-2.3.1-1] QoS 1 and 2 need a non-zero Packet Identifier."""
    rejects(frame(first, s("t") + u16(0) + b"p"))


def test_qos0_publish_has_no_packet_id():
    """[MQTT-2.3.1-5] At QoS 0 the payload starts right after the topic."""
    assert parse(frame(0x30, s("t") + b"\x00\x05"))[0] == Publish("t", b"\x00\x05")


@pytest.mark.parametrize("first, packet", [
    (0x30, Publish("t")), (0x31, Publish("t", retain=True)),
    (0x32, Publish("t", qos=1, packet_id=1)), (0x3C, Publish("t", qos=2, packet_id=1, dup=True)),
])
def test_empty_payload_is_legal(first, packet):
    """[§3.3.3] An empty payload is legal at every QoS, with or without RETAIN."""
    body = s("t") + (u16(1) if packet.qos else b"")
    assert parse(frame(first, body)) == [packet]


# -- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------

def test_subscribe_packet_id_0():
    """[MQTT-2.3.1-1] [MQTT-3.8.1-1] SUBSCRIBE needs a non-zero Packet Identifier."""
    rejects(frame(0x82, u16(0) + s("a") + b"\x00"))


def test_subscribe_without_filters():
    """[MQTT-3.8.3-3] A SUBSCRIBE with no filter is a protocol violation."""
    error = rejects(frame(0x82, u16(1)))
    assert error.reason_code == 0x82


@pytest.mark.parametrize("options", [0x03, 0x04, 0x40, 0x80, 0xFC, 0xFF], ids=hex)
def test_subscribe_requested_qos_byte(options):
    """[MQTT-3.8.3-4] The upper 6 bits of the requested QoS are zero and QoS <= 2."""
    rejects(frame(0x82, u16(1) + s("a") + bytes([options])), MalformedPacket)


@pytest.mark.parametrize("topic_filter", ["a#", "a/#/b", "a+", "", "#/a", "+/+/#"])
def test_subscribe_filters_reach_the_broker_unjudged(topic_filter):
    """[MQTT-4.7.1-2] [MQTT-3.8.4-5] Wildcard placement and empty filters are the
    broker's call (it answers 0x80), so the codec passes them on."""
    wire = frame(0x82, u16(1) + s(topic_filter) + b"\x01")
    assert parse(wire) == [Subscribe(1, [SubscriptionRequest(topic_filter, 1)])]


def test_unsubscribe_packet_id_0():
    """[MQTT-2.3.1-1] [MQTT-3.10.1-1] UNSUBSCRIBE needs a non-zero Packet Identifier."""
    rejects(frame(0xA2, u16(0) + s("a")))


def test_unsubscribe_without_filters():
    """[MQTT-3.10.3-2] An UNSUBSCRIBE with no filter is a protocol violation."""
    rejects(frame(0xA2, u16(1)))


def test_unsubscribe_filters_are_packed_strings():
    """[MQTT-3.10.3-1] Filters follow one another with no QoS bytes; empty ones reach
    the broker."""
    wire = frame(0xA2, u16(3) + s("a/#") + s("") + s("b"))
    assert parse(wire) == [Unsubscribe(3, ["a/#", "", "b"])]


# -- the parser as a whole -------------------------------------------------------------

def test_any_legal_packet_before_connect():
    """[MQTT-3.1.0-1] [MQTT-3.1.0-2] Packet order is the protocol's job: the codec
    parses a PUBLISH before CONNECT and a second CONNECT."""
    stream = encode(Publish("t")) + encode(Connect("a")) + encode(Connect("b"))
    assert parse(stream) == [Publish("t"), Connect("a"), Connect("b")]


def test_error_carries_earlier_packets_and_ends_the_parser():
    """[MQTT-4.8.0-1] Packets before a violation are handed over with the error;
    the parser then refuses further input."""
    parser = Parser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(encode(PubAck(1)) + encode(Disconnect()) + b"\x00\x00")
    assert info.value.packets == [PubAck(1), Disconnect()]
    with pytest.raises(ProtocolError):
        parser.feed(encode(PingReq()))


def test_errors_have_a_reason_and_a_code():
    """ProtocolError carries a sentence and an MQTT 5 reason code (0x81 by default)."""
    error = ProtocolError("Bad.")
    assert (error.reason, error.reason_code, str(error)) == ("Bad.", 0x81, "Bad.")
    assert ProtocolError("Bad.", 0x82).reason_code == 0x82
    assert issubclass(MalformedPacket, ProtocolError)
    assert issubclass(PacketTooLarge, ProtocolError)
    assert issubclass(UnsupportedProtocol, ProtocolError)


# -- encoding limits ---------------------------------------------------------------------

def test_encode_refuses_what_the_wire_cannot_carry():
    """Strings over 65535 bytes, missing or out-of-range ids, AUTH at 3.1.1 and
    unknown protocol levels are refused."""
    with pytest.raises(ValueError):
        encode(Publish("t" * 65536))
    with pytest.raises(ValueError):
        encode(Publish("t", qos=1))
    with pytest.raises(ValueError):
        encode(PubAck(65536))
    with pytest.raises(ValueError):
        encode_publish_parts("t", b"", 0, False)
    with pytest.raises(ValueError):
        encode(Auth())
    with pytest.raises(ValueError):
        encode(PingReq(), protocol_level=6)


def test_encode_longest_topic():
    """[MQTT-4.7.3-3] A topic of exactly 65535 bytes fits."""
    topic = "t" * 65535
    assert parse(encode(Publish(topic)))[0].topic == topic
