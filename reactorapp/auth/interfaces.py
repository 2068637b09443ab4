"""Contracts for authentication and authorisation. No logic here.

The file-based implementations live next to this module; a plugin replaces
them by providing these interfaces (see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zope.interface import Attribute, Interface


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


class UseAnotherServer(Exception):
    """Raised (or failed with) by an authenticator that sends the client
    elsewhere: MQTT 5 clients get CONNACK 0x9C "use another server" (0x9D
    "server moved" when ``permanent``) with ``reference`` as the Server
    Reference [§4.11]; 3.1.1 clients get CONNACK 3."""

    def __init__(self, reference: str, permanent: bool = False) -> None:
        super().__init__(reference)
        self.reference = reference
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Challenge:
    """One more round of an enhanced authentication (MQTT 5): ``data`` goes
    to the client in an AUTH packet, and the client's answer (bytes or None)
    is handed to ``next``, which returns what `start_authentication` does."""

    data: bytes | None
    next: Callable[[bytes | None], object]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The end of an enhanced authentication: the client is ``identity``,
    and ``data`` (the server's last word, or None) goes with the CONNACK."""

    identity: Identity
    data: bytes | None = None


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


class IEnhancedAuthenticator(Interface):
    """Optional, beside `IAuthenticator`: MQTT 5 enhanced authentication
    (challenge and response: SCRAM, Kerberos, a signed nonce...) [§4.12].

    A CONNECT with an Authentication Method the authenticator does not list
    in ``auth_methods`` is refused with CONNACK 0x8C; one it lists starts an
    exchange of AUTH packets through `start_authentication`. The same call
    serves re-authentication of a connected client (AUTH 0x19).
    """

    auth_methods = Attribute("The Authentication Method names spoken (a collection of str).")

    def start_authentication(method, data, username, client_id, peer, certificate):
        """Begin an exchange: ``method`` is the Authentication Method,
        ``data`` the client's Authentication Data (bytes or None), the rest
        as for `IAuthenticator.authenticate`.

        Return (or a Deferred of) an `Identity` or `Authenticated` (accept),
        a `Challenge` (ask the client for more), or None (wrong credentials:
        0x86); fail with `NotAuthorized` (0x87) or `UseAnotherServer`.
        """


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
