"""Messages as JSON: what the API accepts for a publish and what it shows."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import parse_qsl, urlsplit

from reactorapp.hub.topics import InvalidTopic, validate_filter, validate_publish_topic
from reactorapp.web.errors import ApiError, bad_request
from reactorapp.web.metadata import FIELDS as METADATA_FIELDS
from reactorapp.web.metadata import metadata_json, parse_metadata, remaining

PUBLISH_FIELDS = ("topic", "payload", "encoding", "qos", "retain", *METADATA_FIELDS)
ENCODINGS = ("utf-8", "base64")


def payload_fields(payload: bytes) -> dict:
    """``payload`` and ``encoding`` for a JSON document (the API, SSE,
    webhooks): text as text, anything else in base64."""
    try:
        return {"payload": payload.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(payload).decode("ascii"), "encoding": "base64"}


def message_json(message, qos: int | None = None, retained: bool | None = None,
                 now: float | None = None) -> dict:
    """A message as the API shows it: text payloads as text, others in base64,
    then its MQTT 5 metadata if it has any (`reactorapp.web.metadata`), with
    the seconds it has left at ``now`` as ``message_expiry``."""
    document = {
        "id": message.id,
        "topic": message.topic,
        **payload_fields(message.payload),
        "qos": message.qos if qos is None else qos,
        "retain": message.retain if retained is None else retained,
        "timestamp": message.timestamp,
    }
    if message.properties:
        left = None if now is None else remaining(message, now)
        document.update(metadata_json(message.properties, left))
    return document


def parse_json(body: bytes) -> object:
    """A request body as JSON, or a 400 for anything ``json`` refuses
    (numbers too long to convert and nesting too deep included)."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise bad_request("The body is not UTF-8 text.", "invalid JSON") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise bad_request(f"The body is not JSON: {e}.", "invalid JSON") from None


def parse_count(text: str) -> int | None:
    """``text`` as a whole number if it is one written with ASCII digits
    (``str.isdigit`` also takes '²' and other digits ``int`` refuses), of
    at most 18 of them; else None."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def parse_publish(body: bytes) -> tuple[str, bytes, int, bool, dict | None]:
    """Read a JSON publish request: (topic, payload, qos, retain, properties),
    or a 400."""
    document = parse_json(body)
    if not isinstance(document, dict):
        raise bad_request("The body must be a JSON object.", "invalid JSON")
    return publish_fields(document)


_FIELDS = frozenset(PUBLISH_FIELDS)


#: The C scanner behind json.loads, called without its wrappers: a third of
#: the time for the short lines of an NDJSON batch.
_scan = json.JSONDecoder().scan_once


def _json_line(line: str):
    """One NDJSON line as a value, or a 400 saying what is wrong with it."""
    text = line.strip()
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(text):
        parse_json(text.encode("utf-8"))  # raises the 400 with json's own words
        raise bad_request("The line holds more than one JSON value.", "invalid JSON")
    return value


def publish_fields(document: dict, topics: dict | None = None
                   ) -> tuple[str, bytes, int, bool, dict | None]:
    """One message of a publish request, checked: (topic, payload, qos,
    retain, properties), the properties None when it sets no MQTT 5 metadata.

    ``topics`` remembers the topics already checked (within one batch)."""
    if not document.keys() <= _FIELDS:
        unknown = sorted(set(document) - _FIELDS)
        raise bad_request(
            f"Unknown field {unknown[0]!r}; the fields are {', '.join(PUBLISH_FIELDS)}.")
    if "topic" not in document:
        raise bad_request("The field 'topic' is required.", "bad topic")
    topic = document["topic"]
    if topics is None:
        check_topic(topic)
    elif type(topic) is not str or topic not in topics:
        topics[check_topic(topic)] = True
    encoding = document.get("encoding", "utf-8")
    if encoding not in ENCODINGS:
        raise bad_request(f"'encoding' must be 'utf-8' or 'base64', not {encoding!r}.")
    payload = _payload(document.get("payload", ""), encoding)
    qos = document.get("qos", 0)
    if type(qos) is not int or not 0 <= qos <= 2:
        raise bad_request(f"'qos' must be 0, 1 or 2, not {qos!r}.")
    retain = document.get("retain", False)
    if type(retain) is not bool:
        raise bad_request(f"'retain' must be true or false, not {retain!r}.")
    return topic, payload, qos, retain, parse_metadata(document, payload)


#: At most this many invalid messages of a batch are listed in the answer.
MAX_LISTED_ERRORS = 100


def parse_batch(body: bytes, ndjson: bool) -> list[tuple[str, bytes, int, bool, dict | None]]:
    """Every message of a batch (a JSON array, or one JSON object a line),
    checked before any is published: all of them, or a 400 that lists the
    invalid ones by index (0-based; for NDJSON, the index among the
    non-empty lines)."""
    if ndjson:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("The body is not UTF-8 text.", "invalid JSON") from None
        items = [line for line in text.split("\n") if line and not line.isspace()]
    else:
        items = parse_json(body)
        if not isinstance(items, list):
            raise bad_request("A batch must be a JSON array.", "invalid JSON")
    messages = []
    errors = []
    topics: dict = {}
    for index, item in enumerate(items):
        try:
            if ndjson:
                item = _json_line(item)
            if not isinstance(item, dict):
                raise bad_request("A message must be a JSON object.", "invalid JSON")
            messages.append(publish_fields(item, topics))
        except ApiError as e:
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append({"index": index, "error": e.error, "detail": e.detail})
            else:
                errors.append(None)
    if errors:
        count = len(errors)
        first = errors[0]
        raise ApiError(
            400, "invalid batch",
            f"{count} of the {len(items)} messages cannot be published (the first at"
            f" index {first['index']}: {first['detail'].rstrip('.')}); none was published.",
            extra={"errors": [e for e in errors if e is not None]})
    return messages


def _payload(value, encoding: str) -> bytes:
    if not isinstance(value, str):
        raise bad_request(f"'payload' must be a string, not {type(value).__name__}.")
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("'payload' is not valid base64.") from None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("'payload' is not valid Unicode text.") from None


def check_topic(topic) -> str:
    """A topic an HTTP client may publish to, or a 400."""
    try:
        validate_publish_topic(topic)
    except InvalidTopic as e:
        raise bad_request(str(e), "bad topic") from None
    return topic


def check_filter(topic_filter: str) -> str:
    try:
        validate_filter(topic_filter)
    except InvalidTopic as e:
        raise bad_request(str(e), "bad filter") from None
    return topic_filter


def query(request) -> dict[bytes, list[bytes]]:
    """The URL's query parameters only (``request.args`` also holds form bodies).

    Decoded byte for byte (latin-1): ``parse_qs`` given bytes decodes
    escapes as UTF-8 and then fails to encode them back as ASCII, so
    ``%B2`` would be a 500. Values are then read as UTF-8 by their users.
    """
    text = urlsplit(request.uri).query.decode("latin-1")
    found: dict[bytes, list[bytes]] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, encoding="latin-1"):
        found.setdefault(name.encode("latin-1"), []).append(value.encode("latin-1"))
    return found


def query_filters(request) -> list[str]:
    """The repeatable ``filter`` query parameter; '#' when absent."""
    values = query(request).get(b"filter") or [b"#"]
    return [check_filter(_text(value, "filter")) for value in values]


def query_qos(request, default: int = 0) -> int:
    values = query(request).get(b"qos")
    if not values:
        return default
    text = _text(values[-1], "qos")
    if text not in ("0", "1", "2"):
        raise bad_request(f"'qos' must be 0, 1 or 2, not {text!r}.")
    return int(text)


def query_bool(request, name: str, default: bool) -> bool:
    values = query(request).get(name.encode("ascii"))
    if not values:
        return default
    text = _text(values[-1], name).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise bad_request(f"'{name}' must be true or false, not {text!r}.")


def query_metadata(request, payload: bytes) -> dict | None:
    """MQTT 5 metadata from the query of a raw publish: the JSON fields'
    names (`reactorapp.web.metadata`) as parameters, ``message_expiry`` in
    whole seconds, and ``user_property=name=value`` repeated for each user
    property (in order); checked as for a JSON publish."""
    found = query(request)
    document: dict = {}
    for name in ("content_type", "payload_format", "response_topic", "correlation_data"):
        value = found.get(name.encode("ascii"))
        if value:
            document[name] = _text(value[-1], name)
    expiry = found.get(b"message_expiry")
    if expiry:
        text = _text(expiry[-1], "message_expiry")
        count = parse_count(text)
        document["message_expiry"] = text if count is None else count
    pairs = []
    for value in found.get(b"user_property", ()):
        name, sep, text = _text(value, "user_property").partition("=")
        if not sep:
            raise bad_request("'user_property' must be given as name=value, not"
                              f" {name[:40]!r}.")
        pairs.append([name, text])
    if pairs:
        document["user_properties"] = pairs
    return parse_metadata(document, payload)


def query_text(request, name: str) -> str | None:
    """The last value of a query parameter, or None when absent."""
    values = query(request).get(name.encode("ascii"))
    return _text(values[-1], name) if values else None


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"The query parameter '{name}' is not UTF-8.") from None
