"""The extension API: everything a protocol needs from the hub, and no more.

A protocol gets one `HubClient` per connection and uses only this: publish,
subscribe (a `Subscription` it can cancel), look up retained messages, and
know who the connection is. Every call answers with a Deferred, so the hub
behind it may later store or forward messages elsewhere without changing
the protocols written against it. Names here stay stable; the rest of the
package may move.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import Identity, NotAuthorized
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.message import Message
from reactorapp.hub.topics import InvalidTopic, validate_filter, validate_publish_topic

__all__ = [
    "HubClient", "Subscription", "Forbidden", "TooManySubscriptions", "ClientClosed",
    "InvalidTopic", "NotAuthorized", "Identity", "Message",
]

#: Seconds an authenticator may take to answer.
AUTHENTICATION_TIMEOUT = 60.0


class Forbidden(Exception):
    """The connection's identity may not publish or subscribe there."""


class TooManySubscriptions(Forbidden):
    """The connection holds as many subscriptions as the hub allows one
    connection (``--max-subscriptions``, as for MQTT)."""


class ClientClosed(Exception):
    """The connection is gone; it can no longer subscribe."""


@implementer(ISubscriber)
class Subscription:
    """One filter a connection listens to; the hub delivers to it directly.

    ``deliver(message)`` is called for every matching message, on the hot
    path: it must not block. ``retained`` holds the retained messages the
    filter matched when the subscription was made, for the protocol to send
    after its own acknowledgement with `deliverRetained`. Each subscription
    is delivered to on its own, so two overlapping filters see a message
    twice.
    """

    __slots__ = ("topic_filter", "qos", "retained", "_deliver", "_client", "__weakref__")

    def __init__(self, client: HubClient, topic_filter: str, qos: int,
                 deliver: Callable[[Message], object]) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.retained: list[Message] = []
        self._deliver = deliver
        self._client = client

    def __repr__(self) -> str:
        client = self._client.client_id if self._client else None
        return f"<Subscription {self.topic_filter!r} qos={self.qos} of {client!r}>"

    @property
    def active(self) -> bool:
        return self._client is not None

    def deliver(self, message, qos, retained):
        """ISubscriber: hand the message to the protocol's callback."""
        client = self._client
        if client is None or not client._may_read(message.topic):
            return
        if client._paused:
            client._stats.publish_dropped += 1
            return
        self._deliver(message)
        client._count_sent(qos)

    def deliverRetained(self) -> Deferred:
        """Hand ``retained`` to the callback, in order, pausing whenever the
        peer stops reading (none is dropped, and no more than the
        transport's buffer is written ahead of the peer). The Deferred fires
        once all are delivered, or the subscription was cancelled."""
        done = Deferred()
        self._sendRetained(None, 0, done)
        return done

    def _sendRetained(self, _ignored, start: int, done: Deferred) -> None:
        retained = self.retained
        for index in range(start, len(retained)):
            client = self._client
            if client is None:
                break
            if client._paused:
                d = client.whenWritable().addCallback(self._sendRetained, index, done)
                d.addErrback(done.errback)
                return
            self._deliver(retained[index])
            client._count_sent(self.qos)
        done.callback(None)

    def cancel(self) -> None:
        """Stop deliveries; calling it again does nothing."""
        client, self._client = self._client, None
        if client is not None:
            client._forget(self)


class HubClient:
    """One connection's handle on the hub.

    ``client_id`` names the connection (it becomes the ``sender`` of what it
    publishes); ``identity`` says who it is. When the ``guard`` has an
    authenticator (``--passwd`` or a plugin), the connection may do nothing
    until `authenticate` has accepted it; without one, everyone is let in as
    anonymous or as who they say they are. The guard's authorizer, if any,
    checks publishing, subscribing and each delivery against ``identity``.
    """

    def __init__(self, hub, client_id: str, *, identity: Identity | None = None,
                 front_end: str = "plugin", guard: Guard | None = None) -> None:
        self._hub = hub
        self.client_id = client_id
        self.identity = identity if identity is not None else Identity(None, client_id)
        self.guard = guard if guard is not None else Guard()
        self._authorizer = self.guard.authorizer
        #: Whether the connection may use the hub (see `authenticate`).
        self.authenticated = self.guard.authenticator is None
        self._paused = False
        #: Deferreds `whenWritable` handed out, fired when the peer reads again.
        self._writable: list[Deferred] = []
        self._stats = hub.stats
        self._traffic = hub.stats.traffic_for(front_end)
        self._subscriptions: list[Subscription] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"<HubClient {self.client_id!r}>"

    @property
    def clock(self):
        """The hub's clock (an IReactorTime), for timeouts and timestamps."""
        return self._hub.clock

    @property
    def paused(self) -> bool:
        """True while the peer is not reading (the protocol, as its
        transport's producer, says so): live deliveries are then dropped
        and counted instead of piling up in memory."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value
        if not value:
            self._wake()

    def whenWritable(self) -> Deferred:
        """A Deferred that fires once the peer reads again (at once if it
        does), or when the client is closed."""
        if not self._paused or self.closed:
            return succeed(None)
        d = Deferred()
        self._writable.append(d)
        return d

    def _wake(self) -> None:
        waiting, self._writable = self._writable, []
        for d in waiting:
            d.callback(None)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The subscriptions still active, oldest first."""
        return tuple(self._subscriptions)

    def authenticate(self, username: str | None, password: bytes | None, *,
                     peer=None, certificate=None) -> Deferred:
        """Log the connection in; ``username`` None asks to be anonymous.

        Fires with the accepted `Identity`, which becomes ``identity``, or
        with None for a wrong user name or password; fails with
        `NotAuthorized` for a client the authenticator will not let in.
        """
        authenticator = self.guard.authenticator
        if authenticator is None:
            return succeed(self._accepted(Identity(username, self.client_id)))
        d = maybeDeferred(authenticator.authenticate, username, password,
                          self.client_id, peer, certificate)
        d.addTimeout(AUTHENTICATION_TIMEOUT, self.clock)
        return d.addCallbacks(self._accepted, self._refused, errbackArgs=(username,))

    def _accepted(self, identity):
        if identity is None:
            self.guard.stats.bad_credentials += 1
            return None
        self.identity = identity
        self.authenticated = True
        return identity

    def _refused(self, failure, username):
        if failure.check(NotAuthorized) and username is not None:
            self.guard.stats.not_authorized += 1
        return failure

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False) -> Deferred:
        """Publish a message; the Deferred fires (with None) once the hub has
        placed it, or fails with `InvalidTopic`, `Forbidden`, `ValueError`."""
        try:
            message = self._message(topic, payload, qos, retain)
        except Exception:
            return fail()
        self._stats.publish_received += 1
        self._traffic.received[qos] += 1
        placed = self._hub.publish(message)
        return succeed(None) if placed is None else placed.addCallback(_nothing)

    def subscribe(self, topic_filter: str, qos: int,
                  deliver: Callable[[Message], object]) -> Deferred:
        """Start delivering messages that match ``topic_filter`` to
        ``deliver(message)``; the Deferred fires with the `Subscription`."""
        try:
            _check_qos(qos)
            validate_filter(topic_filter)
            if self.closed:
                raise ClientClosed(f"{self.client_id} is closed; it cannot subscribe.")
            self._check_authenticated()
            if self._authorizer is not None and not self._authorizer.can_subscribe(
                    self.identity, topic_filter):
                self.guard.stats.subscribe_denied += 1
                raise Forbidden(f"{self._who()} may not subscribe to {topic_filter!r}.")
            self._check_subscription_limit(topic_filter)
        except Exception:
            return fail()
        subscription = Subscription(self, topic_filter, qos, deliver)
        retained = self._hub.subscribe(subscription, topic_filter, qos)
        subscription.retained = [m for m in retained if self._may_read(m.topic)]
        self._subscriptions.append(subscription)
        return succeed(subscription)

    def retained(self, topic_filter: str) -> Deferred:
        """The retained messages ``topic_filter`` matches, as a Deferred list."""
        try:
            validate_filter(topic_filter)
            self._check_authenticated()
        except (InvalidTopic, Forbidden):
            return fail()
        found = self._hub.retained(topic_filter)
        return succeed([m for m in found if self._may_read(m.topic)])

    def close(self) -> None:
        """Cancel every subscription; the protocol calls it when the
        connection is lost. Publishing afterwards still works (a will)."""
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription.cancel()
        self._wake()

    # -- for Subscription ------------------------------------------------

    def _forget(self, subscription: Subscription) -> None:
        self._hub.unsubscribe(subscription, subscription.topic_filter)
        self._subscriptions.remove(subscription)

    def _count_sent(self, qos: int) -> None:
        self._stats.publish_sent += 1
        self._traffic.sent[qos] += 1

    def _may_read(self, topic: str) -> bool:
        authorizer = self._authorizer
        if authorizer is None or authorizer.can_read(self.identity, topic):
            return True
        self.guard.stats.deliveries_denied += 1
        return False

    # -- checks -----------------------------------------------------------

    def _check_subscription_limit(self, topic_filter: str) -> None:
        """At most ``guard.max_subscriptions``; one more is let in when it
        repeats a filter held, so that a protocol can put the new
        subscription in place before it cancels the old one."""
        limit = self.guard.max_subscriptions
        held = len(self._subscriptions)
        if not limit or held < limit:
            return
        if held == limit and any(s.topic_filter == topic_filter for s in self._subscriptions):
            return
        self.guard.stats.subscriptions_over_limit += 1
        raise TooManySubscriptions(
            f"A connection may hold at most {limit} subscriptions.")

    def _check_authenticated(self) -> None:
        if not self.authenticated:
            raise Forbidden("Log in first: this hub checks who its clients are.")

    def _message(self, topic, payload, qos, retain) -> Message:
        _check_qos(qos)
        self._check_authenticated()
        validate_publish_topic(topic)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        elif isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        elif not isinstance(payload, bytes):
            raise TypeError(f"A payload must be bytes or str, not {type(payload).__name__}.")
        if self._authorizer is not None and not self._authorizer.can_publish(self.identity, topic):
            self.guard.stats.publish_denied += 1
            raise Forbidden(f"{self._who()} may not publish to {topic!r}.")
        return Message(topic, payload, qos, bool(retain), sender=self.client_id)

    def _who(self) -> str:
        return self.identity.username or self.client_id


def _check_qos(qos) -> None:
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise ValueError(f"A QoS must be 0, 1 or 2, not {qos!r}.")


def _nothing(_result) -> None:
    return None
