"""Contracts between the hub and everything around it. No logic here."""

from zope.interface import Attribute, Interface


class ISubscriber(Interface):
    """Something the hub delivers messages to: an MQTT session, an SSE stream,
    a webhook rule, a user's protocol."""

    def deliver(message, qos, retained):
        """Take ``message`` at the already-reduced ``qos``.

        ``retained`` is true when the message is sent because a subscription
        was just made (the MQTT RETAIN flag on the way out), false for live
        traffic. Must not raise and must not block; called on the hot path.

        Returns None once the message is taken. A subscriber that wrote it
        to storage (a persistent session, an outbox) returns the
        `reactorapp.hub.commit.Commit` that makes the write durable: the
        publisher's acknowledgement waits for it. A subscriber that took it
        but is over its bounds (a slow client whose queue and spill file are
        full) may return a Deferred instead, fired when it has room again
        (and, if it wrote, once that is durable): the acknowledgement waits
        for it too (back-pressure). The hub combines what its subscribers
        return (`IHub.route`).

        A subscriber whose output is congested but draining keeps taking
        messages and holds back the hub's ``flow.current`` input instead
        (see `reactorapp.hub.flow`).
        """


class IHub(Interface):
    """What front ends, sessions and the service may ask of the hub: all of
    it, so that an implementation checked with `verifyObject` serves them."""

    clock = Attribute(
        "The reactor's `IReactorTime` the hub and its sessions keep time with "
        "(keep-alives, expiry, retries): a `Clock` in tests.")
    stats = Attribute(
        "The `reactorapp.hub.hub.HubStats` counters: front ends bump them "
        "directly (one attribute increment on the hot path); $SYS, /metrics "
        "and the admin API read them.")
    store = Attribute(
        "The `reactorapp.store.interfaces.IStore` keeping retained messages "
        "and persistent sessions, or None: sessions write through it.")
    flow = Attribute(
        "The `reactorapp.hub.flow.Flow`: front ends set its ``current`` input "
        "around the calls that publish, so congested subscribers can hold it back.")
    retained_count = Attribute("How many retained messages are stored.")
    subscription_count = Attribute("How many subscriptions there are.")
    session_count = Attribute("How many sessions are registered.")

    def publish(message):
        """Route ``message`` to matching subscribers and update retained state.

        Returns None when the message is fully placed, or a Deferred that
        fires once it is durable wherever it must be delivered later and,
        when ``flow.current`` is None, once the subscribers it congested
        have drained; the publisher's acknowledgement waits for that.
        """

    def route(message):
        """`publish` without a Deferred per message: return None if the
        message is placed, else the `reactorapp.hub.commit.Commit` that
        fires once it is (durable where it was written, taken by subscribers
        over their bounds). The acknowledgement waits for it; messages
        written in one store batch share one `Commit`.
        """

    def has_subscribers(topic):
        """Whether a message on ``topic`` would reach any subscriber now."""

    def subscribe(subscriber, topic_filter, qos):
        """Add or replace ``subscriber``'s subscription to ``topic_filter``.

        Returns the retained messages the filter matches, so the caller can
        send them after its own acknowledgement.
        """

    def unsubscribe(subscriber, topic_filter):
        """Remove one subscription; return whether it existed."""

    def unsubscribe_all(subscriber, topic_filters):
        """Remove each of ``subscriber``'s subscriptions to ``topic_filters``
        (a session or stream that ends)."""

    def hand_over(share_filter, message, leaving, connected_only=False):
        """Give a message of the shared subscription ``share_filter`` that
        the member ``leaving`` did not acknowledge to another member of the
        group (with ``connected_only``, only to one that is connected);
        return whether one took it (reactorapp/hub/shared.py)."""

    def member_back(member, topic_filters):
        """``member`` is connected again: the offline members of its shared
        subscriptions among ``topic_filters`` give what they hold to the
        connected members."""

    def shared_groups():
        """Every shared subscription's `reactorapp.hub.shared.ShareGroup`."""

    def shared_group(share_filter):
        """The `ShareGroup` of ``$share/GROUP/FILTER``, or None when it has no members."""

    def retained(topic_filter):
        """Return the retained messages that ``topic_filter`` matches."""

    def restore_retained(messages):
        """Put back retained messages read from the store at start-up."""

    def sessions():
        """Return the mapping of client id to session object."""

    def get_session(client_id):
        """Return the session registered for ``client_id``, or None."""

    def add_session(client_id, session):
        """Register ``session`` for ``client_id`` (replacing any other)."""

    def claim(client_id):
        """A connection is taking ``client_id`` (after CONNECT is accepted):
        a connection with that id elsewhere (on another node) must close."""

    def remove_session(client_id, session=None):
        """Forget ``client_id``'s session; with ``session`` given, only if it
        is still the registered one (a newer connection may have replaced it)."""


class ISessionLoader(Interface):
    """A store shared with other processes (the Redis store of a cluster):
    a persistent session may have been made or changed elsewhere, so it is
    read when its client connects, not only at start-up. Stores of one
    process (SQLite, memory) do not provide it."""

    def load_session(client_id):
        """Read the stored session of ``client_id`` and hold it from now on
        (the process that held it can no longer write to it): a Deferred
        firing with a `reactorapp.store.interfaces.StoredSession`, or None
        when there is none."""

    def forget_session(client_id):
        """Remove the stored session of ``client_id`` wherever it is held
        (its client connected with a clean session); only recorded, like
        the writes of `reactorapp.store.interfaces.IStore`."""
