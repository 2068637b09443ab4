"""The hub: routes messages from publishers to subscribers, keeps retained
messages and the registry of sessions. It knows no protocol."""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.hub.interfaces import IHub
from reactorapp.hub.topics import RetainedTree, TopicTree, validate_filter

log = Logger()


class HubStats:
    """Plain counters read by $SYS, /metrics and the admin API.

    Front ends bump them directly: an attribute increment is the cheapest
    thing that can be done on the hot path.
    """

    __slots__ = (
        "started_at", "clients_connected", "clients_maximum",
        "messages_received", "messages_sent",
        "publish_received", "publish_sent", "publish_dropped",
        "bytes_received", "bytes_sent",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.clients_connected = 0
        self.clients_maximum = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.publish_received = 0
        self.publish_sent = 0
        self.publish_dropped = 0
        self.bytes_received = 0
        self.bytes_sent = 0

    def client_connected(self) -> None:
        self.clients_connected += 1
        if self.clients_connected > self.clients_maximum:
            self.clients_maximum = self.clients_connected

    def client_disconnected(self) -> None:
        self.clients_connected -= 1


@implementer(IHub)
class Hub:
    """Publish/subscribe with MQTT semantics, shared by every front end."""

    def __init__(self, clock, *, max_queued_messages: int = 1000) -> None:
        self.clock = clock
        self.max_queued_messages = max_queued_messages
        self.stats = HubStats(clock.seconds())
        self._subscriptions = TopicTree()
        self._retained = RetainedTree()
        self._sessions: dict[str, object] = {}

    # -- routing ---------------------------------------------------------

    def publish(self, message):
        """Update the retained store, then deliver to each matching
        subscriber once, at the lower of the published and granted QoS."""
        if message.retain:
            if message.payload:
                self._retained.set(message.topic, message)
            else:
                # [MQTT-3.3.1-10] [MQTT-3.3.1-11]: an empty retained payload
                # is delivered as usual but clears the stored message.
                self._retained.remove(message.topic)
        published_qos = message.qos
        for subscriber, granted in self._subscriptions.match(message.topic):
            try:
                subscriber.deliver(
                    message, granted if granted < published_qos else published_qos, False)
            except Exception:
                log.failure("Subscriber {subscriber!r} failed to take a message",
                            subscriber=subscriber)
        return None

    def subscribe(self, subscriber, topic_filter, qos):
        validate_filter(topic_filter)
        self._subscriptions.add(topic_filter, subscriber, qos)
        if topic_filter.startswith("$share/"):
            return []  # shared subscriptions get no retained messages
        return self._retained.match(topic_filter)

    def unsubscribe(self, subscriber, topic_filter):
        return self._subscriptions.remove(topic_filter, subscriber)

    def unsubscribe_all(self, subscriber, topic_filters):
        for topic_filter in list(topic_filters):
            self._subscriptions.remove(topic_filter, subscriber)

    def retained(self, topic_filter):
        return self._retained.match(topic_filter)

    @property
    def subscription_count(self) -> int:
        return len(self._subscriptions)

    @property
    def retained_count(self) -> int:
        return len(self._retained)

    # -- sessions ----------------------------------------------------------

    def sessions(self):
        return self._sessions

    def get_session(self, client_id):
        return self._sessions.get(client_id)

    def add_session(self, client_id, session) -> None:
        self._sessions[client_id] = session

    def remove_session(self, client_id, session=None) -> None:
        """Forget a session; with ``session`` given, only if it is still the
        registered one (a newer connection may have replaced it)."""
        if session is None or self._sessions.get(client_id) is session:
            self._sessions.pop(client_id, None)

    @property
    def session_count(self) -> int:
        return len(self._sessions)
