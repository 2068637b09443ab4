"""MQTT 5 PUBLISH on the message path, sans I/O.

In: a 5.0 client's PUBLISH becomes a hub `Message` carrying the properties
that travel with it (`reactorapp.hub.message.application_properties`), its
Topic Alias resolved (`TopicAliases.resolve`) and its payload checked when
it says it is UTF-8 (`payload_format_invalid`).

Out: `encode_for` writes the PUBLISH one 5.0 subscriber gets: the message's
properties with the Message Expiry Interval set to the time left, the
Subscription Identifiers of the subscriber's matching subscriptions, and a
Topic Alias when the client allows them. What every subscriber gets alike is
encoded once per message (`Message.encoded`, under keys that start with 5,
next to the 3.1.1 ones), so a 5.0 subscriber without options or aliases
costs what a 3.1.1 one does.
"""

from __future__ import annotations

from collections import OrderedDict

from reactorapp.mqtt.codec import (
    encode_publish, encode_publish5, encode_publish5_parts, encode_publish_parts, property_bytes,
)

#: Topics shorter than this (in characters) are sent without an alias: the
#: alias itself costs three bytes on every PUBLISH.
MIN_ALIASED = 4


def payload_format_invalid(properties: dict, payload: bytes) -> bool:
    """A PUBLISH (or Will) that says its payload is UTF-8 (Payload Format
    Indicator 1) when it is not [MQTT-3.3.2-4]: the server refuses it with
    0x99 Payload Format Invalid [§3.3.2.3.2]."""
    if properties.get("payload_format_indicator") != 1:
        return False
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


class AliasError(Exception):
    """A Topic Alias the server must answer with DISCONNECT ``reason_code``."""

    def __init__(self, reason: str, reason_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reason_code = reason_code


class TopicAliases:
    """The Topic Aliases of one 5.0 connection, both ways [§3.3.2.3.4].

    Inbound: what the client set, up to our Topic Alias Maximum. Outbound:
    the aliases we give topics we send, up to the client's maximum, the
    least recently sent topic's alias reused when all are taken (an alias
    may be changed at any time [MQTT-3.3.2-11]). Aliases belong to the
    connection: a new one starts with none [MQTT-3.3.2-7].
    """

    __slots__ = ("inbound", "maximum_out", "outbound")

    def __init__(self, maximum_out: int) -> None:
        self.inbound: dict[int, str] = {}
        self.maximum_out = maximum_out
        #: topic -> alias, least recently sent first.
        self.outbound: OrderedDict[str, int] | None = OrderedDict() if maximum_out else None

    def resolve(self, topic: str, alias: int | None, maximum_in: int) -> str:
        """The topic of a PUBLISH from the client, given its Topic Alias and
        our Topic Alias Maximum (announced in CONNACK)."""
        if alias is None:
            return topic
        if not 0 < alias <= maximum_in:
            # [MQTT-3.3.2-8] [MQTT-3.3.2-9]: 0 or over our maximum
            raise AliasError(f"Topic Alias {alias} is over the maximum of {maximum_in}", 0x94)
        if topic:
            self.inbound[alias] = topic  # set or replaced [§3.3.2.3.4]
            return topic
        known = self.inbound.get(alias)
        if known is None:
            raise AliasError(f"Topic Alias {alias} was never set", 0x82)
        return known

    def assign(self, topic: str) -> tuple[int, bool]:
        """The alias to send ``topic`` under and whether the client knows it
        already (then the topic is left out); (0, False) for no alias."""
        outbound = self.outbound
        alias = outbound.get(topic)
        if alias is not None:
            outbound.move_to_end(topic)
            return alias, True
        if len(topic) < MIN_ALIASED:
            return 0, False
        if len(outbound) < self.maximum_out:
            alias = len(outbound) + 1
        else:
            _, alias = outbound.popitem(last=False)
        outbound[topic] = alias
        return alias, False

    def forget(self, topic: str) -> None:
        """The PUBLISH that would have set ``topic``'s alias was not sent."""
        self.outbound.pop(topic, None)


def _properties(message, left) -> bytes:
    """The message's own properties, encoded once per message and time
    left (a Message Expiry Interval that waited is rewritten [MQTT-3.3.2-6])."""
    properties = message.properties
    if not properties:
        return b""
    cache = message.encoded
    if cache is None:
        cache = message.encoded = {}
    key = (5, "properties", left)
    data = cache.get(key)
    if data is None:
        if left is not None and properties.get("message_expiry_interval") != left:
            properties = dict(properties, message_expiry_interval=left)
        data = cache[key] = property_bytes(properties)
    return data


def encode_plain5(message, qos: int, retain: bool):
    """The 5.0 PUBLISH of a message without an expiry for a subscriber
    with nothing of its own in it (no identifiers, no alias): the whole
    packet at QoS 0, else the parts around the packet id. The protocol
    caches it in ``Message.encoded`` for all such subscribers."""
    properties = message.properties
    if not properties:
        # An empty property block is one 0 byte in front of the payload:
        # the 3.1.1 encoders write the rest, on their faster path.
        payload = b"\x00" + message.payload
        if qos:
            return encode_publish_parts(message.topic, payload, qos, retain)
        return encode_publish(message.topic, payload, 0, retain)
    properties = property_bytes(properties)
    if qos:
        return encode_publish5_parts(message.topic, message.payload, qos, retain, False,
                                     properties)
    return encode_publish5(message.topic, message.payload, 0, retain, False, 0, properties)


def encode_for(message, qos: int, retain: bool, packet_id: int, dup: bool, clock,
               identifiers: tuple = (), aliases: TopicAliases | None = None) -> tuple[bytes, str]:
    """The PUBLISH of ``message`` for one 5.0 subscriber, and the topic it
    set an alias for ("" if none): with ``identifiers`` (its matching
    subscriptions' [MQTT-3.3.4-3] [MQTT-3.3.4-4]) and an alias from
    ``aliases``. The publisher's Topic Alias is never forwarded: the Message
    does not hold it [MQTT-3.3.2-7]."""
    expires = message.expires
    left = None if expires is None else message.time_left(clock.seconds())
    if not identifiers and (aliases is None or aliases.outbound is None):
        if dup:
            return encode_publish5(message.topic, message.payload, qos, retain, True, packet_id,
                                   _properties(message, left)), ""
        cache = message.encoded
        if cache is None:
            cache = message.encoded = {}
        key = (5, qos, retain, left)
        data = cache.get(key)
        if data is None:
            properties = _properties(message, left)
            if qos:
                data = encode_publish5_parts(message.topic, message.payload, qos, retain,
                                             False, properties)
            else:
                data = encode_publish5(message.topic, message.payload, 0, retain, False, 0,
                                       properties)
            cache[key] = data
        if qos:
            return data[0] + packet_id.to_bytes(2, "big") + data[1], ""
        return data, ""
    extra = {}
    topic = message.topic
    assigned = ""
    if aliases is not None and aliases.outbound is not None:
        alias, known = aliases.assign(topic)
        if alias:
            extra["topic_alias"] = alias
            if known:
                topic = ""
            else:
                assigned = topic
    if identifiers:
        extra["subscription_identifier"] = list(identifiers)
    properties = property_bytes(extra) + _properties(message, left)
    return encode_publish5(topic, message.payload, qos, retain, dup, packet_id,
                           properties), assigned
