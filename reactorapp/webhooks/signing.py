"""Request signatures, so a receiver can tell a request came from this hub.

The hub sends two headers::

    X-Reactorapp-Timestamp: 1767225600
    X-Reactorapp-Signature: sha256=<hex HMAC-SHA256 of "1767225600." + body>

The key is the rule's secret (UTF-8). The timestamp is inside the signed
text so that a captured request cannot be replayed later: receivers should
refuse timestamps too far from their own clock. `verify` is what a Python
receiver needs; it is also what the tests use.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Reactorapp-Signature"
TIMESTAMP_HEADER = "X-Reactorapp-Timestamp"
SCHEME = "sha256="


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The value of the signature header for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), b"%d." % timestamp, hashlib.sha256)
    mac.update(body)
    return SCHEME + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str,
           now: float | None = None, tolerance: float = 300.0) -> bool:
    """True if ``signature`` is ours for ``body`` and ``timestamp`` is recent.

    ``timestamp`` and ``signature`` are the header values as received. With
    ``now`` given, a timestamp more than ``tolerance`` seconds away from it is
    refused.
    """
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if now is not None and abs(now - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)
