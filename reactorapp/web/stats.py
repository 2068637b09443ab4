"""Counters of the HTTP front end, read by /metrics and /api/v1/stats."""

from __future__ import annotations


class WebStats:
    """Plain counters, bumped where things happen (like `HubStats`)."""

    __slots__ = ("sse_streams", "sse_dropped", "sse_overflowed", "websocket_connections",
                 "sse_sessions", "sse_resumed", "sse_replayed", "sse_expired")

    def __init__(self) -> None:
        #: Server-Sent Events streams open now.
        self.sse_streams = 0
        #: QoS 0 messages not sent to a stream whose buffer was full.
        self.sse_dropped = 0
        #: Streams closed because a QoS 1/2 message found their buffer full.
        self.sse_overflowed = 0
        #: Named stream sessions kept now, streams that attached to an
        #: existing one, and events such streams got from what it kept.
        self.sse_sessions = 0
        self.sse_resumed = 0
        self.sse_replayed = 0
        #: Messages not written to a stream because their MQTT 5 expiry
        #: interval ran out first (live, buffered or kept by a session).
        self.sse_expired = 0
        #: MQTT connections over WebSocket open now.
        self.websocket_connections = 0
