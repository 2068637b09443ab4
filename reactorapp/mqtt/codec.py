"""Sans-I/O MQTT codec: ``Parser.feed(bytes) -> packets`` and ``encode(packet) -> bytes``.

The parser frames the byte stream incrementally and checks everything a
single packet can get wrong (flags, lengths, strings, field rules). Rules
that need connection state are the protocol's job, with one exception: a
server's parser can be told to expect CONNECT first (``max_connect_size``),
so that anything else is refused from its first byte, before a body is
buffered.

String policy (MQTT 3.1.1 section 1.5.3): strings must be well-formed UTF-8
(Python's strict decoder rejects overlong forms and surrogates) and must not
contain U+0000. U+FEFF is kept as part of the string. Control characters
(U+0001-U+001F, U+007F-U+009F) and non-characters are allowed: the spec lets
a server refuse them, but refusing them breaks clients for no safety gain,
since topics are matched as opaque strings. Passwords and Will payloads are
binary and never decoded.

MQTT 5 (protocol level 5) branches on ``level`` in the body parsers; the
3.1.1 paths test the level only where 3.1.1 would refuse the packet anyway,
so they cost what they did. Errors carry the MQTT 5 reason code the server
would close with (``ProtocolError.reason_code``): 0x81 Malformed Packet for
bytes that do not decode or a property a packet may not carry, 0x82 Protocol
Error for a rule broken by well-formed bytes, 0x94 for Topic Alias 0, 0x95
for a packet over the size limit. The payload format check (0x99) is the
broker's: the codec never looks into payloads.
"""

from __future__ import annotations

import struct
from functools import partial

from reactorapp.hub.topics import NULL, topic_name_problem
from reactorapp.mqtt.packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
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

__all__ = [
    "MAX_CONNECT_SIZE",
    "MAX_REMAINING_LENGTH",
    "PINGRESP_BYTES",
    "SUPPORTED_LEVELS",
    "MalformedPacket",
    "PacketTooLarge",
    "Parser",
    "ProtocolError",
    "UnsupportedProtocol",
    "encode",
    "encode_puback",
    "encode_pubcomp",
    "encode_publish",
    "encode_publish_parts",
    "encode_publish5",
    "encode_publish5_parts",
    "encode_pubrec",
    "encode_pubrel",
    "property_bytes",
]

MAX_REMAINING_LENGTH = 268_435_455

#: The largest CONNECT a server accepts by default, fixed header included.
#: Real ones are a few hundred bytes; the bound keeps a connection that has
#: not logged in from making the broker buffer much.
MAX_CONNECT_SIZE = 65_536

#: MQTT 5 reason codes carried by the errors below.
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
UNSUPPORTED_PROTOCOL_VERSION = 0x84
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95


class ProtocolError(Exception):
    """The peer broke the protocol; the connection must be closed.

    ``packets`` holds the complete packets that preceded the violation in the
    same ``feed`` call, so the protocol can still act on them (a DISCONNECT
    followed by garbage, say) before closing.
    """

    reason_code = MALFORMED
    #: The level of a CONNECT refused after its level was read (so a server
    #: can answer a level-5 client with a level-5 CONNACK), else None.
    protocol_level: int | None = None

    def __init__(self, reason: str, reason_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if reason_code is not None:
            self.reason_code = reason_code
        self.packets: list[Packet] = []


class MalformedPacket(ProtocolError):
    """Bytes that do not decode as the packet they claim to be."""


class PacketTooLarge(ProtocolError):
    """A packet larger than the configured maximum, refused from its header."""

    reason_code = PACKET_TOO_LARGE


class UnsupportedProtocol(ProtocolError):
    """CONNECT with a protocol name/level we do not speak.

    The server answers CONNACK 0x01 and closes [MQTT-3.1.2-2]. Raised for
    "MQTT" or "MQIsdp" with a level that is not theirs; any other protocol
    name is a plain ProtocolError, closed without CONNACK.
    """

    reason_code = UNSUPPORTED_PROTOCOL_VERSION


#: Protocol name -> the levels spoken under it. MQTT 3.1 ("MQIsdp", level 3)
#: has the 3.1.1 packet layout; its other rules are the protocol's business.
SUPPORTED_LEVELS = {"MQTT": frozenset({MQTT_3_1_1, MQTT_5}), "MQIsdp": frozenset({MQTT_3_1})}

_pack_h = struct.Struct(">H").pack
_pack_bb = struct.Struct(">BB").pack
#: First byte, one-byte Remaining Length, then a 16-bit field.
_pack_bbh = struct.Struct(">BBH").pack
_NAMES = {t.value: t.name for t in PacketType}


# -- reading fields ------------------------------------------------------------

def _read_str(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    """Read a length-prefixed UTF-8 string [MQTT-1.5.3-1, MQTT-1.5.3-2]."""
    if pos + 2 > end:
        raise MalformedPacket(f"The {what} runs past the end of the packet.")
    stop = pos + 2 + (data[pos] << 8 | data[pos + 1])
    if stop > end:
        raise MalformedPacket(f"The {what} runs past the end of the packet.")
    try:
        text = data[pos + 2:stop].decode()
    except UnicodeDecodeError:
        raise MalformedPacket(f"The {what} is not well-formed UTF-8.") from None
    if "\x00" in text:
        raise MalformedPacket(f"The {what} contains U+0000.")
    return text, stop


def _read_bytes(data: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    """Read length-prefixed binary data (password, Will payload)."""
    if pos + 2 > end:
        raise MalformedPacket(f"The {what} runs past the end of the packet.")
    stop = pos + 2 + (data[pos] << 8 | data[pos + 1])
    if stop > end:
        raise MalformedPacket(f"The {what} runs past the end of the packet.")
    return data[pos + 2:stop], stop


def _read_packet_id(data: bytes, pos: int, end: int, what: str) -> int:
    """Read a non-zero packet identifier [MQTT-2.3.1-1]."""
    if pos + 2 > end:
        raise MalformedPacket(f"The {what} is too short for its Packet Identifier.")
    packet_id = data[pos] << 8 | data[pos + 1]
    if not packet_id:
        raise ProtocolError(f"The {what} has Packet Identifier 0.", PROTOCOL_ERROR)
    return packet_id


def _check_topic_name(topic: str, what: str) -> None:
    """A topic name is not empty and has no wildcards [MQTT-4.7.3-1, MQTT-4.7.1-1]
    (U+0000 is checked as the string is read: a malformed packet)."""
    problem = topic_name_problem(topic)
    if problem is not None:
        raise ProtocolError(f"The {what} {problem}.", PROTOCOL_ERROR)


# -- MQTT 5 properties (section 2.2.2) ------------------------------------------

# Value types of section 2.2.2.2.
_BYTE, _U16, _U32, _VBI, _STR, _BIN, _PAIR = range(7)

#: Where a property may appear: packet type numbers, and 0 for the Will
#: properties of a CONNECT (section 3.1.3.2).
_WILL = 0


def _where(*contexts: int) -> int:
    mask = 0
    for context in contexts:
        mask |= 1 << context
    return mask


_ALL = _where(_WILL, *range(1, 16))
#: Identifier -> (name, value type, where it may appear), from the table of
#: section 2.2.2.2.
_PROPERTIES = {
    0x01: ("payload_format_indicator", _BYTE, _where(3, _WILL)),
    0x02: ("message_expiry_interval", _U32, _where(3, _WILL)),
    0x03: ("content_type", _STR, _where(3, _WILL)),
    0x08: ("response_topic", _STR, _where(3, _WILL)),
    0x09: ("correlation_data", _BIN, _where(3, _WILL)),
    0x0B: ("subscription_identifier", _VBI, _where(3, 8)),
    0x11: ("session_expiry_interval", _U32, _where(1, 2, 14)),
    0x12: ("assigned_client_identifier", _STR, _where(2)),
    0x13: ("server_keep_alive", _U16, _where(2)),
    0x15: ("authentication_method", _STR, _where(1, 2, 15)),
    0x16: ("authentication_data", _BIN, _where(1, 2, 15)),
    0x17: ("request_problem_information", _BYTE, _where(1)),
    0x18: ("will_delay_interval", _U32, _where(_WILL)),
    0x19: ("request_response_information", _BYTE, _where(1)),
    0x1A: ("response_information", _STR, _where(2)),
    0x1C: ("server_reference", _STR, _where(2, 14)),
    0x1F: ("reason_string", _STR, _where(2, 4, 5, 6, 7, 9, 11, 14, 15)),
    0x21: ("receive_maximum", _U16, _where(1, 2)),
    0x22: ("topic_alias_maximum", _U16, _where(1, 2)),
    0x23: ("topic_alias", _U16, _where(3)),
    0x24: ("maximum_qos", _BYTE, _where(2)),
    0x25: ("retain_available", _BYTE, _where(2)),
    0x26: ("user_property", _PAIR, _ALL & ~_where(12, 13)),
    0x27: ("maximum_packet_size", _U32, _where(1, 2)),
    0x28: ("wildcard_subscription_available", _BYTE, _where(2)),
    0x29: ("subscription_identifier_available", _BYTE, _where(2)),
    0x2A: ("shared_subscription_available", _BYTE, _where(2)),
}
#: Name -> (identifier, value type), for the encoder.
_PROPERTY_IDS = {name: (ident, kind) for ident, (name, kind, _) in _PROPERTIES.items()}
_CONTEXT_NAMES = {_WILL: "Will properties", **{t.value: t.name for t in PacketType}}
_MAX_VBI = MAX_REMAINING_LENGTH


#: Value checks beyond the type (section 2.2.2.2 and each property's own).
_NO_CHECK, _FLAG, _NOT_ZERO, _ALIAS, _TOPIC = range(5)
#: Byte properties whose only values are 0 and 1; anything else is a
#: Protocol Error (3.1.2.11.7, 3.1.2.11.6, 3.2.2.3.4, 3.2.2.3.5,
#: 3.2.2.3.11-13; Payload Format Indicator has only these two meanings).
_CHECKS = {
    0x01: _FLAG, 0x17: _FLAG, 0x19: _FLAG, 0x24: _FLAG, 0x25: _FLAG, 0x28: _FLAG,
    0x29: _FLAG, 0x2A: _FLAG,
    # 3.3.2.3.8, 3.8.2.1.2, 3.1.2.11.3, 3.1.2.11.4
    0x0B: _NOT_ZERO, 0x21: _NOT_ZERO, 0x27: _NOT_ZERO,
    0x23: _ALIAS,  # [MQTT-3.3.2-8]
    0x08: _TOPIC,  # [MQTT-3.3.2-14]: a topic name, not a filter
}
#: Context -> {identifier: (name, value type, check, repeatable)} holding only
#: the properties valid there, so that one lookup answers both questions.
_TABLES = {
    context: {
        ident: (name, kind, _CHECKS.get(ident, _NO_CHECK),
                ident == 0x26 or (ident == 0x0B and context == PacketType.PUBLISH))
        for ident, (name, kind, where) in _PROPERTIES.items() if where >> context & 1
    }
    for context in range(16)
}


def _read_vbi(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Read a Variable Byte Integer of at most 4 bytes (section 1.5.5)."""
    value = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        if shift == 21:
            raise MalformedPacket(f"The {what} is longer than 4 bytes.")
        shift += 7
    raise MalformedPacket(f"The {what} runs past the end of the packet.")


def _read_properties(data: bytes, pos: int, end: int, context: int) -> tuple[dict, int]:
    """Read a property block: its length, then the properties (section 2.2.2).

    A property not allowed where it appears, or a value cut short, is a
    Malformed Packet (2.2.2.2); one given twice where the specification
    allows it once, or a value the specification forbids, a Protocol Error.
    Inlined by value type: this runs for every level-5 PUBLISH.
    """
    if pos >= end:
        raise MalformedPacket(
            f"The {_CONTEXT_NAMES[context]} property length runs past the end of the packet.")
    length = data[pos]
    if length < 0x80:
        pos += 1
    else:
        length, pos = _read_vbi(data, pos, end, "property length")
    stop = pos + length
    if stop > end:
        raise MalformedPacket(
            f"The {_CONTEXT_NAMES[context]} properties run past the end of the packet.")
    properties: dict = {}
    if not length:
        return properties, stop
    table = _TABLES[context]
    while pos < stop:
        spec = table.get(data[pos])
        if spec is None:
            raise MalformedPacket(
                f"Property 0x{data[pos]:02x} is not valid in {_CONTEXT_NAMES[context]}.")
        name, kind, check, repeatable = spec
        pos += 1
        if kind == _STR:
            value_end = pos + 2 + (data[pos] << 8 | data[pos + 1]) if pos + 2 <= stop else stop + 1
            if value_end > stop:
                raise MalformedPacket(f"The {name} property runs past the end of the properties.")
            try:
                value = data[pos + 2:value_end].decode()
            except UnicodeDecodeError:
                raise MalformedPacket(f"The {name} property is not well-formed UTF-8.") from None
            if "\x00" in value:
                raise MalformedPacket(f"The {name} property contains U+0000.")
            pos = value_end
        elif kind == _U32:
            if pos + 4 > stop:
                raise MalformedPacket(f"The {name} property is truncated.")
            value = data[pos] << 24 | data[pos + 1] << 16 | data[pos + 2] << 8 | data[pos + 3]
            pos += 4
        elif kind == _PAIR:
            key, pos = _read_str(data, pos, stop, f"{name} property")
            text, pos = _read_str(data, pos, stop, f"{name} property")
            value = (key, text)
        elif kind == _BYTE:
            if pos >= stop:
                raise MalformedPacket(f"The {name} property is truncated.")
            value = data[pos]
            pos += 1
        elif kind == _U16:
            if pos + 2 > stop:
                raise MalformedPacket(f"The {name} property is truncated.")
            value = data[pos] << 8 | data[pos + 1]
            pos += 2
        elif kind == _BIN:
            if pos + 2 > stop:
                raise MalformedPacket(f"The {name} property is truncated.")
            value_end = pos + 2 + (data[pos] << 8 | data[pos + 1])
            if value_end > stop:
                raise MalformedPacket(f"The {name} property is truncated.")
            value = data[pos + 2:value_end]
            pos = value_end
        else:
            value, pos = _read_vbi(data, pos, stop, f"{name} property")
        if check:
            _check_property(check, name, value)
        if repeatable:
            values = properties.get(name)
            if values is None:
                properties[name] = [value]
            else:
                values.append(value)
        elif name in properties:
            raise ProtocolError(f"The {name} property is included twice.", PROTOCOL_ERROR)
        else:
            properties[name] = value
    if "authentication_data" in properties and "authentication_method" not in properties:
        # 3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3
        raise ProtocolError("Authentication Data without an Authentication Method.",
                            PROTOCOL_ERROR)
    return properties, stop


#: PUBLISH property blocks seen lately, raw bytes -> (properties, names of
#: the list values): a publisher tends to send the same properties with
#: every message (a content type, user properties, an expiry), and a dict
#: hit plus a copy is cheaper than decoding and checking them again. Shared
#: by every connection; only blocks under 128 bytes without Correlation Data
#: (which differs per request) are kept, and the cache starts afresh past
#: _PROPERTY_BLOCKS_MAX blocks: about 2 MiB at worst, dicts included (1,024
#: blocks of ten user properties each).
_PROPERTY_BLOCKS: dict[bytes, tuple[dict, tuple]] = {}
_PROPERTY_BLOCKS_MAX = 1024


def _publish_properties(data: bytes, pos: int, end: int) -> tuple[dict, int]:
    """`_read_properties` for a PUBLISH, through _PROPERTY_BLOCKS. Each
    caller gets its own dict and lists, so the broker may change them."""
    stop = pos + 1 + data[pos]
    if data[pos] >= 0x80 or stop > end:
        return _read_properties(data, pos, end, PacketType.PUBLISH)
    raw = data[pos:stop]
    hit = _PROPERTY_BLOCKS.get(raw)
    if hit is None:
        properties, stop = _read_properties(data, pos, end, PacketType.PUBLISH)
        if "correlation_data" not in properties:
            if len(_PROPERTY_BLOCKS) >= _PROPERTY_BLOCKS_MAX:
                _PROPERTY_BLOCKS.clear()
            lists = tuple(name for name, value in properties.items() if type(value) is list)
            kept = properties.copy()
            for name in lists:
                kept[name] = kept[name].copy()
            _PROPERTY_BLOCKS[raw] = (kept, lists)
        return properties, stop
    properties = hit[0].copy()
    for name in hit[1]:
        properties[name] = properties[name].copy()
    return properties, stop


def _check_property(check: int, name: str, value) -> None:
    if check == _FLAG:
        if value > 1:
            raise ProtocolError(f"The {name} property is {value}, not 0 or 1.", PROTOCOL_ERROR)
    elif check == _TOPIC:
        problem = topic_name_problem(value)
        if problem is not None:
            raise ProtocolError(f"The {name} property {problem}.", PROTOCOL_ERROR)
    elif not value:
        if check == _ALIAS:
            raise ProtocolError("Topic Alias 0 is not permitted.", TOPIC_ALIAS_INVALID)
        raise ProtocolError(f"The {name} property is 0.", PROTOCOL_ERROR)


#: Reason codes each packet may carry at level 5 (sections 3.2.2.2, 3.4.2.1,
#: 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1). Any other is
#: a Protocol Error: the sender "MUST use one of" them.
_REASON_CODES = {
    PacketType.CONNACK: frozenset({
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
        0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}),
    PacketType.PUBACK: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    PacketType.PUBREC: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    PacketType.PUBREL: frozenset({0x00, 0x92}),
    PacketType.PUBCOMP: frozenset({0x00, 0x92}),
    PacketType.SUBACK: frozenset({
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}),
    PacketType.UNSUBACK: frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}),
    PacketType.DISCONNECT: frozenset({
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90,
        0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F,
        0xA0, 0xA1, 0xA2}),
    PacketType.AUTH: frozenset({0x00, 0x18, 0x19}),
}


def _check_reason(ptype: int, code: int) -> None:
    if code not in _REASON_CODES[ptype]:
        raise ProtocolError(
            f"{_NAMES[ptype]} has reason code 0x{code:02x}, not one of its own.", PROTOCOL_ERROR)


# -- body parsers: (data, start, end, flags, level) -> Packet -------------------

def _parse_connect(data, pos, end, flags, level):
    name, pos = _read_str(data, pos, end, "CONNECT protocol name")
    if pos + 4 > end:
        raise MalformedPacket("The CONNECT variable header is truncated.")
    # The CONNECT's own level decides its layout, not the parser's.
    level = data[pos]
    levels = SUPPORTED_LEVELS.get(name)
    if levels is None:
        raise ProtocolError(f"Unknown protocol name {name!r}.", PROTOCOL_ERROR)  # [MQTT-3.1.2-1]
    if level not in levels:
        raise UnsupportedProtocol(f"{name} protocol level {level} is not supported.")
    if level == MQTT_5:
        try:
            return _parse_connect5(data, pos, end)
        except ProtocolError as error:
            error.protocol_level = MQTT_5
            raise
    cflags = data[pos + 1]
    keep_alive = data[pos + 2] << 8 | data[pos + 3]
    pos += 4
    if cflags & 0x01:
        raise MalformedPacket("The CONNECT reserved flag is set.")
    has_will = cflags & 0x04
    will_qos = cflags >> 3 & 3
    will_retain = cflags & 0x20
    if not has_will and (will_qos or will_retain):
        raise MalformedPacket("CONNECT has Will QoS or Will Retain without a Will.")
    if will_qos == 3:
        raise MalformedPacket("CONNECT has Will QoS 3.")
    if cflags & 0x40 and not cflags & 0x80:  # MQTT 5 allows a password alone
        raise MalformedPacket("CONNECT has a password without a user name.")
    client_id, pos = _read_str(data, pos, end, "client identifier")
    will = None
    if has_will:
        topic, pos = _read_str(data, pos, end, "Will topic")
        _check_topic_name(topic, "Will topic")
        payload, pos = _read_bytes(data, pos, end, "Will message")
        will = Will(topic, payload, will_qos, bool(will_retain))
    username = password = None
    if cflags & 0x80:
        username, pos = _read_str(data, pos, end, "user name")
    if cflags & 0x40:
        password, pos = _read_bytes(data, pos, end, "password")
    if pos != end:
        raise MalformedPacket("CONNECT has bytes after its last field.")
    return Connect(
        client_id, bool(cflags & 0x02), keep_alive, will, username, password, name, level,
    )


def _parse_connect5(data, pos, end):
    """The level-5 CONNECT from its Connect Flags on (section 3.1.2.3)."""
    cflags = data[pos + 1]
    keep_alive = data[pos + 2] << 8 | data[pos + 3]
    pos += 4
    if cflags & 0x01:
        raise MalformedPacket("The CONNECT reserved flag is set.")  # [MQTT-3.1.2-3]
    has_will = cflags & 0x04
    will_qos = cflags >> 3 & 3
    will_retain = cflags & 0x20
    if not has_will and (will_qos or will_retain):
        # [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15]
        raise MalformedPacket("CONNECT has Will QoS or Will Retain without a Will.")
    if will_qos == 3:
        raise MalformedPacket("CONNECT has Will QoS 3.")  # [MQTT-3.1.2-14]
    properties, pos = _read_properties(data, pos, end, PacketType.CONNECT)
    client_id, pos = _read_str(data, pos, end, "client identifier")
    will = None
    if has_will:
        # 3.1.3.2-3.1.3.4: Will properties, topic and payload, in that order.
        will_properties, pos = _read_properties(data, pos, end, _WILL)
        topic, pos = _read_str(data, pos, end, "Will topic")
        _check_topic_name(topic, "Will topic")
        payload, pos = _read_bytes(data, pos, end, "Will payload")
        will = Will(topic, payload, will_qos, bool(will_retain), will_properties)
    username = password = None
    if cflags & 0x80:
        username, pos = _read_str(data, pos, end, "user name")
    if cflags & 0x40:
        password, pos = _read_bytes(data, pos, end, "password")
    if pos != end:
        raise MalformedPacket("CONNECT has bytes after its last field.")
    return Connect(
        client_id, bool(cflags & 0x02), keep_alive, will, username, password, "MQTT", MQTT_5,
        properties,
    )


def _parse_connack(data, pos, end, flags, level):
    if level == MQTT_5:
        return _parse_connack5(data, pos, end)
    if end - pos != 2:
        raise MalformedPacket("CONNACK must have a Remaining Length of 2.")
    ack_flags, code = data[pos], data[pos + 1]
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK has reserved flag bits set.")
    if code > 5:
        raise MalformedPacket(f"CONNACK has unknown return code {code}.")
    return ConnAck(bool(ack_flags), code)


def _parse_connack5(data, pos, end):
    if end - pos < 3:
        raise MalformedPacket("CONNACK is too short for its flags, reason code and properties.")
    ack_flags, code = data[pos], data[pos + 1]
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK has reserved flag bits set.")  # [MQTT-3.2.2-1]
    _check_reason(PacketType.CONNACK, code)
    if code and ack_flags:
        raise ProtocolError("A refusing CONNACK has Session Present set.",  # [MQTT-3.2.2-6]
                            PROTOCOL_ERROR)
    properties, pos = _read_properties(data, pos + 2, end, PacketType.CONNACK)
    if pos != end:
        raise MalformedPacket("CONNACK has bytes after its properties.")
    return ConnAck(bool(ack_flags), code, properties)


def _parse_publish(data, pos, end, flags, level):
    # The topic is read inline: this is the hottest parser.
    if pos + 2 > end:
        raise MalformedPacket("The PUBLISH Topic Name runs past the end of the packet.")
    stop = pos + 2 + (data[pos] << 8 | data[pos + 1])
    if stop > end:
        raise MalformedPacket("The PUBLISH Topic Name runs past the end of the packet.")
    try:
        topic = data[pos + 2:stop].decode()
    except UnicodeDecodeError:
        raise MalformedPacket("The PUBLISH Topic Name is not well-formed UTF-8.") from None
    problem = topic_name_problem(topic)
    if problem is not None:
        if problem is NULL:
            raise MalformedPacket("The PUBLISH Topic Name contains U+0000.")
        # At level 5 an empty topic is legal with a Topic Alias (3.3.2.1);
        # whether the alias is known is the protocol's to check.
        if topic or level != MQTT_5:
            raise ProtocolError(f"The PUBLISH Topic Name {problem}.", PROTOCOL_ERROR)
    qos = flags >> 1 & 3
    if qos:
        if stop + 2 > end:
            raise MalformedPacket("The PUBLISH is too short for its Packet Identifier.")
        packet_id = data[stop] << 8 | data[stop + 1]
        if not packet_id:
            raise ProtocolError("The PUBLISH has Packet Identifier 0.", PROTOCOL_ERROR)
        stop += 2
    else:
        packet_id = None
    if level == MQTT_5:
        properties, stop = _read_properties(data, stop, end, PacketType.PUBLISH)
        if not topic and "topic_alias" not in properties:
            raise ProtocolError("The PUBLISH has neither a Topic Name nor a Topic Alias.",
                                PROTOCOL_ERROR)
    else:
        properties = {}
    return Publish(
        topic, data[stop:end], qos, flags & 1 == 1, flags & 8 == 8, packet_id, properties
    )


def _ack_parser(cls, name):
    ptype = PacketType[name]

    def parse(data, pos, end, flags, level):
        if end - pos != 2:
            if level == MQTT_5 and end - pos > 2:
                return _parse_ack5(cls, ptype, data, pos, end)
            raise MalformedPacket(f"{name} must have a Remaining Length of 2.")
        packet_id = data[pos] << 8 | data[pos + 1]
        if not packet_id:
            raise ProtocolError(f"{name} has Packet Identifier 0.", PROTOCOL_ERROR)
        return cls(packet_id)

    parse.__name__ = f"_parse_{name.lower()}"
    return parse


def _client_subscription_identifier() -> ProtocolError:
    """[MQTT-3.3.4-6]: only a server puts Subscription Identifiers in a PUBLISH."""
    return ProtocolError("A client's PUBLISH has a Subscription Identifier.", PROTOCOL_ERROR)


def _parse_ack5(cls, ptype, data, pos, end):
    """A level-5 PUBACK, PUBREC, PUBREL or PUBCOMP longer than 2 bytes: the
    reason code, then the properties unless the Remaining Length is 3
    (sections 3.4.2.1, 3.4.2.2)."""
    packet_id = _read_packet_id(data, pos, end, _NAMES[ptype])
    code = data[pos + 2]
    _check_reason(ptype, code)
    if end - pos == 3:
        return cls(packet_id, code)
    properties, pos = _read_properties(data, pos + 3, end, ptype)
    if pos != end:
        raise MalformedPacket(f"{_NAMES[ptype]} has bytes after its properties.")
    return cls(packet_id, code, properties)


def _parse_subscribe(data, pos, end, flags, level):
    packet_id = _read_packet_id(data, pos, end, "SUBSCRIBE")
    pos += 2
    if level == MQTT_5:
        return _parse_subscribe5(packet_id, data, pos, end)
    subscriptions = []
    while pos < end:
        # Wildcard placement is the broker's call: it answers 0x80 [MQTT-4.7.1-2].
        topic_filter, pos = _read_str(data, pos, end, "SUBSCRIBE topic filter")
        if pos >= end:
            raise MalformedPacket("A SUBSCRIBE topic filter has no requested QoS.")
        options = data[pos]
        pos += 1
        if options & 0xFC or options == 3:
            raise MalformedPacket(f"SUBSCRIBE has an invalid requested QoS byte 0x{options:02x}.")
        subscriptions.append(SubscriptionRequest(topic_filter, options))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE has no topic filters.", PROTOCOL_ERROR)
    return Subscribe(packet_id, subscriptions)


def _parse_subscribe5(packet_id, data, pos, end):
    properties, pos = _read_properties(data, pos, end, PacketType.SUBSCRIBE)
    subscriptions = []
    while pos < end:
        topic_filter, pos = _read_str(data, pos, end, "SUBSCRIBE topic filter")
        if pos >= end:
            raise MalformedPacket("A SUBSCRIBE topic filter has no Subscription Options.")
        options = data[pos]
        pos += 1
        if options & 0xC0:
            raise MalformedPacket(  # [MQTT-3.8.3-5]
                f"SUBSCRIBE options 0x{options:02x} have reserved bits set.")
        if options & 3 == 3:
            raise ProtocolError("SUBSCRIBE asks for QoS 3.", PROTOCOL_ERROR)  # 3.8.3.1
        if options & 0x30 == 0x30:
            raise ProtocolError("SUBSCRIBE has Retain Handling 3.", PROTOCOL_ERROR)  # 3.8.3.1
        no_local = options & 0x04 == 0x04
        if no_local and topic_filter.startswith("$share/"):
            raise ProtocolError(  # [MQTT-3.8.3-4]
                "SUBSCRIBE sets No Local on a shared subscription.", PROTOCOL_ERROR)
        subscriptions.append(SubscriptionRequest(
            topic_filter, options & 3, no_local, options & 0x08 == 0x08, options >> 4 & 3))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE has no topic filters.", PROTOCOL_ERROR)  # [MQTT-3.8.3-2]
    return Subscribe(packet_id, subscriptions, properties)


def _parse_suback(data, pos, end, flags, level):
    packet_id = _read_packet_id(data, pos, end, "SUBACK")
    pos += 2
    if level == MQTT_5:
        properties, pos = _read_properties(data, pos, end, PacketType.SUBACK)
        codes = list(data[pos:end])
        if not codes:
            raise MalformedPacket("SUBACK has no reason codes.")
        for code in codes:
            _check_reason(PacketType.SUBACK, code)
        return SubAck(packet_id, codes, properties)
    codes = list(data[pos:end])
    if not codes:
        raise MalformedPacket("SUBACK has no return codes.")
    for code in codes:
        if code > 2 and code != 0x80:
            raise MalformedPacket(f"SUBACK has invalid return code 0x{code:02x}.")
    return SubAck(packet_id, codes)


def _parse_unsubscribe(data, pos, end, flags, level):
    packet_id = _read_packet_id(data, pos, end, "UNSUBSCRIBE")
    pos += 2
    if level == MQTT_5:
        properties, pos = _read_properties(data, pos, end, PacketType.UNSUBSCRIBE)
    else:
        properties = {}
    topic_filters = []
    while pos < end:
        topic_filter, pos = _read_str(data, pos, end, "UNSUBSCRIBE topic filter")
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise ProtocolError("UNSUBSCRIBE has no topic filters.", PROTOCOL_ERROR)
    return Unsubscribe(packet_id, topic_filters, properties)


def _parse_unsuback(data, pos, end, flags, level):
    if level == MQTT_5:
        packet_id = _read_packet_id(data, pos, end, "UNSUBACK")
        properties, pos = _read_properties(data, pos + 2, end, PacketType.UNSUBACK)
        codes = list(data[pos:end])
        if not codes:
            raise MalformedPacket("UNSUBACK has no reason codes.")
        for code in codes:
            _check_reason(PacketType.UNSUBACK, code)
        return UnsubAck(packet_id, codes, properties)
    if end - pos != 2:
        raise MalformedPacket("UNSUBACK must have a Remaining Length of 2.")
    return UnsubAck(_read_packet_id(data, pos, end, "UNSUBACK"))


def _empty_parser(cls, name):
    def parse(data, pos, end, flags, level):
        if end != pos:
            raise MalformedPacket(f"{name} must have a Remaining Length of 0.")
        return cls()

    parse.__name__ = f"_parse_{name.lower()}"
    return parse


def _reason_parser(cls, name):
    """DISCONNECT and AUTH: empty in 3.1.1, reason code and properties in MQTT 5."""

    ptype = PacketType[name]

    def parse(data, pos, end, flags, level):
        if end == pos:
            return cls()
        if level != MQTT_5:
            raise MalformedPacket(f"{name} must have a Remaining Length of 0.")
        reason_code = data[pos]
        _check_reason(ptype, reason_code)
        if end - pos == 1:
            # DISCONNECT may stop after its reason code (3.14.2.2.1); AUTH
            # omits both or neither (3.15.2.1).
            if ptype == PacketType.AUTH:
                raise MalformedPacket("AUTH has a reason code without a property length.")
            return cls(reason_code)
        properties, pos = _read_properties(data, pos + 1, end, ptype)
        if pos != end:
            raise MalformedPacket(f"{name} has bytes after its last field.")
        return cls(reason_code, properties)

    parse.__name__ = f"_parse_{name.lower()}"
    return parse


_PARSERS = {
    PacketType.CONNECT: _parse_connect,
    PacketType.CONNACK: _parse_connack,
    PacketType.PUBLISH: _parse_publish,
    PacketType.PUBACK: _ack_parser(PubAck, "PUBACK"),
    PacketType.PUBREC: _ack_parser(PubRec, "PUBREC"),
    PacketType.PUBREL: _ack_parser(PubRel, "PUBREL"),
    PacketType.PUBCOMP: _ack_parser(PubComp, "PUBCOMP"),
    PacketType.SUBSCRIBE: _parse_subscribe,
    PacketType.SUBACK: _parse_suback,
    PacketType.UNSUBSCRIBE: _parse_unsubscribe,
    PacketType.UNSUBACK: _parse_unsuback,
    PacketType.PINGREQ: _empty_parser(PingReq, "PINGREQ"),
    PacketType.PINGRESP: _empty_parser(PingResp, "PINGRESP"),
    PacketType.DISCONNECT: _reason_parser(Disconnect, "DISCONNECT"),
    PacketType.AUTH: _reason_parser(Auth, "AUTH"),
}
# Plain int keys: the feed loop looks parsers up by the type nibble.
_PARSERS = {int(ptype): parse for ptype, parse in _PARSERS.items()}

_SERVER_ONLY = frozenset(
    {PacketType.CONNACK, PacketType.SUBACK, PacketType.UNSUBACK, PacketType.PINGRESP}
)
_CLIENT_ONLY = frozenset(
    {PacketType.CONNECT, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE, PacketType.PINGREQ}
)
_FLAGS_0010 = frozenset({PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE})


def _first_byte_rule(first: int, server_side: bool, level: int):
    """The error for a fixed-header first byte, as (class, reason, code), or None."""
    ptype, flags = first >> 4, first & 0x0F
    if ptype == 0 or (ptype == PacketType.AUTH and level != MQTT_5):
        return MalformedPacket, f"Packet type {ptype} is reserved.", MALFORMED
    name = _NAMES[ptype]
    if server_side and ptype in _SERVER_ONLY:
        return ProtocolError, f"A client may not send {name}.", PROTOCOL_ERROR
    if not server_side and (
        ptype in _CLIENT_ONLY or (ptype == PacketType.DISCONNECT and level != MQTT_5)
    ):
        return ProtocolError, f"A server may not send {name}.", PROTOCOL_ERROR
    if ptype == PacketType.PUBLISH:
        qos = flags >> 1 & 3
        if qos == 3:
            return MalformedPacket, "PUBLISH has QoS 3.", MALFORMED
        if flags & 8 and not qos:
            return ProtocolError, "PUBLISH has DUP set with QoS 0.", PROTOCOL_ERROR
        return None
    expected = 0b0010 if ptype in _FLAGS_0010 else 0
    if flags != expected:
        return (
            MalformedPacket,
            f"{name} flags must be {expected:04b}, got {flags:04b}.",
            MALFORMED,
        )
    return None


_RULES: dict[tuple[bool, int], tuple] = {}

#: The rules before a server has seen CONNECT: every other first byte is
#: refused at once [MQTT-3.1.0-1].
_CONNECT_FIRST = tuple(
    None if first == 0x10 else (
        ProtocolError,
        f"The first packet must be CONNECT, not {_NAMES.get(first >> 4, 'type 0')}.",
        PROTOCOL_ERROR,
    )
    for first in range(256)
)


def _first_byte_rules(server_side: bool, level: int) -> tuple:
    key = (server_side, level)
    rules = _RULES.get(key)
    if rules is None:
        rules = _RULES[key] = tuple(
            _first_byte_rule(first, server_side, level) for first in range(256)
        )
    return rules


#: PUBLISH topic names seen lately, as bytes -> checked str: most traffic
#: goes to a few topics, and a dict hit is cheaper than decoding and checking.
#: Shared by every connection, so bounded by count and by size: only names
#: up to _TOPIC_CACHED_MAX bytes are kept (as the topic tree's match cache
#: does), and the cache starts afresh past _TOPIC_NAMES_MAX names or
#: _TOPIC_CACHE_BYTES bytes of names.
_TOPIC_NAMES: dict[bytes, str] = {}
_TOPIC_NAMES_MAX = 4096
_TOPIC_CACHED_MAX = 1024
_TOPIC_CACHE_BYTES = 1024 * 1024
#: Bytes of names in each cache: [_TOPIC_NAMES, _TOPIC_FIELDS].
_cached_bytes = [0, 0]


def _valid_topic(raw: bytes) -> str | None:
    """``raw`` decoded if it is a valid PUBLISH topic name, else None
    (``_parse_publish`` then says what is wrong); remembered if valid."""
    try:
        topic = raw.decode()
    except UnicodeDecodeError:
        return None
    if topic_name_problem(topic) is not None:
        return None
    _remember(_TOPIC_NAMES, 0, raw, topic, len(raw))
    return topic


def _remember(cache: dict, which: int, key, value, size: int) -> None:
    """Keep ``key -> value`` in one of the topic caches, within their bounds:
    names of at most _TOPIC_CACHED_MAX bytes, and a cache that starts afresh
    past _TOPIC_NAMES_MAX names or _TOPIC_CACHE_BYTES of them (``which``
    picks its byte count in _cached_bytes)."""
    if size <= _TOPIC_CACHED_MAX:
        if len(cache) >= _TOPIC_NAMES_MAX or _cached_bytes[which] + size > _TOPIC_CACHE_BYTES:
            cache.clear()
            _cached_bytes[which] = 0
        cache[key] = value
        _cached_bytes[which] += size


def _remaining_length(data: bytes, pos: int, n: int):
    """Decode a multi-byte Remaining Length whose first byte is at ``pos``.

    Returns (length, body start), or None if more bytes are needed. The
    continuation bit of the 4th byte is refused before it could shift in a
    5th byte (the Errata 01 fix of the spec's pseudocode).
    """
    length = 0
    shift = 0
    while pos < n:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length, pos
        if shift == 21:
            raise MalformedPacket("The Remaining Length is longer than 4 bytes.")
        shift += 7
    return None


class Parser:
    """Incremental MQTT packet parser.

    ``max_packet_size`` bounds a whole packet (fixed header included, as MQTT
    5's Maximum Packet Size does); a larger one is refused from its header,
    before its body is buffered.

    Packets are parsed straight from each read. Only the start of an
    incomplete packet is kept, in a bytearray; once its header is known the
    parser just appends until the packet is whole, so a large packet that
    arrives in many reads costs one copy, not one parse per read.

    ``protocol_level`` selects the rules (4 = MQTT 3.1.1, 3 = 3.1, 5 = MQTT
    5). A CONNECT that parses sets it to the CONNECT's level, so packets
    pipelined behind the CONNECT in the same read are decoded with the right
    rules; a server need not set it.

    ``server_side`` parses as a server, refusing packets only a server sends;
    False parses as a client (a bridge, or tests).

    ``max_connect_size``, for a server, says the first packet must be a
    CONNECT of at most that many bytes: any other first byte, or a larger
    CONNECT, is refused as soon as its header arrives. None: no such rule.
    """

    def __init__(
        self,
        max_packet_size: int = MAX_REMAINING_LENGTH + 5,
        protocol_level: int = MQTT_3_1_1,
        *,
        server_side: bool = True,
        max_connect_size: int | None = None,
    ) -> None:
        self.max_packet_size = max_packet_size
        #: The bound on the first packet while it must be CONNECT, else None.
        self._connect_limit = (
            None if max_connect_size is None else min(max_connect_size, max_packet_size))
        self._buf = bytearray()
        #: Size of the buffered packet once its header is complete, else 0.
        self._need = 0
        self._error: ProtocolError | None = None
        self._server_side = server_side
        self._level = protocol_level
        self._rules = _first_byte_rules(server_side, protocol_level)
        if self._connect_limit is not None:
            self._rules = _CONNECT_FIRST

    @property
    def protocol_level(self) -> int:
        return self._level

    @protocol_level.setter
    def protocol_level(self, level: int) -> None:
        self._level = level
        self._rules = _first_byte_rules(self._server_side, level)
        if self._connect_limit is not None:
            self._rules = _CONNECT_FIRST

    @property
    def server_side(self) -> bool:
        return self._server_side

    @server_side.setter
    def server_side(self, value: bool) -> None:
        self._server_side = value
        self._rules = _first_byte_rules(value, self._level)
        if self._connect_limit is not None:
            self._rules = _CONNECT_FIRST

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of an incomplete packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        """Append bytes and return every complete packet, in order.

        Raises a ProtocolError on the first violation; the parser then
        refuses further input, since the connection is being closed.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        pos = 0
        packets: list[Packet] = []
        append = packets.append
        topics = _TOPIC_NAMES
        rules = self._rules
        level = self._level
        parsers = _PARSERS
        limit = self._connect_limit or self.max_packet_size
        need = 0
        try:
            while pos < n:
                first = data[pos]
                rule = rules[first]
                if rule is not None:
                    raise rule[0](rule[1], rule[2])
                if pos + 1 == n:
                    break
                length = data[pos + 1]
                if length < 0x80:
                    start = pos + 2
                else:
                    decoded = _remaining_length(data, pos + 1, n)
                    if decoded is None:
                        break
                    length, start = decoded
                end = start + length
                if end - pos > limit:
                    raise PacketTooLarge(
                        f"A packet of {end - pos} bytes exceeds the limit of {limit} bytes."
                    )
                if end > n:
                    need = end - pos
                    break
                if first >> 4 == 3 and level != MQTT_5:
                    # PUBLISH, inline: the packet the broker sees most. Any
                    # irregularity goes to _parse_publish, which says what.
                    stop = start + 2 + (data[start] << 8 | data[start + 1]) if length > 1 else end + 1
                    topic = None
                    if stop <= end:
                        raw = data[start + 2:stop]
                        topic = topics.get(raw)
                        if topic is None:
                            topic = _valid_topic(raw)
                    if topic:
                        if first & 0x06:
                            packet_id = data[stop] << 8 | data[stop + 1] if stop + 2 <= end else 0
                            if packet_id:
                                append(Publish(topic, data[stop + 2:end], first >> 1 & 3,
                                               first & 1 == 1, first & 8 == 8, packet_id, {}))
                                pos = end
                                continue
                        else:
                            append(Publish(topic, data[stop:end], 0, first & 1 == 1, False, None, {}))
                            pos = end
                            continue
                    _parse_publish(data, start, end, first & 0x0F, level)  # raises
                elif first >> 4 == 3:
                    # A level-5 PUBLISH, inline as above, the properties read
                    # by _publish_properties; what is irregular (an empty
                    # topic with a Topic Alias, say) goes to _parse_publish.
                    stop = start + 2 + (data[start] << 8 | data[start + 1]) if length > 1 else end + 1
                    topic = None
                    if stop < end:
                        raw = data[start + 2:stop]
                        topic = topics.get(raw)
                        if topic is None:
                            topic = _valid_topic(raw)
                    if topic:
                        if first & 0x06:
                            packet_id = data[stop] << 8 | data[stop + 1] if stop + 3 <= end else 0
                            stop += 2
                        else:
                            packet_id = None
                        if packet_id != 0:
                            if data[stop]:
                                properties, stop = _publish_properties(data, stop, end)
                                if "subscription_identifier" in properties and self._server_side:
                                    raise _client_subscription_identifier()
                            else:
                                properties = {}
                                stop += 1
                            append(Publish(topic, data[stop:end], first >> 1 & 3, first & 1 == 1,
                                           first & 8 == 8, packet_id, properties))
                            pos = end
                            continue
                    packet = _parse_publish(data, start, end, first & 0x0F, level)
                    if "subscription_identifier" in packet.properties and self._server_side:
                        raise _client_subscription_identifier()
                    append(packet)
                    pos = end
                    continue
                packet = parsers[first >> 4](data, start, end, first & 0x0F, level)
                append(packet)
                pos = end
                if first == 0x10:
                    # Expecting CONNECT ends with the first one; a second is
                    # the protocol's to refuse [MQTT-3.1.0-2].
                    self._connect_limit = None
                    limit = self.max_packet_size
                    self.protocol_level = level = packet.protocol_level
                    rules = self._rules
        except ProtocolError as error:
            error.packets = packets
            self._error = error
            raise
        if pos < n:
            buf += memoryview(data)[pos:]
        self._need = need
        return packets


# -- encoding -----------------------------------------------------------------

def _fixed_header(first: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((first, length))
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(f"Remaining Length {length} exceeds {MAX_REMAINING_LENGTH}.")
    out = bytearray((first,))
    while length >= 0x80:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def _str(text: str) -> bytes:
    return _bin(text.encode("utf-8"))


def _bin(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("A string or binary field is longer than 65535 bytes.")
    return _pack_h(len(data)) + data


def _publish_first(qos: int, retain: bool, dup: bool) -> int:
    first = 0x30 | qos << 1
    if retain:
        first |= 0x01
    if dup:
        first |= 0x08
    return first


#: Topic name -> its wire form (length prefix + UTF-8), for the encoders;
#: bounded like _TOPIC_NAMES.
_TOPIC_FIELDS: dict[str, bytes] = {}


def _topic_field(topic: str) -> bytes:
    field = _TOPIC_FIELDS.get(topic)
    if field is None:
        encoded = topic.encode()
        if len(encoded) > 0xFFFF:
            raise ValueError("The topic is longer than 65535 bytes.")
        field = _pack_h(len(encoded)) + encoded
        _remember(_TOPIC_FIELDS, 1, topic, field, len(encoded))
    return field


def encode_publish(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool = False, packet_id: int = 0
) -> bytes:
    """Encode a PUBLISH without building a packet value (the fan-out path)."""
    field = _TOPIC_FIELDS.get(topic) or _topic_field(topic)
    first = 0x30 | qos << 1
    if retain:
        first |= 0x01
    if dup:
        first |= 0x08
    if qos:
        length = len(field) + len(payload) + 2
        head = _pack_bb(first, length) if length < 0x80 else _fixed_header(first, length)
        return b"".join((head, field, _pack_h(packet_id), payload))
    length = len(field) + len(payload)
    head = _pack_bb(first, length) if length < 0x80 else _fixed_header(first, length)
    return b"".join((head, field, payload))


def encode_publish0_plain5(topic: str, payload: bytes, retain: bool) -> bytes:
    """A level-5 QoS 0 PUBLISH without properties: `encode_publish` with the
    empty property block (one 0 byte) written in place, not copied in front
    of the payload (the fan-in path encodes every message once)."""
    field = _TOPIC_FIELDS.get(topic) or _topic_field(topic)
    first = 0x31 if retain else 0x30
    length = len(field) + len(payload) + 1
    head = _pack_bb(first, length) if length < 0x80 else _fixed_header(first, length)
    return b"".join((head, field, b"\x00", payload))


def encode_publish_parts(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool = False
) -> tuple[bytes, bytes]:
    """Split a QoS>0 PUBLISH around its packet id, to encode once per message.

    ``head + packet_id.to_bytes(2, "big") + payload`` is the whole packet;
    the Remaining Length in ``head`` already counts the two id bytes.
    """
    if not qos:
        raise ValueError("A QoS 0 PUBLISH has no packet identifier.")
    field = _TOPIC_FIELDS.get(topic) or _topic_field(topic)
    first = _publish_first(qos, retain, dup)
    length = len(field) + len(payload) + 2
    head = _pack_bb(first, length) if length < 0x80 else _fixed_header(first, length)
    return head + field, payload


PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


def encode_puback(packet_id: int) -> bytes:
    return _pack_bbh(0x40, 2, packet_id)


def encode_pubrec(packet_id: int) -> bytes:
    return _pack_bbh(0x50, 2, packet_id)


def encode_pubrel(packet_id: int) -> bytes:
    return _pack_bbh(0x62, 2, packet_id)


def encode_pubcomp(packet_id: int) -> bytes:
    return _pack_bbh(0x70, 2, packet_id)


def _encode_connect(p: Connect) -> bytes:
    flags = 0x02 if p.clean_session else 0
    parts = [_str(p.protocol_name), b"", _pack_h(p.keep_alive), _str(p.client_id)]
    if p.will is not None:
        flags |= 0x04 | p.will.qos << 3 | (0x20 if p.will.retain else 0)
        parts += (_str(p.will.topic), _bin(p.will.payload))
    if p.username is not None:
        flags |= 0x80
        parts.append(_str(p.username))
    if p.password is not None:
        flags |= 0x40
        parts.append(_bin(p.password))
    parts[1] = bytes((p.protocol_level, flags))
    body = b"".join(parts)
    return _fixed_header(0x10, len(body)) + body


def _encode_connack(p: ConnAck) -> bytes:
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _encode_publish(p: Publish) -> bytes:
    if p.qos and p.packet_id is None:
        raise ValueError("A QoS>0 PUBLISH needs a packet identifier.")
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id or 0)


def _encode_subscribe(p: Subscribe) -> bytes:
    parts = [_pack_h(p.packet_id)]
    for sub in p.subscriptions:
        parts += (_str(sub.topic_filter), bytes((sub.qos,)))
    body = b"".join(parts)
    return _fixed_header(0x82, len(body)) + body


def _encode_suback(p: SubAck) -> bytes:
    body = _pack_h(p.packet_id) + bytes(p.return_codes)
    return _fixed_header(0x90, len(body)) + body


def _encode_unsubscribe(p: Unsubscribe) -> bytes:
    body = _pack_h(p.packet_id) + b"".join(_str(f) for f in p.topic_filters)
    return _fixed_header(0xA2, len(body)) + body


def _encode_auth(p: Auth) -> bytes:
    raise ValueError("AUTH exists only in MQTT 5.")


_ENCODERS = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: lambda p: encode_puback(p.packet_id),
    PubRec: lambda p: encode_pubrec(p.packet_id),
    PubRel: lambda p: encode_pubrel(p.packet_id),
    PubComp: lambda p: encode_pubcomp(p.packet_id),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: lambda p: _pack_bbh(0xB0, 2, p.packet_id),
    PingReq: lambda p: PINGREQ_BYTES,
    PingResp: lambda p: PINGRESP_BYTES,
    Disconnect: lambda p: DISCONNECT_BYTES,
    Auth: _encode_auth,
}


# -- encoding at level 5 --------------------------------------------------------

def _vbi(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value > _MAX_VBI:
        raise ValueError(f"{value} does not fit a Variable Byte Integer.")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_writer(ident: int):
    head = bytes((ident,))

    def write(value: str) -> bytes:
        raw = value.encode()
        return head + _pack_h(len(raw)) + raw

    return write


def _binary_writer(ident: int):
    head = bytes((ident,))

    def write(value: bytes) -> bytes:
        return head + _pack_h(len(value)) + value

    return write


def _pair_writer(ident: int):
    head = bytes((ident,))

    def write(value: tuple[str, str]) -> bytes:
        name, text = value[0].encode(), value[1].encode()
        return b"".join((head, _pack_h(len(name)), name, _pack_h(len(text)), text))

    return write


def _vbi_writer(ident: int):
    head = bytes((ident,))

    def write(value: int) -> bytes:
        return head + _vbi(value)

    return write


def _property_writer(ident: int, kind: int):
    """A function: one value -> the property's bytes, identifier first. A
    value the wire cannot carry raises struct.error or ValueError."""
    if kind == _BYTE:
        return partial(struct.Struct(">BB").pack, ident)
    if kind == _U16:
        return partial(struct.Struct(">BH").pack, ident)
    if kind == _U32:
        return partial(struct.Struct(">BI").pack, ident)
    if kind == _STR:
        return _string_writer(ident)
    if kind == _BIN:
        return _binary_writer(ident)
    if kind == _PAIR:
        return _pair_writer(ident)
    return _vbi_writer(ident)


#: Property name -> its writer, for the encoder.
_PROPERTY_WRITERS = {
    name: _property_writer(ident, kind) for name, (ident, kind) in _PROPERTY_IDS.items()
}


def property_bytes(properties: dict) -> bytes:
    """The properties of a packet, without the property length in front.

    For the PUBLISH fast path: encode what all subscribers share once and
    append what differs (a Subscription Identifier, a Topic Alias) per
    subscriber, then pass the sum to `encode_publish5`. Properties come out
    in the dict's order; lists (``user_property``, a PUBLISH's
    ``subscription_identifier``) one item each, in order.
    """
    if not properties:
        return b""
    parts = []
    writers = _PROPERTY_WRITERS
    for name, value in properties.items():
        write = writers.get(name)
        if write is None:
            raise ValueError(f"Unknown MQTT 5 property {name!r}.")
        try:
            if type(value) is list:
                parts += map(write, value)
            else:
                parts.append(write(value))
        except struct.error as exc:
            raise ValueError(f"The {name} property: {exc}") from None
    return b"".join(parts)


def _properties(properties: dict) -> bytes:
    """A property block: its length, then the properties."""
    if not properties:
        return b"\x00"
    items = property_bytes(properties)
    return _vbi(len(items)) + items


def encode_publish5(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool = False,
    packet_id: int = 0, properties: bytes = b"",
) -> bytes:
    """Encode a level-5 PUBLISH from ``property_bytes`` output (the fan-out
    path). ``topic`` may be "" when ``properties`` carry a Topic Alias."""
    field = _TOPIC_FIELDS.get(topic) or _topic_field(topic)
    first = 0x30 | qos << 1
    if retain:
        first |= 0x01
    if dup:
        first |= 0x08
    size = len(properties)
    block = _vbi(size) if size else b"\x00"
    length = len(field) + len(block) + size + len(payload)
    if qos:
        length += 2
        head = _pack_bb(first, length) if length < 0x80 else _fixed_header(first, length)
        return b"".join((head, field, _pack_h(packet_id), block, properties, payload))
    head = _pack_bb(first, length) if length < 0x80 else _fixed_header(first, length)
    return b"".join((head, field, block, properties, payload))


def encode_publish5_parts(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool = False,
    properties: bytes = b"",
) -> tuple[bytes, bytes]:
    """`encode_publish_parts` at level 5: ``head + packet_id.to_bytes(2,
    "big") + tail`` is the whole packet, the properties are in ``tail``."""
    if not qos:
        raise ValueError("A QoS 0 PUBLISH has no packet identifier.")
    field = _TOPIC_FIELDS.get(topic) or _topic_field(topic)
    size = len(properties)
    tail = b"".join((_vbi(size) if size else b"\x00", properties, payload))
    first = _publish_first(qos, retain, dup)
    length = len(field) + len(tail) + 2
    head = _pack_bb(first, length) if length < 0x80 else _fixed_header(first, length)
    return head + field, tail


def _packet(first: int, body: bytes) -> bytes:
    return _fixed_header(first, len(body)) + body


def _encode_connect5(p: Connect) -> bytes:
    flags = 0x02 if p.clean_session else 0
    parts = [_str(p.protocol_name), b"", _pack_h(p.keep_alive), _properties(p.properties),
             _str(p.client_id)]
    will = p.will
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        parts += (_properties(will.properties), _str(will.topic), _bin(will.payload))
    if p.username is not None:
        flags |= 0x80
        parts.append(_str(p.username))
    if p.password is not None:
        flags |= 0x40
        parts.append(_bin(p.password))
    parts[1] = bytes((p.protocol_level, flags))
    return _packet(0x10, b"".join(parts))


def _encode_connack5(p: ConnAck) -> bytes:
    return _packet(0x20, bytes((1 if p.session_present else 0, p.return_code))
                   + _properties(p.properties))


def _encode_publish5(p: Publish) -> bytes:
    if p.qos and p.packet_id is None:
        raise ValueError("A QoS>0 PUBLISH needs a packet identifier.")
    return encode_publish5(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id or 0,
                           property_bytes(p.properties))


def _ack5_encoder(first: int):
    def encode_ack(p) -> bytes:
        """Reason code and properties only when needed (3.4.2.1)."""
        if p.properties:
            return _packet(first, _pack_h(p.packet_id) + bytes((p.reason_code,))
                           + _properties(p.properties))
        if p.reason_code:
            return bytes((first, 3)) + _pack_h(p.packet_id) + bytes((p.reason_code,))
        return _pack_bbh(first, 2, p.packet_id)

    return encode_ack


def _encode_subscribe5(p: Subscribe) -> bytes:
    parts = [_pack_h(p.packet_id), _properties(p.properties)]
    for sub in p.subscriptions:
        options = (sub.qos | (0x04 if sub.no_local else 0)
                   | (0x08 if sub.retain_as_published else 0) | sub.retain_handling << 4)
        parts += (_str(sub.topic_filter), bytes((options,)))
    return _packet(0x82, b"".join(parts))


def _encode_suback5(p: SubAck) -> bytes:
    return _packet(0x90, _pack_h(p.packet_id) + _properties(p.properties) + bytes(p.return_codes))


def _encode_unsubscribe5(p: Unsubscribe) -> bytes:
    return _packet(0xA2, _pack_h(p.packet_id) + _properties(p.properties)
                   + b"".join(_str(f) for f in p.topic_filters))


def _encode_unsuback5(p: UnsubAck) -> bytes:
    return _packet(0xB0, _pack_h(p.packet_id) + _properties(p.properties) + bytes(p.reason_codes))


def _encode_disconnect5(p: Disconnect) -> bytes:
    """Reason code and properties only when needed (3.14.2.1, 3.14.2.2.1)."""
    if p.properties:
        return _packet(0xE0, bytes((p.reason_code,)) + _properties(p.properties))
    if p.reason_code:
        return bytes((0xE0, 1, p.reason_code))
    return DISCONNECT_BYTES


def _encode_auth5(p: Auth) -> bytes:
    """Empty when Success without properties (3.15.2.1)."""
    if p.properties or p.reason_code:
        return _packet(0xF0, bytes((p.reason_code,)) + _properties(p.properties))
    return b"\xf0\x00"


_ENCODERS_5 = {
    Connect: _encode_connect5,
    ConnAck: _encode_connack5,
    Publish: _encode_publish5,
    PubAck: _ack5_encoder(0x40),
    PubRec: _ack5_encoder(0x50),
    PubRel: _ack5_encoder(0x62),
    PubComp: _ack5_encoder(0x70),
    Subscribe: _encode_subscribe5,
    SubAck: _encode_suback5,
    Unsubscribe: _encode_unsubscribe5,
    UnsubAck: _encode_unsuback5,
    PingReq: lambda p: PINGREQ_BYTES,
    PingResp: lambda p: PINGRESP_BYTES,
    Disconnect: _encode_disconnect5,
    Auth: _encode_auth5,
}


def encode(packet: Packet, protocol_level: int = MQTT_3_1_1) -> bytes:
    """Encode any packet, in either direction, at ``protocol_level``.

    Only what the wire cannot carry raises ValueError (a string over 65535
    bytes, a packet id out of range, an unknown property); policy, such as
    wildcards in a topic name or a property where the packet may not carry
    it, is the caller's. MQTT 3.1 uses the 3.1.1 layout, so a CONNECT with
    ``protocol_name="MQIsdp"`` encodes as a 3.1 client would send it. A
    CONNECT takes its layout from its own ``protocol_level``, as it is parsed.
    """
    if type(packet) is Connect and packet.protocol_level == MQTT_5:
        protocol_level = MQTT_5
    if protocol_level == MQTT_5:
        encoders = _ENCODERS_5
    elif protocol_level in (MQTT_3_1, MQTT_3_1_1):
        encoders = _ENCODERS
    else:
        raise ValueError(f"Protocol level {protocol_level} is not one we speak.")
    try:
        return encoders[type(packet)](packet)
    except (struct.error, OverflowError) as exc:
        raise ValueError(str(exc)) from None
