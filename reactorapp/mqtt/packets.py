"""MQTT control packets as plain values.

The types cover MQTT 3.1.1 and leave room for MQTT 5: every packet that can
carry properties or a reason code has a field for them, with the 3.1.1 default,
so a version-5 codec only fills fields that already exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5 only


class ConnectReturnCode(IntEnum):
    """CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


SUBACK_FAILURE = 0x80

#: Protocol levels: 3 is MQTT 3.1 ("MQIsdp"), 4 is 3.1.1, 5 is MQTT 5.
MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    client_id: str = ""
    clean_session: bool = True
    keep_alive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = MQTT_3_1_1
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class ConnAck:
    session_present: bool = False
    return_code: int = ConnectReturnCode.ACCEPTED
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubRec:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubRel:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubComp:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class SubscriptionRequest:
    """One topic filter of a SUBSCRIBE with its options.

    In 3.1.1 only ``qos`` exists; the other options are MQTT 5's.
    """

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    subscriptions: list[SubscriptionRequest]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class SubAck:
    packet_id: int
    return_codes: list[int]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: list[str]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class UnsubAck:
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)  # MQTT 5 only
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PingReq:
    pass


@dataclass(slots=True)
class PingResp:
    pass


@dataclass(slots=True)
class Disconnect:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Auth:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


Packet = (
    Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe
    | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect | Auth
)
