"""What an MQTT 5 connection agreed on in CONNECT and CONNACK, in one object.

A 3.1.1 connection has none (``MQTTProtocol.v5`` is None: one attribute
check on the paths that differ); a 5.0 connection has one `V5`, so the
connection itself stays within its attribute budget (tests/test_protocol.py)
however many MQTT 5 limits there are. Sans I/O: values and bytes only.
"""

from __future__ import annotations

import math

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from reactorapp.mqtt.publish5 import TopicAliases

#: Session Expiry Interval 0xFFFFFFFF: the session does not expire [§3.1.2.11.2].
NEVER_EXPIRES = 0xFFFFFFFF
#: The largest packet MQTT can carry (no Maximum Packet Size: no limit).
MAX_PACKET = 268_435_460
#: Properties that only say why, which may be left out of a packet [§3.1.2.11.7].
_PROBLEM_PROPERTIES = ("reason_string", "user_property")
#: The packets that may carry them when the client asked for no problem
#: information [MQTT-3.1.2-29].
_ALWAYS_EXPLAINED = (P.ConnAck, P.Disconnect, P.Publish)

#: 3.1.1 CONNACK return code -> the MQTT 5 reason code that means the same.
REASON_FOR_RETURN_CODE = {
    P.ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION: P.ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    P.ConnectReturnCode.IDENTIFIER_REJECTED: P.ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
    P.ConnectReturnCode.SERVER_UNAVAILABLE: P.ReasonCode.SERVER_UNAVAILABLE,
    P.ConnectReturnCode.BAD_USERNAME_OR_PASSWORD: P.ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    P.ConnectReturnCode.NOT_AUTHORIZED: P.ReasonCode.NOT_AUTHORIZED,
}
#: And back, for a 3.1.1 client refused for a reason 3.1.1 has no code for:
#: "server unavailable" for anything not listed.
RETURN_CODE_FOR_REASON = {v: k for k, v in REASON_FOR_RETURN_CODE.items()}


def return_code_for(reason_code: int) -> int:
    """The 3.1.1 CONNACK return code closest to an MQTT 5 reason code."""
    return RETURN_CODE_FOR_REASON.get(reason_code, P.ConnectReturnCode.SERVER_UNAVAILABLE)


def session_expiry_seconds(interval: int) -> float:
    """A Session Expiry Interval as seconds: 0xFFFFFFFF is for ever."""
    return math.inf if interval >= NEVER_EXPIRES else float(interval)


class V5:
    """The client's limits (what we may send it) and the counts that keep
    it to ours (what it may send us)."""

    __slots__ = ("receive_maximum", "maximum_packet_size", "topic_alias_maximum",
                 "problem_information", "auth_method", "auth_step", "inbound", "limit", "plain", "fast", "aliases")

    def __init__(self, properties: dict) -> None:
        #: QoS 1/2 PUBLISHes we may have unacknowledged at the client [§3.1.2.11.3].
        self.receive_maximum: int = properties.get("receive_maximum", 65535)
        #: The largest packet the client takes [MQTT-3.1.2-24].
        self.maximum_packet_size: int = properties.get("maximum_packet_size", MAX_PACKET)
        #: Topic aliases we may use towards the client [MQTT-3.1.2-26].
        self.topic_alias_maximum: int = properties.get("topic_alias_maximum", 0)
        #: False: no Reason String or User Property but on CONNACK, PUBLISH
        #: and DISCONNECT [MQTT-3.1.2-29].
        self.problem_information = properties.get("request_problem_information", 1) == 1
        #: The enhanced authentication method of CONNECT, or None.
        self.auth_method: str | None = properties.get("authentication_method")
        #: While an AUTH exchange waits for the client: (the authenticator's
        #: next step, the CONNECT it answers, or None when re-authenticating).
        self.auth_step: tuple | None = None
        #: QoS 1/2 PUBLISHes from the client not yet answered with PUBACK or
        #: PUBCOMP (or a failing PUBREC): held to our Receive Maximum.
        self.inbound = 0
        #: Our Receive Maximum, which ``inbound`` may not pass.
        self.limit = 65535
        #: No topic aliases and no size limit towards the client: a message
        #: without options or expiry goes out as every such client gets it,
        #: without a size check (the fan-out path).
        self.plain = not self.topic_alias_maximum and self.maximum_packet_size >= MAX_PACKET
        #: ``plain``, and the session has no subscription options either
        #: (kept by `Session.options_changed`): one test on the fan-out path.
        self.fast = self.plain
        #: Topic aliases of this connection, both ways (`reactorapp.mqtt.publish5`).
        self.aliases = TopicAliases(self.topic_alias_maximum)

    # -- what the client may send us --------------------------------------------

    # ``inbound`` is counted inline on the message path (MQTTProtocol's
    # _on_publish and _acknowledge): one more for each QoS 1/2 PUBLISH from
    # the client, more than ``limit`` is DISCONNECT 0x93 [§3.3.4]; one less
    # for each PUBACK or PUBCOMP written, and each PUBREC that `fails`
    # [§4.9]. Never below 0: a PUBCOMP may answer a PUBREL of a QoS 2
    # message sent on an earlier connection.

    @staticmethod
    def fails(data: bytes) -> bool:
        """Whether a PUBREC carries a failing reason code (ending the flow)."""
        return len(data) > 4 and data[4] >= 0x80

    # -- what we may send the client -------------------------------------------------

    def fit(self, packet) -> bytes | None:
        """``packet`` encoded for this client: without Reason String and User
        Properties where it asked for no problem information
        [MQTT-3.1.2-29], or where they would make it larger than its Maximum
        Packet Size [MQTT-3.2.2-19] [MQTT-3.14.2-3]; None if it is still too
        large (then it is not sent [MQTT-3.1.2-24])."""
        properties = packet.properties
        if properties and not self.problem_information and not isinstance(
                packet, _ALWAYS_EXPLAINED):
            _strip(properties)
        data = encode(packet, P.MQTT_5)
        if len(data) > self.maximum_packet_size and properties and any(
                key in properties for key in _PROBLEM_PROPERTIES):
            _strip(properties)
            data = encode(packet, P.MQTT_5)
        return data if len(data) <= self.maximum_packet_size else None

    def describe(self) -> dict:
        """The client's side of the limits, for the admin API."""
        return {"receive_maximum": self.receive_maximum,
                "maximum_packet_size": self.maximum_packet_size,
                "topic_alias_maximum": self.topic_alias_maximum}


def _strip(properties: dict) -> None:
    for key in _PROBLEM_PROPERTIES:
        properties.pop(key, None)
