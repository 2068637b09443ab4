"""The hub: routes messages from publishers to subscribers, keeps retained
messages and the registry of sessions. It knows no protocol."""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.hub.commit import Commit, placed
from reactorapp.hub.flow import Caller, Flow
from reactorapp.hub.interfaces import IHub
from reactorapp.hub.topics import RetainedTree, TopicTree, is_broker_topic, validate_filter

log = Logger()


class Traffic:
    """Messages into and out of the hub through one front end, by QoS.

    ``received[qos]`` and ``sent[qos]`` are plain lists so that the hot path
    pays one index increment.
    """

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = [0, 0, 0]
        self.sent = [0, 0, 0]


class HubStats:
    """Plain counters read by $SYS, /metrics and the admin API.

    Front ends bump them directly: an attribute increment is the cheapest
    thing that can be done on the hot path.
    """

    __slots__ = (
        "started_at", "clients_connected", "clients_maximum", "connections",
        "messages_received", "messages_sent",
        "publish_received", "publish_sent", "publish_dropped",
        "bytes_received", "bytes_sent", "traffic",
        "queue_dropped_qos0", "queue_refused", "queue_spilled", "publishers_held",
        "spill_bytes", "inputs_held", "slow_subscribers", "sessions_expired",
        "messages_expired",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.clients_connected = 0
        self.clients_maximum = 0
        #: Clients accepted since start-up (CONNACK 0), for the connection rate.
        self.connections = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.publish_received = 0
        self.publish_sent = 0
        self.publish_dropped = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        # Slow and absent subscribers (see reactorapp/mqtt/backlog.py); the
        # drops are also counted in publish_dropped.
        #: QoS 0 messages dropped from a full session queue, oldest first.
        self.queue_dropped_qos0 = 0
        #: QoS 1/2 messages refused by an offline session with no room left.
        self.queue_refused = 0
        #: QoS 1/2 messages written to a session's spill file on disk.
        self.queue_spilled = 0
        #: Times a publisher's acknowledgement waited for a full session.
        self.publishers_held = 0
        #: Bytes in every session's spill file, not yet read back.
        self.spill_bytes = 0
        # Flow control (see reactorapp/hub/flow.py).
        #: Times an input (a publisher) was held back by a congested subscriber.
        self.inputs_held = 0
        #: Times a subscriber drained nothing for --slow-subscriber-timeout
        #: and was marked slow (its QoS 0 messages dropped from then on).
        self.slow_subscribers = 0
        #: Persistent sessions removed after --session-expiry offline.
        self.sessions_expired = 0
        #: Messages dropped undelivered because their MQTT 5 Message Expiry
        #: Interval passed (queued, spilled, retained or stored).
        self.messages_expired = 0
        #: Front end name ("mqtt", "websocket", "http", "sse", ...) -> Traffic.
        self.traffic: dict[str, Traffic] = {}

    def traffic_for(self, front_end: str) -> Traffic:
        """The counters of one front end, created on first use."""
        traffic = self.traffic.get(front_end)
        if traffic is None:
            traffic = self.traffic[front_end] = Traffic()
        return traffic

    def client_connected(self) -> None:
        self.connections += 1
        self.clients_connected += 1
        if self.clients_connected > self.clients_maximum:
            self.clients_maximum = self.clients_connected

    def client_disconnected(self) -> None:
        self.clients_connected -= 1


@implementer(IHub)
class Hub:
    """Publish/subscribe with MQTT semantics, shared by every front end."""

    def __init__(self, clock, *, max_queued_messages: int = 1000, store=None) -> None:
        self.clock = clock
        self.max_queued_messages = max_queued_messages
        #: The `IStore` keeping retained messages and persistent sessions, or None.
        self.store = store
        self.stats = HubStats(clock.seconds())
        #: The input being routed now, for subscribers that must hold it back.
        self.flow = Flow()
        self._subscriptions = TopicTree()
        self._retained = RetainedTree()
        self._sessions: dict[str, object] = {}

    # -- routing ---------------------------------------------------------

    def publish(self, message):
        """Update the retained store, then deliver to each matching
        subscriber once, at the lower of the published and granted QoS.

        Returns a Deferred when the message was written to the store (for
        the retained store or a persistent session), fired once that write
        is durable; None otherwise (QoS 0 is never waited for to be stored).
        The Deferred also waits for subscribers that took the
        message over their bounds (`ISubscriber.deliver`), and, called by
        someone with no socket the hub could stop reading (HTTP, plugins),
        for congested subscribers to drain (`reactorapp.hub.flow`): a busy
        hub answers later, it does not drop.
        """
        flow = self.flow
        if flow.current is not None:  # an input that is held back by itself
            commit = self.route(message)
            return None if commit is None else commit.deferred()
        caller = flow.current = Caller()
        try:
            commit = self.route(message)
        finally:
            flow.current = None
        drained = caller.drained()
        if drained is None:
            return None if commit is None else commit.deferred()
        return placed(commit, [drained])

    def route(self, message):
        """`publish` for front ends that acknowledge many messages a second:
        return the `Commit` that fires once the message is placed (durable
        where a subscriber or the retained store wrote it, taken by
        subscribers over their bounds), or None if it is placed already.
        A store batch's `Commit` is shared, so waiting for it costs no
        Deferred per message."""
        store = self.store
        commit = None  # what the acknowledgement waits for
        if message.retain:
            if message.payload:
                self._retained.set(message.topic, message)
            else:
                # [MQTT-3.3.1-10] [MQTT-3.3.1-11]: an empty retained payload
                # is delivered as usual but clears the stored message.
                self._retained.remove(message.topic)
            if store is not None and not is_broker_topic(message.topic):
                if message.payload:
                    store.set_retained(message)
                else:
                    store.remove_retained(message.topic)
                if message.qos:  # QoS 0 is never waited for to be stored
                    commit = store.pending_commit()
        published_qos = message.qos
        full = None  # Deferreds of subscribers that took it over their bounds
        for subscriber, granted in self._subscriptions.match(message.topic):
            try:
                wait = subscriber.deliver(
                    message, granted if granted < published_qos else published_qos, False)
            except Exception:
                log.failure("Subscriber {subscriber!r} failed to take a message",
                            subscriber=subscriber)
            else:
                if wait is None or wait is commit:
                    continue
                if isinstance(wait, Commit):
                    if commit is not None:  # another batch (rare): wait for both
                        full = [commit.deferred()] if full is None else [*full, commit.deferred()]
                    commit = wait
                elif full is None:
                    full = [wait]
                else:
                    full.append(wait)
        if full is None:
            return commit
        return Commit.after(placed(commit, full))

    def has_subscribers(self, topic) -> bool:
        """Whether a message on ``topic`` would reach any subscriber now
        (an MQTT 5 PUBACK says so); the topic tree's cached match."""
        return bool(self._subscriptions.match(topic))

    def restore_retained(self, messages) -> None:
        """Put back retained messages read from the store at start-up
        (those that expired meanwhile are removed instead)."""
        now = self.clock.seconds()
        for message in messages:
            if message.expired(now):
                self._expire_retained(message)
            else:
                self._retained.set(message.topic, message)

    def subscribe(self, subscriber, topic_filter, qos):
        validate_filter(topic_filter)
        self._subscriptions.add(topic_filter, subscriber, qos)
        if topic_filter.startswith("$share/"):
            return []  # shared subscriptions get no retained messages
        return self._unexpired(self._retained.match(topic_filter))

    def _unexpired(self, found: list) -> list:
        """Retained messages minus those whose Message Expiry Interval has
        passed, which are removed, here and from the store [MQTT-3.3.2-5]."""
        now = None
        for message in found:
            if message.expires is not None:
                now = self.clock.seconds() if now is None else now
                if message.expired(now):
                    break
        else:
            return found
        kept = []
        for message in found:
            if message.expired(now):
                if self._retained.get(message.topic) is message:
                    self._retained.remove(message.topic)
                    self._expire_retained(message)
            else:
                kept.append(message)
        return kept

    def _expire_retained(self, message) -> None:
        self.stats.messages_expired += 1
        if self.store is not None and not is_broker_topic(message.topic):
            self.store.remove_retained(message.topic)

    def unsubscribe(self, subscriber, topic_filter):
        return self._subscriptions.remove(topic_filter, subscriber)

    def unsubscribe_all(self, subscriber, topic_filters):
        self._subscriptions.remove_all(subscriber, topic_filters)

    def retained(self, topic_filter):
        return self._unexpired(self._retained.match(topic_filter))

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
