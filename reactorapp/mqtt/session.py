"""Per-client MQTT state that outlives a connection when Clean Session is 0.

A session is the hub subscriber for one client id: it decides whether a
message is written now, waits for room in the in-flight window, or waits for
the client to come back. The protocol only turns its calls into bytes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from zope.interface import implementer

from reactorapp.hub.interfaces import ISubscriber

#: States of an outgoing QoS 1/2 message.
AWAITING_PUBACK = 1  # QoS 1 PUBLISH sent, waiting for PUBACK
AWAITING_PUBREC = 2  # QoS 2 PUBLISH sent, waiting for PUBREC
AWAITING_PUBCOMP = 3  # PUBREL sent, waiting for PUBCOMP


@dataclass
class MQTTSettings:
    """Limits of the MQTT front end (all configurable from the command line)."""

    max_packet_size: int = 268_435_460
    max_inflight: int = 20
    max_queued_messages: int = 1000
    max_keepalive: int = 65535


class InFlight:
    """An outgoing QoS 1/2 message holding a packet id until acknowledged."""

    __slots__ = ("message", "qos", "retained", "state")

    def __init__(self, message, qos: int, retained: bool, state: int) -> None:
        self.message = message
        self.qos = qos
        self.retained = retained
        self.state = state


@implementer(ISubscriber)
class Session:
    """Subscriptions, in-flight window and queue of one MQTT client id."""

    def __init__(self, client_id: str, persistent: bool, hub, settings: MQTTSettings) -> None:
        self.client_id = client_id
        self.persistent = persistent
        self.hub = hub
        self.settings = settings
        self.subscriptions: dict[str, int] = {}
        #: Outgoing QoS 1/2 messages by packet id, in the order they were sent.
        self.inflight: dict[int, InFlight] = {}
        #: QoS 1/2 messages waiting for room in the window or for the client.
        self.queue: deque = deque()
        #: Incoming QoS 2 packet ids answered with PUBREC, awaiting PUBREL.
        self.awaiting_pubrel: set[int] = set()
        self.connection = None
        self.dropped = 0
        self._last_packet_id = 0

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r} persistent={self.persistent}>"

    @property
    def connected(self) -> bool:
        return self.connection is not None

    # -- delivery (ISubscriber) -------------------------------------------

    def deliver(self, message, qos, retained):
        connection = self.connection
        if qos == 0:
            if connection is not None:
                connection.send_publish0(message, retained)
            # QoS 0 is not queued for an absent client (like Mosquitto's
            # default queue_qos0_messages false) [MQTT-3.1.2-5].
            return
        if (connection is not None and not self.queue
                and len(self.inflight) < self.settings.max_inflight):
            self._send_new(connection, message, qos, retained)
        elif len(self.queue) < self.settings.max_queued_messages:
            self.queue.append((message, qos, retained))
        else:
            self.dropped += 1
            self.hub.stats.publish_dropped += 1

    def _send_new(self, connection, message, qos, retained) -> None:
        packet_id = self._next_packet_id()
        self.inflight[packet_id] = InFlight(
            message, qos, retained, AWAITING_PUBACK if qos == 1 else AWAITING_PUBREC)
        connection.send_publish(message, qos, retained, packet_id, False)

    def _next_packet_id(self) -> int:
        """An id not in use by this session's outgoing messages [MQTT-2.3.1-4]."""
        packet_id = self._last_packet_id
        inflight = self.inflight
        while True:
            packet_id = packet_id + 1 if packet_id < 65535 else 1
            if packet_id not in inflight:
                self._last_packet_id = packet_id
                return packet_id

    def _fill_window(self) -> None:
        connection = self.connection
        queue = self.queue
        limit = self.settings.max_inflight
        while connection is not None and queue and len(self.inflight) < limit:
            message, qos, retained = queue.popleft()
            self._send_new(connection, message, qos, retained)

    # -- acknowledgements from the client ----------------------------------

    def puback(self, packet_id: int) -> None:
        flight = self.inflight.get(packet_id)
        if flight is not None and flight.state == AWAITING_PUBACK:
            del self.inflight[packet_id]
            self._fill_window()

    def pubrec(self, packet_id: int) -> bool:
        """Move a QoS 2 message to its second half; True if PUBREL is due."""
        flight = self.inflight.get(packet_id)
        if flight is None:
            return False
        if flight.state == AWAITING_PUBREC:
            flight.state = AWAITING_PUBCOMP
            # The message itself is no longer needed [MQTT-4.3.3-1].
            flight.message = None
        return flight.state == AWAITING_PUBCOMP

    def pubcomp(self, packet_id: int) -> None:
        flight = self.inflight.get(packet_id)
        if flight is not None and flight.state == AWAITING_PUBCOMP:
            del self.inflight[packet_id]
            self._fill_window()

    # -- connection lifecycle --------------------------------------------

    def attach(self, connection) -> None:
        """Bind a live connection, re-send what was not acknowledged, in the
        original order [MQTT-4.4.0-1] [MQTT-4.6.0-1], then drain the queue."""
        self.connection = connection
        for packet_id, flight in list(self.inflight.items()):
            if flight.state == AWAITING_PUBCOMP:
                connection.send_pubrel(packet_id)
            else:
                connection.send_publish(flight.message, flight.qos, flight.retained, packet_id, True)
        self._fill_window()

    def detach(self) -> None:
        self.connection = None

    def subscribe(self, topic_filter: str, qos: int):
        """Add or replace a subscription [MQTT-3.8.4-3]; return the retained
        messages to send for it."""
        retained = self.hub.subscribe(self, topic_filter, qos)
        self.subscriptions[topic_filter] = qos
        return retained

    def unsubscribe(self, topic_filter: str) -> bool:
        """Remove a subscription matched byte for byte [MQTT-3.10.4-1]."""
        if self.subscriptions.pop(topic_filter, None) is None:
            return False
        self.hub.unsubscribe(self, topic_filter)
        return True

    def discard(self) -> None:
        """End this session: drop its subscriptions and state [MQTT-3.1.2-6]."""
        self.hub.unsubscribe_all(self, self.subscriptions)
        self.subscriptions.clear()
        self.inflight.clear()
        self.queue.clear()
        self.awaiting_pubrel.clear()
        self.hub.remove_session(self.client_id, self)
