"""The HTTP request for one attempt of one delivery: headers and body.

Two formats (the rule's ``format``):

``json`` (default): ``Content-Type: application/json`` and the envelope ::

    {"topic": "sensors/kitchen", "payload": "21.5", "encoding": "utf-8",
     "qos": 1, "retain": false, "message_id": "42", "timestamp": 1767225600.25,
     "rule": "kitchen"}

  ``payload`` is the payload as text when it is valid UTF-8, otherwise
  base64 with ``"encoding": "base64"``.

``raw``: the payload bytes as the body (``application/octet-stream`` unless
the rule sets a Content-Type), and the metadata in headers:
``X-Reactorapp-Topic`` (percent-encoded UTF-8), ``X-Reactorapp-Qos``,
``X-Reactorapp-Retain`` (``0``/``1``), ``X-Reactorapp-Message-Time``.

Every request also carries ``Idempotency-Key`` (the message id, the same on
every attempt), ``X-Reactorapp-Rule``, ``X-Reactorapp-Delivery``,
``X-Reactorapp-Attempt`` and, when the rule has a secret, the signature
headers described in `reactorapp.webhooks.signing`.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.web.http_headers import Headers

from reactorapp import __version__
from reactorapp.web.errors import compact_json
from reactorapp.web.messages import payload_fields
from reactorapp.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

USER_AGENT = f"reactorapp/{__version__} webhooks".encode("ascii")


def envelope(rule_name: str, delivery) -> bytes:
    """The JSON body of a ``json`` rule."""
    document = {
        "topic": delivery.topic, **payload_fields(delivery.payload),
        "qos": delivery.qos, "retain": delivery.retain,
        "message_id": delivery.key, "timestamp": delivery.timestamp,
        "rule": rule_name,
    }
    return compact_json(document)


def render(rule, delivery, attempt: int, now: float) -> tuple[Headers, bytes]:
    """Headers and body for attempt number ``attempt`` (1, 2, ...) at ``now``."""
    headers = Headers()
    set_header = headers.setRawHeaders
    if rule.format == "json":
        body = envelope(rule.name, delivery)
        set_header(b"Content-Type", [b"application/json"])
    else:
        body = delivery.payload
        set_header(b"Content-Type", [b"application/octet-stream"])
        set_header(b"X-Reactorapp-Topic", [quote(delivery.topic, safe="/+#$").encode("ascii")])
        set_header(b"X-Reactorapp-Qos", [b"%d" % delivery.qos])
        set_header(b"X-Reactorapp-Retain", [b"1" if delivery.retain else b"0"])
        set_header(b"X-Reactorapp-Message-Time", [repr(delivery.timestamp).encode("ascii")])
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
