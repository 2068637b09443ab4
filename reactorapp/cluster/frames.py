"""A message between nodes, as bytes: compact, no Twisted, no JSON for the hot part.

One frame is a fixed header (flags, timestamp, lengths), the topic, the
MQTT 5 properties if any (JSON, bytes as base64) and the payload, then, for
a message sent for shared subscriptions, the groups the receiving node was
chosen for (``$share/GROUP/FILTER``, separated by U+0000, which no filter
holds). Several
frames are concatenated into one Redis stream entry, so one XADD carries
what a node sends another during one turn of the reactor.
"""

from __future__ import annotations

import base64
import json
import struct

from reactorapp.hub.message import Message

# flags (QoS in bits 0-1, retain bit 2, properties bit 3, groups bit 4),
# timestamp, topic length, payload length.
_HEADER = struct.Struct(">BdHI")
_PROPS = struct.Struct(">I")
_GROUPS = struct.Struct(">I")
_RETAIN = 4
_HAS_PROPERTIES = 8
_HAS_GROUPS = 16


class BadFrame(ValueError):
    """Bytes that are not frames this version wrote."""


def encode(message: Message) -> bytes:
    """One frame for ``message``, cached on it (``encoded["cluster"]``):
    a message sent to several nodes is encoded once."""
    cache = message.encoded
    if cache is None:
        cache = message.encoded = {}
    frame = cache.get("cluster")
    if frame is None:
        topic = message.topic.encode()
        flags = message.qos | (_RETAIN if message.retain else 0)
        props = b""
        if message.properties:
            flags |= _HAS_PROPERTIES
            text = json.dumps(message.properties, default=_bytes_to_json).encode()
            props = _PROPS.pack(len(text)) + text
        frame = cache["cluster"] = b"".join((
            _HEADER.pack(flags, message.timestamp, len(topic), len(message.payload)),
            props, topic, message.payload))
    return frame


def with_groups(frame: bytes, groups) -> bytes:
    """``frame`` (from `encode`) for a node chosen for the shared
    subscriptions ``groups`` (``$share/GROUP/FILTER`` each): that node hands
    the message to one local member of each of these groups, and of no other."""
    text = "\x00".join(groups).encode()
    return b"".join((bytes((frame[0] | _HAS_GROUPS,)), frame[1:], _GROUPS.pack(len(text)), text))


def decode(data: bytes) -> list[Message]:
    """Every message in ``data`` (one stream entry), in order."""
    return [message for message, _groups in decode_entry(data)]


def decode_entry(data: bytes) -> list[tuple[Message, tuple]]:
    """Every message in ``data`` (one stream entry), in order, each with the
    shared subscriptions it was sent for (an empty tuple: none)."""
    messages = []
    at, end = 0, len(data)
    size = _HEADER.size
    try:
        while at < end:
            flags, timestamp, topic_length, payload_length = _HEADER.unpack_from(data, at)
            at += size
            properties = None
            if flags & _HAS_PROPERTIES:
                (length,) = _PROPS.unpack_from(data, at)
                at += _PROPS.size
                properties = json.loads(data[at:at + length], object_hook=_json_to_bytes)
                if "user_property" in properties:
                    properties["user_property"] = [tuple(p) for p in properties["user_property"]]
                at += length
            topic = data[at:at + topic_length].decode()
            at += topic_length
            payload = data[at:at + payload_length]
            at += payload_length
            groups: tuple = ()
            if flags & _HAS_GROUPS:
                (length,) = _GROUPS.unpack_from(data, at)
                at += _GROUPS.size
                groups = tuple(data[at:at + length].decode().split("\x00"))
                at += length
            if at > end:
                raise BadFrame("a frame runs past the end of its entry")
            messages.append((Message(topic, payload, flags & 3, bool(flags & _RETAIN),
                                     properties, timestamp=timestamp), groups))
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise BadFrame(str(e)) from None
    return messages


def _bytes_to_json(value):
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    raise TypeError(f"cannot send a property of type {type(value).__name__}")


def _json_to_bytes(value: dict):
    if len(value) == 1 and "$bytes" in value:
        return base64.b64decode(value["$bytes"])
    return value
