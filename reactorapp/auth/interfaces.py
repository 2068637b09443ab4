"""Contracts for authentication and authorisation. No logic here.

The file-based implementations live next to this module; a plugin replaces
them by providing these interfaces (see docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Interface


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is, once authenticated.

    ``username`` is None for an anonymous client. ``client_id`` is the MQTT
    client id ("" where there is none, as over HTTP); ACL patterns use it.
    """

    username: str | None
    client_id: str = ""

    @property
    def anonymous(self) -> bool:
        return self.username is None


class NotAuthorized(Exception):
    """The credentials may be right, but this client may not connect
    (MQTT CONNACK 5, HTTP 403)."""


class IAuthenticator(Interface):
    """Decides who a connecting client is."""

    def authenticate(username, password, client_id, peer, certificate):
        """Check one client's credentials.

        ``username`` is a str or None, ``password`` bytes or None,
        ``client_id`` a str, ``peer`` the transport's peer address and
        ``certificate`` the client's verified TLS certificate (a
        ``cryptography`` ``x509.Certificate``) or None.

        Return a Deferred (or a plain value) that gives the `Identity` to
        accept, or None when the user name or password is wrong (CONNACK 4);
        fail with `NotAuthorized` to refuse a client that is known but not
        allowed in (CONNACK 5). Any other failure is logged and answered as
        "server unavailable" (CONNACK 3).
        """

    def authenticate_token(token, peer):
        """Check a bearer token (HTTP API): the `Identity`, or None."""


class IAuthorizer(Interface):
    """Decides what an authenticated identity may do.

    Plain booleans: these are called on the message path and must be cheap
    and must not block.
    """

    def can_publish(identity, topic):
        """May ``identity`` publish to the topic name ``topic``?"""

    def can_subscribe(identity, topic_filter):
        """May ``identity`` subscribe to ``topic_filter``? Messages are still
        checked one by one with `can_read` when delivered."""

    def can_read(identity, topic):
        """May ``identity`` receive a message published to ``topic``?"""
