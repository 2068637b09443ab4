"""Persistent sessions whose clients never come back (``--session-expiry``).

MQTT 3.1.1 keeps a Clean Session 0 session for ever; a device that was
replaced or renamed leaves its subscriptions behind, and messages pile up for
it. Like Mosquitto's ``persistent_client_expiration``, a session whose
client has been away longer than the expiry is removed, from memory and from
the store. Off (0) by default.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.logger import Logger

log = Logger()

#: Seconds between two looks for expired sessions, at most.
CHECK_INTERVAL = 60.0


def expire_sessions(hub, expiry: float) -> list[str]:
    """Remove the persistent sessions offline for ``expiry`` seconds or more;
    return their client ids."""
    deadline = hub.clock.seconds() - expiry
    expired = [
        session for session in hub.sessions().values()
        if session.connection is None and session.detached_at is not None
        and session.detached_at <= deadline
    ]
    for session in expired:
        session.discard()
        hub.stats.sessions_expired += 1
        log.info("Session {client_id} expired: its client has been away {expiry:g} s or more",
                 client_id=session.client_id, expiry=expiry)
    return [session.client_id for session in expired]


class SessionExpiry(TimerService):
    """Looks for expired sessions every ``min(expiry, 60)`` seconds, on the
    hub's clock."""

    def __init__(self, hub, expiry: float) -> None:
        super().__init__(min(expiry, CHECK_INTERVAL), expire_sessions, hub, expiry)
        self.clock = hub.clock
