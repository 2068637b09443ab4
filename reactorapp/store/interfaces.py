"""The contract between the hub and where its state is kept. No logic here."""

from __future__ import annotations

from dataclasses import dataclass, field

from zope.interface import Attribute, Interface

from reactorapp.errors import SetupError


class StoreError(SetupError):
    """The store cannot be opened as it is; the message is one sentence.

    A `SetupError`, because the operator has to act (move a file, free the
    data directory, upgrade reactorapp) before the hub can start.
    """


class StoreClosed(Exception):
    """A write that must be durable arrived after the store was closed."""


@dataclass
class StoredMessage:
    """One message waiting in a persistent session, in delivery order.

    ``packet_id`` and ``state`` are set once a QoS 2 message has been sent
    (see the AWAITING_* states in `reactorapp.mqtt.session`); once only its
    PUBREL is owed, ``message`` is not needed any more.
    """

    seq: int
    message: object
    qos: int
    retained: bool
    packet_id: int | None = None
    state: int | None = None
    #: The shared subscription (``$share/GROUP/FILTER``) it was taken for,
    #: so that another member gets it if this one stays away.
    share: str | None = None


@dataclass
class StoredSession:
    """What a persistent session left behind."""

    client_id: str
    subscriptions: dict[str, int] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)
    awaiting_pubrel: set[int] = field(default_factory=set)
    #: MQTT 5 options of the subscriptions that have some: filter ->
    #: (Subscription Options bits without the QoS, Subscription Identifier).
    options: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Seconds it is kept once its client has gone (inf: never), as last
    #: set; None when the store has no record (--session-expiry applies).
    expiry: float | None = None
    #: An MQTT 5 will waiting for its Will Delay Interval: (message, delay
    #: in seconds), or None.
    will: tuple | None = None


@dataclass
class StoredState:
    """Everything a store holds, as read once at start-up."""

    retained: list = field(default_factory=list)
    sessions: list[StoredSession] = field(default_factory=list)


class IStore(Interface):
    """Durable home of retained messages and persistent sessions.

    Every method but `load` is called in the reactor thread and never
    blocks: writes are only recorded, in order. A store commits them later,
    all or nothing and in the order given; `sync` says when. So when a write
    is durable, every write made before it is durable too.
    """

    writes = Attribute("How many writes were accepted so far (for tests and tuning).")

    writable = Attribute(
        "False while writes fail and are being tried again (a full disk): what"
        " waits for the store is not acknowledged meanwhile. /readyz reads it.")

    def load():
        """Open the store and return a `StoredState` of what it holds.

        Called once at start-up, before any client is served; may block.
        Raises `StoreError` when the store cannot be used as it is.
        """

    def set_retained(message):
        """Keep ``message`` as the retained message of its topic."""

    def remove_retained(topic):
        """Forget the retained message of ``topic``."""

    def add_session(client_id):
        """Remember a persistent session (so CONNACK says Session Present)."""

    def remove_session(client_id):
        """Forget a session with its subscriptions, messages and packet ids."""

    def set_session_expiry(client_id, seconds):
        """Record how long a session is kept once its client has gone
        (MQTT 5's Session Expiry Interval, at most --session-expiry; inf:
        never), so that a restart keeps it too."""

    def set_will(client_id, message, delay):
        """Keep the will ``message`` of a session's last connection, waiting
        ``delay`` seconds (MQTT 5's Will Delay Interval) for its client to
        come back; ``message`` None: no will waits any more."""

    def add_subscription(client_id, topic_filter, qos, options=0, identifier=0):
        """Add or replace one subscription of a session; an MQTT 5 one may
        have ``options`` (the Subscription Options byte without its QoS
        bits: No Local, Retain As Published, Retain Handling) and a
        Subscription ``identifier`` (0: none). Sessions pass them only when
        they are not 0."""

    def remove_subscription(client_id, topic_filter):
        """Remove one subscription of a session."""

    def enqueue(client_id, seq, message, qos, retained, share=None):
        """Keep ``message`` for a session under its sequence number ``seq``;
        ``share``: the shared subscription (``$share/GROUP/FILTER``) it was
        taken for, so that another member can have it after a restart.

        A message queued for several sessions in one reactor turn may be
        stored once.
        """

    def set_inflight(client_id, seq, packet_id, state):
        """Record the packet id and QoS 2 state of a message being sent."""

    def dequeue(client_id, seq):
        """Forget a message the session no longer owes its client."""

    def add_awaiting_pubrel(client_id, packet_id):
        """Remember an incoming QoS 2 packet id answered with PUBREC."""

    def remove_awaiting_pubrel(client_id, packet_id):
        """Forget an incoming QoS 2 packet id once PUBREL arrived."""

    def pending_commit():
        """Return None if every write so far is durable, else the
        `reactorapp.hub.commit.Commit` that makes them durable (or fails).

        Everybody who writes during one batch gets the same `Commit`, so a
        connection can wait once per batch instead of once per message.
        """

    def sync():
        """Return None if every write so far is durable, else a Deferred
        that fires (in the reactor thread) once it is, or fails if it cannot
        be made durable: `pending_commit` for callers that chain."""

    def close():
        """Make the writes so far durable and release the store; a Deferred.
        Later writes are not kept, and `sync` fails with `StoreClosed`."""
