"""MQTT 5 metadata as the HTTP API, SSE and webhooks show and take it.

A message's metadata travels through the hub in ``Message.properties``, keyed
as `reactorapp.mqtt.packets` documents; JSON documents name it so:

=================  ==========================  =================================
JSON field         property                    JSON value
=================  ==========================  =================================
content_type       content_type                a string
payload_format     payload_format_indicator    ``"utf-8"`` (1) or ``"bytes"`` (0)
user_properties    user_property               ``[[name, value], ...]`` in order
                                               (a publish may also give an object)
response_topic     response_topic              a topic name, no wildcards
correlation_data   correlation_data            base64, always (it is binary)
message_expiry     message_expiry_interval     whole seconds; shown as the time
                                               the message has left
=================  ==========================  =================================

Correlation data is base64 in both directions, whatever its bytes: it is
binary in MQTT, and one form keeps a request's data byte for byte in its
answer.
"""

from __future__ import annotations

import base64
import binascii

from reactorapp.hub.topics import topic_name_problem
from reactorapp.web.errors import bad_request

#: The publish fields this module reads.
FIELDS = ("content_type", "payload_format", "user_properties", "response_topic",
          "correlation_data", "message_expiry")
FORMATS = {"bytes": 0, "utf-8": 1}
FORMAT_NAMES = {0: "bytes", 1: "utf-8"}
#: A Four Byte Integer, as the Message Expiry Interval is on the wire.
MAX_EXPIRY = 2**32 - 1
#: A UTF-8 string or binary field of MQTT has a two-byte length.
MAX_FIELD = 65535


def parse_metadata(document: dict, payload: bytes) -> dict | None:
    """The properties of one publish request, checked, or None if it sets
    none; a 400 that says which field is wrong and why."""
    if not any(name in document for name in FIELDS):
        return None
    properties: dict = {}
    if "content_type" in document:
        properties["content_type"] = _string(document["content_type"], "content_type")
    if "payload_format" in document:
        value = document["payload_format"]
        if not isinstance(value, str) or value not in FORMATS:
            raise bad_request(f"'payload_format' must be 'utf-8' or 'bytes', not {value!r}.")
        if value == "utf-8":
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request("The payload is marked 'utf-8' ('payload_format') but is"
                                  " not valid UTF-8.", "bad payload format") from None
        properties["payload_format_indicator"] = FORMATS[value]
    if "user_properties" in document:
        pairs = _user_properties(document["user_properties"])
        if pairs:
            properties["user_property"] = pairs
    if "response_topic" in document:
        topic = _string(document["response_topic"], "response_topic")
        problem = topic_name_problem(topic)
        if problem is not None:
            raise bad_request(f"'response_topic' {problem}; it must be a topic name that"
                              " a reply can be published to (no '+' or '#').",
                              "bad response topic")
        properties["response_topic"] = topic
    if "correlation_data" in document:
        properties["correlation_data"] = _base64(document["correlation_data"])
    if "message_expiry" in document:
        value = document["message_expiry"]
        if type(value) is not int or not 1 <= value <= MAX_EXPIRY:
            raise bad_request(f"'message_expiry' must be whole seconds from 1 to {MAX_EXPIRY},"
                              f" not {value!r}.")
        properties["message_expiry_interval"] = value
    return properties or None


def _string(value, name: str) -> str:
    """A string MQTT can carry: UTF-8, no U+0000, at most 65535 bytes [MQTT-1.5.4-1]
    [MQTT-1.5.4-2]."""
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string, not {type(value).__name__}.")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise bad_request(f"'{name}' is not valid Unicode text.") from None
    if "\x00" in value:
        raise bad_request(f"'{name}' must not contain U+0000.")
    if size > MAX_FIELD:
        raise bad_request(f"'{name}' is {size} bytes long; at most {MAX_FIELD} fit.")
    return value


def _user_properties(value) -> list[tuple[str, str]]:
    """An object of names and values, or a list of [name, value] pairs (names
    may repeat and the order is kept [MQTT-3.3.2-18])."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = value
        for item in items:
            if not (isinstance(item, list) and len(item) == 2):
                raise bad_request("'user_properties' must be an object or a list of"
                                  f" [name, value] pairs; {item!r} is not a pair.")
    else:
        raise bad_request("'user_properties' must be an object or a list of [name, value]"
                          f" pairs, not {type(value).__name__}.")
    return [(_string(name, "user_properties"), _string(text, "user_properties"))
            for name, text in items]


def _base64(value) -> bytes:
    if not isinstance(value, str):
        raise bad_request("'correlation_data' must be a base64 string, not"
                          f" {type(value).__name__}.")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("'correlation_data' is not valid base64 (it is binary, so it is"
                          " always given in base64).") from None
    if len(data) > MAX_FIELD:
        raise bad_request(f"'correlation_data' is {len(data)} bytes long; at most"
                          f" {MAX_FIELD} fit.")
    return data


# -- showing ------------------------------------------------------------------

def expires_at(message) -> float | None:
    """When ``message`` expires (on the clock its timestamp was taken from),
    or None if it does not (`Message.expires`)."""
    return message.expires


def remaining(message, now: float) -> int | None:
    """Whole seconds ``message`` has left at ``now`` (0: expired), or None if
    it does not expire [MQTT-3.3.2-6]. A part of a second counts as one."""
    if message.expires is None:
        return None
    return max(0, message.time_left(now))


def metadata_json(properties: dict | None, left: int | None = None) -> dict:
    """The JSON fields of ``properties`` (none for a message without any);
    ``left``: the seconds left to show as ``message_expiry``."""
    if not properties:
        return {}
    fields: dict = {}
    if "content_type" in properties:
        fields["content_type"] = properties["content_type"]
    if "payload_format_indicator" in properties:
        indicator = properties["payload_format_indicator"]
        fields["payload_format"] = FORMAT_NAMES.get(indicator, indicator)
    if "user_property" in properties:
        fields["user_properties"] = [[name, value] for name, value in properties["user_property"]]
    if "response_topic" in properties:
        fields["response_topic"] = properties["response_topic"]
    if "correlation_data" in properties:
        fields["correlation_data"] = base64.b64encode(
            bytes(properties["correlation_data"])).decode("ascii")
    if "message_expiry_interval" in properties:
        fields["message_expiry"] = (properties["message_expiry_interval"] if left is None
                                    else left)
    return fields
