"""A tiny, independent reader for what the broker sends (server -> client
packets), so protocol tests do not check the codec against itself."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


@dataclass
class Out:
    """One packet read off the wire, fields by name."""

    type: str
    flags: int
    body: bytes
    fields: dict = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None


_NAMES = {2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
          7: "PUBCOMP", 9: "SUBACK", 11: "UNSUBACK", 13: "PINGRESP"}


def read_packets(data: bytes) -> list[Out]:
    packets = []
    i = 0
    while i < len(data):
        first = data[i]
        length, i = remaining_length(data, i + 1)
        body = data[i:i + length]
        assert len(body) == length, "truncated packet"
        i += length
        ptype, flags = first >> 4, first & 0x0F
        out = Out(_NAMES[ptype], flags, body)
        f = out.fields
        if ptype == 2:
            f["session_present"] = bool(body[0] & 1)
            f["return_code"] = body[1]
            assert len(body) == 2
        elif ptype == 3:
            (tlen,) = struct.unpack_from("!H", body)
            f["topic"] = body[2:2 + tlen].decode("utf-8")
            rest = body[2 + tlen:]
            f["qos"] = (flags >> 1) & 3
            f["dup"] = bool(flags & 8)
            f["retain"] = bool(flags & 1)
            if f["qos"]:
                (f["packet_id"],) = struct.unpack_from("!H", rest)
                rest = rest[2:]
            else:
                f["packet_id"] = None
            f["payload"] = bytes(rest)
        elif ptype in (4, 5, 6, 7, 11):
            assert len(body) == 2
            (f["packet_id"],) = struct.unpack("!H", body)
        elif ptype == 9:
            (f["packet_id"],) = struct.unpack_from("!H", body)
            f["return_codes"] = list(body[2:])
        elif ptype == 13:
            assert length == 0
        packets.append(out)
    return packets


def remaining_length(data, at: int) -> tuple[int, int]:
    """The Remaining Length encoded from ``data[at]``, and where the body
    starts; IndexError if ``data`` ends inside it."""
    length = shift = 0
    while True:
        byte = data[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return length, at


def complete_frames(buffer: bytearray) -> int:
    """Length of the whole packets at the start of ``buffer``."""
    end, size = 0, len(buffer)
    while end < size:
        try:
            length, at = remaining_length(buffer, end + 1)
        except IndexError:
            return end
        if at + length > size:
            return end
        end = at + length
    return end
