"""The one object front ends consult about who may connect and what they may
do, and where refusals are counted."""

from __future__ import annotations

from reactorapp.addresses import address_key
from reactorapp.auth.limits import ConnectionLimiter


class GuardStats:
    """Refusals and limits hit, read by /metrics (plain counters, like `HubStats`)."""

    __slots__ = (
        "connections_refused", "connect_timeouts", "bad_credentials", "not_authorized",
        "publish_denied", "subscribe_denied", "deliveries_denied",
        "subscriptions_over_limit", "publish_throttled", "logins_busy",
    )

    def __init__(self) -> None:
        #: Connections closed at once: too many in total or from one address.
        self.connections_refused = 0
        #: Connections closed because CONNECT did not arrive in time.
        self.connect_timeouts = 0
        #: CONNACK 4: wrong user name, password or certificate.
        self.bad_credentials = 0
        #: CONNACK 5: anonymous when not allowed, or refused by the authenticator.
        self.not_authorized = 0
        #: PUBLISHes acknowledged and dropped because the ACL forbids the topic.
        self.publish_denied = 0
        #: SUBSCRIBE filters answered 0x80 because the ACL forbids them.
        self.subscribe_denied = 0
        #: Messages not delivered because the ACL forbids reading the topic.
        self.deliveries_denied = 0
        #: Subscriptions refused because of --max-subscriptions (MQTT: 0x80).
        self.subscriptions_over_limit = 0
        #: Times a client was paused for publishing faster than --publish-rate.
        self.publish_throttled = 0
        #: HTTP Basic log-ins answered 503 because MAX_BASIC_CHECKS were being checked.
        self.logins_busy = 0


class Guard:
    """Authentication, authorisation and connection limits, shared by every
    listener. The defaults let everyone in and check nothing, at no cost."""

    def __init__(self, authenticator=None, authorizer=None, limiter=None,
                 max_subscriptions: int = 1000) -> None:
        #: `IAuthenticator`, or None to accept every client as it says it is.
        self.authenticator = authenticator
        #: `IAuthorizer`, or None when there is no ACL.
        self.authorizer = authorizer
        self.limiter = limiter if limiter is not None else ConnectionLimiter()
        #: Subscriptions one protocol-plugin connection may hold (0: no
        #: limit); MQTT has its own setting from the same option.
        self.max_subscriptions = max_subscriptions
        self.stats = GuardStats()

    def admit(self, peer) -> str | None:
        """Admit a connection from ``peer`` (an `IAddress`) under the
        connection limits: return the key to `release` when it ends, or None
        (refused, counted): close it at once."""
        key = address_key(peer)
        if self.limiter.admit(key):
            return key
        self.stats.connections_refused += 1
        return None

    def release(self, key: str) -> None:
        """A connection `admit` let in has ended."""
        self.limiter.release(key)

    def read_filter(self, identity):
        """A ``may_read(topic) -> bool`` for one client that counts what it
        hides, or None when there is no ACL (nothing to check)."""
        authorizer = self.authorizer
        if authorizer is None:
            return None
        can_read = authorizer.can_read
        stats = self.stats

        def may_read(topic):
            if can_read(identity, topic):
                return True
            stats.deliveries_denied += 1
            return False

        return may_read
