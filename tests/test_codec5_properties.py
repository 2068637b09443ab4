"""Property tests of the level-5 codec: every packet and every property round
trips; a property a packet may not carry is refused with 0x81 and one given
twice with 0x82, in every packet; mutated packets are parsed or refused with
a ProtocolError carrying a reason code, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactorapp.mqtt.codec import (
    Parser,
    ProtocolError,
    encode,
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

EXAMPLES = settings(max_examples=100, deadline=None)

#: Every reason code a codec error may carry: Malformed Packet, Protocol
#: Error, Unsupported Protocol Version, Topic Alias invalid, Packet too large.
ERROR_CODES = {0x81, 0x82, 0x84, 0x94, 0x95}

# -- values -------------------------------------------------------------------------

#: [MQTT-1.5.4-1] [MQTT-1.5.4-2] well-formed UTF-8 without U+0000.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
topic_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
    min_size=1, max_size=12)
topic_filters = st.one_of(topic_names, st.sampled_from(["#", "+", "a/+/b", "a/#"]))
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
flag = st.integers(0, 1)
pairs = st.lists(st.tuples(text, text), min_size=1, max_size=3)

#: Property name -> a strategy for its legal values (section 2.2.2.2).
VALUES = {
    "payload_format_indicator": flag,
    "message_expiry_interval": u32,
    "content_type": text,
    "response_topic": topic_names,
    "correlation_data": st.binary(max_size=12),
    "subscription_identifier": st.integers(1, 268_435_455),
    "session_expiry_interval": u32,
    "assigned_client_identifier": text,
    "server_keep_alive": u16,
    "authentication_method": text,
    "authentication_data": st.binary(max_size=12),
    "request_problem_information": flag,
    "will_delay_interval": u32,
    "request_response_information": flag,
    "response_information": text,
    "server_reference": text,
    "reason_string": text,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": u16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": flag,
    "retain_available": flag,
    "user_property": pairs,
    "maximum_packet_size": st.integers(1, 0xFFFF_FFFF),
    "wildcard_subscription_available": flag,
    "subscription_identifier_available": flag,
    "shared_subscription_available": flag,
}

PUBLISH_PROPERTIES = ["payload_format_indicator", "message_expiry_interval", "content_type",
                      "response_topic", "correlation_data", "user_property"]
#: Where each property may appear: context name -> property names, from the
#: table of section 2.2.2.2, written out here apart from the codec's own table.
ALLOWED = {
    "CONNECT": ["session_expiry_interval", "authentication_method", "authentication_data",
                "request_problem_information", "request_response_information",
                "receive_maximum", "topic_alias_maximum", "user_property",
                "maximum_packet_size"],
    "WILL": PUBLISH_PROPERTIES + ["will_delay_interval"],
    "CONNACK": ["session_expiry_interval", "assigned_client_identifier", "server_keep_alive",
                "authentication_method", "authentication_data", "response_information",
                "server_reference", "reason_string", "receive_maximum", "topic_alias_maximum",
                "maximum_qos", "retain_available", "user_property", "maximum_packet_size",
                "wildcard_subscription_available", "subscription_identifier_available",
                "shared_subscription_available"],
    "PUBLISH": PUBLISH_PROPERTIES + ["subscription_identifier", "topic_alias"],
    "PUBACK": ["reason_string", "user_property"],
    "PUBREC": ["reason_string", "user_property"],
    "PUBREL": ["reason_string", "user_property"],
    "PUBCOMP": ["reason_string", "user_property"],
    "SUBSCRIBE": ["subscription_identifier", "user_property"],
    "SUBACK": ["reason_string", "user_property"],
    "UNSUBSCRIBE": ["user_property"],
    "UNSUBACK": ["reason_string", "user_property"],
    "DISCONNECT": ["session_expiry_interval", "server_reference", "reason_string",
                   "user_property"],
    "AUTH": ["authentication_method", "authentication_data", "reason_string",
             "user_property"],
}
#: Properties that may appear more than once there (lists in the dict).
REPEATABLE = {("PUBLISH", "subscription_identifier")} | {
    (context, "user_property") for context in ALLOWED}

#: Context -> (packet with these properties, reason code, True if a server sends it).
BUILD = {
    "CONNECT": lambda p, c: Connect("c", protocol_level=5, properties=p),
    "WILL": lambda p, c: Connect("c", will=Will("w", b"m", 1, False, p), protocol_level=5),
    "CONNACK": lambda p, c: ConnAck(False, c, p),
    "PUBLISH": lambda p, c: Publish("t", b"m", properties=p),
    "PUBACK": lambda p, c: PubAck(1, c, p),
    "PUBREC": lambda p, c: PubRec(1, c, p),
    "PUBREL": lambda p, c: PubRel(1, c, p),
    "PUBCOMP": lambda p, c: PubComp(1, c, p),
    "SUBSCRIBE": lambda p, c: Subscribe(1, [SubscriptionRequest("a")], p),
    "SUBACK": lambda p, c: SubAck(1, [c], p),
    "UNSUBSCRIBE": lambda p, c: Unsubscribe(1, ["a"], p),
    "UNSUBACK": lambda p, c: UnsubAck(1, [c], p),
    "DISCONNECT": lambda p, c: Disconnect(c, p),
    "AUTH": lambda p, c: Auth(c, p),
}
FROM_SERVER = {"CONNACK", "SUBACK", "UNSUBACK"}
ACKS = {"PUBACK": PubAck, "PUBREC": PubRec, "PUBREL": PubRel, "PUBCOMP": PubComp}

#: Reason codes each packet may carry (sections 3.2.2.2 to 3.15.2.1).
REASONS = {
    "CONNACK": [0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
                0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F],
    "PUBACK": [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    "PUBREL": [0x00, 0x92],
    "SUBACK": [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2],
    "UNSUBACK": [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
    "DISCONNECT": [0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90,
                   0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F,
                   0xA0, 0xA1, 0xA2],
    "AUTH": [0x00, 0x18, 0x19],
}
REASONS["PUBREC"] = REASONS["PUBACK"]
REASONS["PUBCOMP"] = REASONS["PUBREL"]


def parser_for(context: str) -> Parser:
    """The receiving side's parser; a PUBLISH is read as a client reads it,
    since only a server's may carry Subscription Identifiers [MQTT-3.3.4-6]."""
    return Parser(protocol_level=5,
                  server_side=context not in FROM_SERVER and context != "PUBLISH")


def parse(context: str, wire: bytes) -> list:
    parser = parser_for(context)
    packets = parser.feed(wire)
    assert parser.buffered == 0
    return packets


@st.composite
def property_dicts(draw, context: str) -> dict:
    names = draw(st.lists(st.sampled_from(ALLOWED[context]), unique=True, max_size=5))
    if "authentication_data" in names and "authentication_method" not in names:
        names.append("authentication_method")  # [§3.1.2.11.10]
    properties = {}
    for name in names:
        value = draw(VALUES[name])
        if (context, name) in REPEATABLE and name != "user_property":
            value = draw(st.lists(VALUES[name], min_size=1, max_size=3))
        properties[name] = value
    return properties


@st.composite
def packets_in(draw, context: str, from_client: bool = False):
    """A random legal level-5 packet of one context, with random properties."""
    properties = draw(property_dicts(context))
    if from_client:
        properties.pop("subscription_identifier", None)  # [MQTT-3.3.4-6]
    code = draw(st.sampled_from(REASONS[context])) if context in REASONS else 0
    if context == "CONNECT":
        return Connect(draw(text), draw(st.booleans()), draw(u16),
                       draw(st.none() | st.builds(Will, topic_names, st.binary(max_size=8),
                                                  st.integers(0, 2), st.booleans(),
                                                  property_dicts("WILL"))),
                       draw(st.none() | text), draw(st.none() | st.binary(max_size=8)),
                       "MQTT", 5, properties)
    if context == "CONNACK":
        return ConnAck(draw(st.booleans()) and not code, code, properties)
    if context == "PUBLISH":
        qos = draw(st.integers(0, 2))
        topic = draw(topic_names)
        if "topic_alias" in properties:
            topic = draw(st.sampled_from([topic, ""]))  # [§3.3.2.1]
        return Publish(topic, draw(st.binary(max_size=40)), qos, draw(st.booleans()),
                       bool(qos) and draw(st.booleans()),
                       draw(st.integers(1, 0xFFFF)) if qos else None, properties)
    if context == "SUBSCRIBE":
        subs = draw(st.lists(st.builds(
            SubscriptionRequest, topic_filters, st.integers(0, 2), st.booleans(),
            st.booleans(), st.integers(0, 2)), min_size=1, max_size=4))
        subs = [SubscriptionRequest(f"$share/g/{s.topic_filter}", s.qos, False,
                                    s.retain_as_published, s.retain_handling)
                if s.no_local is False and draw(st.booleans()) else s for s in subs]
        return Subscribe(draw(st.integers(1, 0xFFFF)), subs, properties)
    if context == "SUBACK":
        return SubAck(draw(st.integers(1, 0xFFFF)),
                      draw(st.lists(st.sampled_from(REASONS["SUBACK"]), min_size=1, max_size=5)),
                      properties)
    if context == "UNSUBSCRIBE":
        return Unsubscribe(draw(st.integers(1, 0xFFFF)),
                           draw(st.lists(topic_filters, min_size=1, max_size=4)), properties)
    if context == "UNSUBACK":
        return UnsubAck(draw(st.integers(1, 0xFFFF)),
                        draw(st.lists(st.sampled_from(REASONS["UNSUBACK"]), min_size=1,
                                      max_size=5)), properties)
    if context in ACKS:
        return ACKS[context](draw(st.integers(1, 0xFFFF)), code, properties)
    return BUILD[context](properties, code)


CONTEXTS = [c for c in ALLOWED if c != "WILL"]
client_packets = st.one_of(*(packets_in(c, True) for c in CONTEXTS if c not in FROM_SERVER),
                           st.just(PingReq()))
server_packets = st.one_of(*(packets_in(c) for c in FROM_SERVER), packets_in("PUBLISH"),
                           packets_in("DISCONNECT"), packets_in("AUTH"), st.just(PingResp()))


# -- round trips ----------------------------------------------------------------------

@pytest.mark.parametrize("context", CONTEXTS)
def test_every_packet_round_trips(context):
    """[§2.2.2] parse(encode(p, 5)) == p for every level-5 packet type, with
    random properties and reason codes, on the side that receives it."""
    @EXAMPLES
    @given(packets_in(context))
    def check(packet):
        assert parse(context, encode(packet, 5)) == [packet]

    check()


@pytest.mark.parametrize("context, name", [(c, n) for c, names in ALLOWED.items() for n in names])
def test_every_property_round_trips_where_allowed(context, name):
    """[§2.2.2.2] Every property, alone, in every packet that may carry it."""
    @settings(max_examples=10, deadline=None)
    @given(VALUES[name])
    def check(value):
        if (context, name) in REPEATABLE and name != "user_property":
            value = [value]
        properties = {name: value}
        if name == "authentication_data":
            properties = {"authentication_method": "m", **properties}
        packet = BUILD[context](properties, 0)
        assert parse(context, encode(packet, 5)) == [packet]

    check()


@EXAMPLES
@given(st.lists(client_packets, min_size=1, max_size=5), st.data())
def test_stream_split_anywhere(packets, data):
    """[§2.2.3] A level-5 stream split at any points gives the same packets."""
    stream = b"".join(encode(p, 5) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = Parser(protocol_level=5)
    got = []
    for start, stop in zip([0] + cuts, cuts + [len(stream)]):
        got += parser.feed(stream[start:stop])
    assert got == packets


@EXAMPLES
@given(topic_names, st.binary(max_size=200), st.integers(0, 2), st.booleans(), st.booleans(),
       st.integers(1, 0xFFFF), property_dicts("PUBLISH"),
       st.lists(VALUES["subscription_identifier"], max_size=3), st.none() | VALUES["topic_alias"])
def test_fast_publish_encoders_match_encode(topic, payload, qos, retain, dup, packet_id,
                                            shared, ids, alias):
    """encode_publish5 and encode_publish5_parts, given the shared properties'
    bytes plus one subscriber's, give the bytes of encode(Publish(...), 5)."""
    dup = dup and bool(qos)
    shared.pop("subscription_identifier", None)
    shared.pop("topic_alias", None)
    mine = {}
    if ids:
        mine["subscription_identifier"] = ids
    if alias is not None:
        mine["topic_alias"] = alias
    extra = property_bytes(shared) + property_bytes(mine)
    packet = Publish(topic, payload, qos, retain, dup, packet_id if qos else None,
                     {**shared, **mine})
    fast = encode_publish5(topic, payload, qos, retain, dup, packet_id if qos else 0, extra)
    assert fast == encode(packet, 5)
    assert parse("PUBLISH", fast) == [packet]
    if qos:
        head, tail = encode_publish5_parts(topic, payload, qos, retain, dup, extra)
        assert head + packet_id.to_bytes(2, "big") + tail == fast


# -- every malformed variant, in every packet ---------------------------------------------

@pytest.mark.parametrize("context", list(ALLOWED))
def test_property_not_allowed_is_malformed(context):
    """[§2.2.2.2] A property a packet may not carry: 0x81, in
    every packet and in the Will properties."""
    @settings(max_examples=30, deadline=None)
    @given(st.data())
    def check(data):
        name = data.draw(st.sampled_from(sorted(set(VALUES) - set(ALLOWED[context]))))
        properties = {**data.draw(property_dicts(context)), name: data.draw(VALUES[name])}
        with pytest.raises(ProtocolError) as info:
            parser_for(context).feed(encode(BUILD[context](properties, 0), 5))
        assert info.value.reason_code == 0x81, info.value.reason

    check()


@pytest.mark.parametrize("context, name", [
    (c, n) for c, names in ALLOWED.items() for n in names if (c, n) not in REPEATABLE])
def test_property_twice_is_a_protocol_error(context, name):
    """[§2.2.2.2] and the section of each property: included twice where it
    may appear once, a Protocol Error (0x82)."""
    @settings(max_examples=5, deadline=None)
    @given(VALUES[name], VALUES[name])
    def check(first, second):
        properties = {name: [first, second]}  # a list encodes as the property repeated
        if name == "authentication_data":
            properties = {"authentication_method": "m", **properties}
        with pytest.raises(ProtocolError) as info:
            parser_for(context).feed(encode(BUILD[context](properties, 0), 5))
        assert info.value.reason_code == 0x82, info.value.reason

    check()


@pytest.mark.parametrize("context", list(ALLOWED))
def test_repeatable_properties_repeat(context):
    """[§3.3.2.3.8] [MQTT-3.3.2-18] User Properties anywhere, and a PUBLISH's
    Subscription Identifiers, may repeat; order is kept."""
    @settings(max_examples=10, deadline=None)
    @given(st.lists(st.tuples(text, text), min_size=2, max_size=4),
           st.lists(VALUES["subscription_identifier"], min_size=2, max_size=4))
    def check(user, ids):
        properties = {"user_property": user}
        if context == "PUBLISH":
            properties["subscription_identifier"] = ids
        packet = BUILD[context](properties, 0)
        assert parse(context, encode(packet, 5)) == [packet]

    check()


@pytest.mark.parametrize("context", list(REASONS))
def test_reason_code_not_of_the_packet_is_refused(context):
    """[MQTT-3.2.2-8] [MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1]
    [MQTT-3.9.3-2] [MQTT-3.11.3-2] [MQTT-3.14.2-1] [MQTT-3.15.2-1] A reason code
    the packet may not use: 0x82."""
    @settings(max_examples=20, deadline=None)
    @given(st.integers(1, 255).filter(lambda c: c not in REASONS[context]),
           property_dicts(context))
    def check(code, properties):
        with pytest.raises(ProtocolError) as info:
            parser_for(context).feed(encode(BUILD[context](properties, code), 5))
        assert info.value.reason_code == 0x82, info.value.reason

    check()


# -- mutations: parsed or refused with a reason code ----------------------------------------

mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
)


def mutate(data: bytearray, edits) -> bytes:
    for op, index, value in edits:
        index %= len(data) + 1
        if op == "insert":
            data.insert(index, value)
        elif index < len(data):
            if op == "flip":
                data[index] ^= 1 << value
            elif op == "set":
                data[index] = value
            else:
                del data[index]
        if not data:
            break
    return bytes(data)


def feed_refuses_only_with_reason_codes(data: bytes, chunk: int, **kw) -> None:
    parser = Parser(**kw)
    try:
        for i in range(0, len(data), chunk or len(data) or 1):
            parser.feed(data[i:i + (chunk or len(data))])
    except ProtocolError as error:
        assert error.reason_code in ERROR_CODES, (hex(error.reason_code), error.reason)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.tuples(st.just(True), st.lists(client_packets, min_size=1, max_size=3)),
                 st.tuples(st.just(False), st.lists(server_packets, min_size=1, max_size=3))),
       st.lists(mutations, min_size=1, max_size=4), st.integers(0, 5), st.integers(3, 5))
def test_mutated_packets_raise_only_protocol_errors(side, edits, chunk, level):
    """[MQTT-4.13.1-1] Near-valid level-5 packets with bytes flipped, set,
    inserted or deleted are parsed or refused with a ProtocolError whose
    reason code is one a server closes with, at level 5 and at 3.1.1; any
    other exception fails the test."""
    server_side, packets = side
    data = mutate(bytearray(b"".join(encode(p, 5) for p in packets)), edits)
    feed_refuses_only_with_reason_codes(data, chunk, server_side=server_side,
                                        protocol_level=level)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 7), st.booleans())
def test_arbitrary_bytes_at_level_5(data, chunk, server_side):
    """[MQTT-4.13.1-1] Garbage at level 5 is refused with a reason code, never a crash."""
    feed_refuses_only_with_reason_codes(data, chunk, server_side=server_side, protocol_level=5)


@settings(max_examples=200, deadline=None)
@given(client_packets, st.lists(mutations, min_size=1, max_size=3))
def test_mutated_connect_then_packets(packet, edits):
    """A level-5 CONNECT, mutated, then level-5 packets: the parser either
    reads the CONNECT at its level or refuses it with a reason code."""
    connect = encode(Connect("c", protocol_level=5, properties={"receive_maximum": 5}))
    data = mutate(bytearray(connect), edits) + encode(packet, 5)
    feed_refuses_only_with_reason_codes(data, 0, max_connect_size=65536)
