"""The hub: routes messages from publishers to subscribers, keeps retained
messages and the registry of sessions. It knows no protocol."""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.hub.commit import Commit, placed
from reactorapp.hub.deadlines import Deadlines
from reactorapp.hub.flow import Caller, Flow
from reactorapp.hub.interfaces import IHub
from reactorapp.hub.shared import AWAY, REFUSED, share_state
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
        "messages_expired", "publish_too_large", "shared_deliveries", "shared_handed_over",
        "by_version",
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
        #: Persistent sessions removed after their expiry offline.
        self.sessions_expired = 0
        #: Messages given to one member of a shared subscription.
        self.shared_deliveries = 0
        #: Shared-subscription messages given to another member of their
        #: group because the first one left without acknowledging them.
        self.shared_handed_over = 0
        #: Messages dropped undelivered because their MQTT 5 Message Expiry
        #: Interval passed (queued, spilled, retained or stored).
        self.messages_expired = 0
        #: PUBLISHes not sent to an MQTT 5 client because they were larger
        #: than its Maximum Packet Size (counted as delivered to it).
        self.publish_too_large = 0
        #: Messages given to one member of a shared subscription.
        self.shared_deliveries = 0
        #: Shared-subscription messages given to another member of their
        #: group because the first one left without acknowledging them.
        self.shared_handed_over = 0
        #: Protocol version ("5.0", "3.1.1", "3.1") -> [connected now,
        #: accepted since start-up].
        self.by_version: dict[str, list[int]] = {}
        #: Front end name ("mqtt", "websocket", "http", "sse", ...) -> Traffic.
        self.traffic: dict[str, Traffic] = {}

    def traffic_for(self, front_end: str) -> Traffic:
        """The counters of one front end, created on first use."""
        traffic = self.traffic.get(front_end)
        if traffic is None:
            traffic = self.traffic[front_end] = Traffic()
        return traffic

    def client_connected(self, version: str = "3.1.1") -> None:
        self.connections += 1
        self.clients_connected += 1
        if self.clients_connected > self.clients_maximum:
            self.clients_maximum = self.clients_connected
        counts = self.by_version.get(version)
        if counts is None:
            counts = self.by_version[version] = [0, 0]
        counts[0] += 1
        counts[1] += 1

    def client_disconnected(self, version: str = "3.1.1") -> None:
        self.clients_connected -= 1
        counts = self.by_version.get(version)
        if counts is not None:
            counts[0] -= 1


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
        #: Retained messages with a Message Expiry Interval, removed on time.
        self._deadlines = Deadlines(clock, self._remove_expired, self._is_retained,
                                    self._retained_messages, self._retained.__len__)
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
                if message.expires is not None:
                    self._deadlines.add(message)
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
        plain, groups = self._subscriptions.lookup(message.topic)
        for subscriber, granted in plain:
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
        for group in groups:  # one member each, chosen now (reactorapp/hub/shared.py)
            wait = self._deliver_shared(group, message)
            if wait is not None and wait is not REFUSED and wait is not commit:
                commit, full = _gather(commit, full, wait)
        if full is None:
            return commit
        return Commit.after(placed(commit, full))

    def _deliver_shared(self, group, message, skip=None, connected_only=False):
        """Give ``message`` to one member of ``group``: the first of its
        candidates (`ShareGroup.candidates`) that takes it. Return what that
        member's ``deliver`` returned, or `REFUSED` if nobody took it."""
        qos = message.qos
        first = group.next_ready(qos) if skip is None else None
        if first is not None:
            wait = self._offer(group, first, message, qos)
            if wait is not REFUSED:
                return wait
        for member in group.candidates(qos, skip, connected_only):
            if member is not first:
                wait = self._offer(group, member, message, qos)
                if wait is not REFUSED:
                    return wait
        if group.members and not connected_only:
            self.stats.publish_dropped += 1  # every member refused it
        return REFUSED

    def _offer(self, group, member, message, qos):
        """``member.deliver_shared`` (or ``deliver``) at its granted QoS;
        `REFUSED` if it did not take the message."""
        granted = group.members.get(member, 0)
        take = getattr(member, "deliver_shared", None)
        try:
            if take is None:
                wait = member.deliver(message, granted if granted < qos else qos, False)
            else:
                wait = take(message, granted if granted < qos else qos, group.share_filter)
        except Exception:
            log.failure("Subscriber {subscriber!r} failed to take a message", subscriber=member)
            return REFUSED
        if wait is not REFUSED:
            group.took(member)
            self.stats.shared_deliveries += 1
        return wait

    def hand_over(self, share_filter, message, leaving, connected_only=False) -> bool:
        """Give a shared-subscription ``message`` that the member ``leaving``
        did not acknowledge to another member of its group; with
        ``connected_only``, only to one whose client is connected. Return
        whether one took it (False: the group has ended, or no member
        could take it, and ``leaving`` keeps or drops it)."""
        group = self._subscriptions.group(share_filter)
        if group is None:
            return False
        wait = self._deliver_shared(group, message, leaving, connected_only)
        if wait is REFUSED:
            return False
        group.handed_over += 1
        self.stats.shared_handed_over += 1
        if wait is not None and not isinstance(wait, Commit):
            wait.addErrback(lambda f: log.failure("Handing over a message failed", f))
        return True

    def member_back(self, member, topic_filters) -> None:
        """``member``'s client is connected again: the offline members of
        its shared subscriptions (among ``topic_filters``) give what they
        hold to the connected members (``release_shared``)."""
        for topic_filter in list(topic_filters):
            group = self._subscriptions.group(topic_filter)
            if group is None:
                continue
            for other in list(group.members):
                if other is not member and share_state(other, 1) == AWAY:
                    release = getattr(other, "release_shared", None)
                    if release is not None:
                        release(True)

    def shared_groups(self):
        """Every shared subscription's `reactorapp.hub.shared.ShareGroup`."""
        return self._subscriptions.groups()

    def shared_group(self, share_filter):
        """The `ShareGroup` of ``$share/GROUP/FILTER``, or None when it has no members."""
        return self._subscriptions.group(share_filter)

    def has_subscribers(self, topic) -> bool:
        """Whether a message on ``topic`` would reach any subscriber now
        (an MQTT 5 PUBACK says so); the topic tree's cached lookup (a
        shared subscription has members while it exists)."""
        plain, groups = self._subscriptions.lookup(topic)
        return bool(plain or groups)

    def restore_retained(self, messages) -> None:
        """Put back retained messages read from the store at start-up
        (those that expired meanwhile are removed instead)."""
        now = self.clock.seconds()
        for message in messages:
            if message.expired(now):
                self._expire_retained(message)
            else:
                self._retained.set(message.topic, message)
                if message.expires is not None:
                    self._deadlines.add(message)

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

    def _is_retained(self, message) -> bool:
        return self._retained.get(message.topic) is message

    def _retained_messages(self):
        return (message for _, message in self._retained.items())

    def _remove_expired(self, message) -> None:
        """Its deadline passed (`Deadlines`): gone from the tree and the store."""
        self._retained.remove(message.topic)
        self._expire_retained(message)

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

    def claim(self, client_id, clean: bool = False) -> None:
        """A connection is taking ``client_id`` (``clean``: with a new
        session, so the old one ends). One node has nothing more to do (the
        connect logic takes it from a local connection); a cluster node
        closes it on whichever other node had it."""

    @property
    def session_count(self) -> int:
        return len(self._sessions)


def _gather(commit, full, wait):
    """Add a subscriber's answer to what the acknowledgement waits for:
    (`Commit`, list of Deferreds), as `Hub.route`'s loop does inline."""
    if isinstance(wait, Commit):
        if commit is not None:  # another batch (rare): wait for both
            full = [commit.deferred()] if full is None else [*full, commit.deferred()]
        return wait, full
    return commit, [wait] if full is None else [*full, wait]
