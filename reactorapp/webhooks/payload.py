"""The HTTP request for one attempt of one delivery: headers and body.

Two formats (the rule's ``format``):

``json`` (default): ``Content-Type: application/json`` and the envelope ::

    {"topic": "sensors/kitchen", "payload": "21.5", "encoding": "utf-8",
     "qos": 1, "retain": false, "message_id": "42", "timestamp": 1767225600.25,
     "rule": "kitchen"}

  ``payload`` is the payload as text when it is valid UTF-8, otherwise
  base64 with ``"encoding": "base64"``. A message with MQTT 5 metadata has
  its fields too (`reactorapp.web.metadata`: ``content_type``,
  ``payload_format``, ``user_properties``, ``response_topic``,
  ``correlation_data`` in base64, and ``message_expiry``, the seconds it has
  left when the attempt is made).

``raw``: the payload bytes as the body (``application/octet-stream`` unless
the rule sets a Content-Type), and the metadata in headers:
``X-Reactorapp-Topic`` (percent-encoded UTF-8), ``X-Reactorapp-Qos``,
``X-Reactorapp-Retain`` (``0``/``1``), ``X-Reactorapp-Message-Time``.
The MQTT 5 metadata of a message that has it: its content type is the
request's ``Content-Type`` (unless the rule sets one, or it is not printable
ASCII);
``X-Reactorapp-Payload-Format`` (``utf-8``/``bytes``),
``X-Reactorapp-Response-Topic`` (percent-encoded UTF-8),
``X-Reactorapp-Correlation-Data`` (base64), ``X-Reactorapp-Message-Expiry``
(seconds left), and one ``X-Reactorapp-User-Property`` header per user
property, ``name=value`` with both percent-encoded, in order.

Every request also carries ``Idempotency-Key`` (the message id, the same on
every attempt), ``X-Reactorapp-Rule``, ``X-Reactorapp-Delivery``,
``X-Reactorapp-Attempt`` and, when the rule has a secret, the signature
headers described in `reactorapp.webhooks.signing`.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from twisted.web.http_headers import Headers

from reactorapp import __version__
from reactorapp.web.errors import compact_json
from reactorapp.web.messages import payload_fields
from reactorapp.web.metadata import FORMAT_NAMES, metadata_json
from reactorapp.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

USER_AGENT = f"reactorapp/{__version__} webhooks".encode("ascii")


def envelope(rule_name: str, delivery, now: float | None = None) -> bytes:
    """The JSON body of a ``json`` rule (at ``now``, for the time left)."""
    document = {
        "topic": delivery.topic, **payload_fields(delivery.payload),
        "qos": delivery.qos, "retain": delivery.retain,
        "message_id": delivery.key, "timestamp": delivery.timestamp,
        "rule": rule_name,
    }
    if delivery.properties:
        left = None if now is None else delivery.left(now)
        document.update(metadata_json(delivery.properties, left))
    return compact_json(document)


def _metadata_headers(set_header, delivery, now: float) -> None:
    """The MQTT 5 metadata of a ``raw`` delivery, as headers."""
    properties = delivery.properties
    content_type = properties.get("content_type")
    if content_type and content_type.isascii() and content_type.isprintable():
        # (anything else, such as a line break, stays out of the headers)
        set_header(b"Content-Type", [content_type.encode("ascii")])
    if "payload_format_indicator" in properties:
        name = FORMAT_NAMES.get(properties["payload_format_indicator"], "bytes")
        set_header(b"X-Reactorapp-Payload-Format", [name.encode("ascii")])
    if "response_topic" in properties:
        set_header(b"X-Reactorapp-Response-Topic",
                   [quote(properties["response_topic"], safe="/$").encode("ascii")])
    if "correlation_data" in properties:
        set_header(b"X-Reactorapp-Correlation-Data",
                   [base64.b64encode(bytes(properties["correlation_data"]))])
    left = delivery.left(now)
    if left is not None:
        set_header(b"X-Reactorapp-Message-Expiry", [b"%d" % left])
    pairs = properties.get("user_property")
    if pairs:
        set_header(b"X-Reactorapp-User-Property",
                   [f"{quote(name, safe='')}={quote(value, safe='')}".encode("ascii")
                    for name, value in pairs])


def render(rule, delivery, attempt: int, now: float) -> tuple[Headers, bytes]:
    """Headers and body for attempt number ``attempt`` (1, 2, ...) at ``now``."""
    headers = Headers()
    set_header = headers.setRawHeaders
    if rule.format == "json":
        body = envelope(rule.name, delivery, now)
        set_header(b"Content-Type", [b"application/json"])
    else:
        body = delivery.payload
        set_header(b"Content-Type", [b"application/octet-stream"])
        set_header(b"X-Reactorapp-Topic", [quote(delivery.topic, safe="/+#$").encode("ascii")])
        set_header(b"X-Reactorapp-Qos", [b"%d" % delivery.qos])
        set_header(b"X-Reactorapp-Retain", [b"1" if delivery.retain else b"0"])
        set_header(b"X-Reactorapp-Message-Time", [repr(delivery.timestamp).encode("ascii")])
        if delivery.properties:
            _metadata_headers(set_header, delivery, now)
    set_header(b"User-Agent", [USER_AGENT])
    for name, value in rule.headers:  # may replace Content-Type and User-Agent
        set_header(name.encode("ascii"), [value.encode("utf-8")])
    set_header(b"Idempotency-Key", [delivery.key.encode("utf-8")])
    set_header(b"X-Reactorapp-Rule", [rule.name.encode("ascii")])
    set_header(b"X-Reactorapp-Delivery", [b"%d" % delivery.id])
    set_header(b"X-Reactorapp-Attempt", [b"%d" % attempt])
    if rule.secret is not None:
        stamp = int(now)
        set_header(TIMESTAMP_HEADER.encode("ascii"), [b"%d" % stamp])
        set_header(SIGNATURE_HEADER.encode("ascii"), [sign(rule.secret, stamp, body).encode("ascii")])
    return headers, body
