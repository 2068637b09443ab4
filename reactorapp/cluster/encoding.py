"""Messages as compact bytes for Redis values, and back.

A packed message is a fixed header, then its variable parts one after the
other: ``!BdHHI`` (flags, timestamp, topic, sender and properties lengths),
topic, sender, properties, payload. Flags hold the QoS (bits 0-1), retain
(bit 2) and whether there is a sender (bit 3), so a missing sender and an
empty one stay apart. Properties are a Python literal (str, bytes, numbers,
lists), as the SQLite store writes them. An 11-byte payload on a 12-byte
topic packs into 42 bytes; JSON with the payload in base64 takes about 110
(docs/cluster.md, "Storage").
"""

from __future__ import annotations

import ast
import struct

from reactorapp.hub.message import Message

_HEADER = struct.Struct("!BdHHI")
_ENTRY = struct.Struct("!BB")  # a queued message: QoS for the session, retained flag
_FLIGHT = struct.Struct("!HB")  # a message in flight: packet id, state
#: Bytes before the packed message in a queue entry.
ENTRY_HEADER = _ENTRY.size


def pack_message(message) -> bytes:
    topic = message.topic.encode()
    sender = b"" if message.sender is None else message.sender.encode()
    properties = repr(message.properties).encode() if message.properties else b""
    flags = (message.qos & 3) | (4 if message.retain else 0) | (0 if message.sender is None else 8)
    return b"".join((
        _HEADER.pack(flags, message.timestamp, len(topic), len(sender), len(properties)),
        topic, sender, properties, message.payload))


def unpack_message(data: bytes) -> Message:
    flags, timestamp, topic_length, sender_length, properties_length = _HEADER.unpack_from(data)
    at = _HEADER.size
    topic = data[at:at + topic_length].decode()
    at += topic_length
    sender = data[at:at + sender_length].decode() if flags & 8 else None
    at += sender_length
    properties = (ast.literal_eval(data[at:at + properties_length].decode())
                  if properties_length else None)
    at += properties_length
    return Message(topic, bytes(data[at:]), flags & 3, bool(flags & 4), properties,
                   sender, timestamp)


def pack_entry(message, qos: int, retained: bool) -> bytes:
    """A message queued for a session, with the QoS it is delivered at."""
    return _ENTRY.pack(qos, 1 if retained else 0) + pack_message(message)


def unpack_entry(data: bytes) -> tuple[Message, int, bool]:
    qos, retained = _ENTRY.unpack_from(data)
    return unpack_message(memoryview(data)[_ENTRY.size:].tobytes()), qos, bool(retained)


def pack_flight(packet_id: int, state: int) -> bytes:
    return _FLIGHT.pack(packet_id, state)


def unpack_flight(data: bytes) -> tuple[int, int]:
    return _FLIGHT.unpack(data)
