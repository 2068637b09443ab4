"""MQTT 5 enhanced authentication through the authenticator interface: AUTH
between CONNECT and CONNACK, re-authentication while connected, and the
refusals. Statement ids are the MQTT 5.0 specification's [§4.12]."""

from __future__ import annotations

import hashlib

from twisted.internet.defer import succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import (
    Authenticated, Challenge, IAuthenticator, Identity, IEnhancedAuthenticator, NotAuthorized,
)
from reactorapp.mqtt import packets as P
from tests.conn5_harness import Broker5

R = P.ReasonCode
METHOD = "X-NONCE"


@implementer(IAuthenticator, IEnhancedAuthenticator)
class NonceAuthenticator:
    """A challenge and response: the client proves it knows the user's
    secret by hashing a nonce with it."""

    auth_methods = frozenset({METHOD})
    secrets = {"alice": b"s3cret"}

    def authenticate(self, username, password, client_id, peer, certificate):
        return succeed(None)

    def authenticate_token(self, token, peer):
        return succeed(None)

    def start_authentication(self, method, data, username, client_id, peer, certificate):
        if username not in self.secrets:
            raise NotAuthorized(f"no such user {username!r}")
        nonce = b"nonce-" + client_id.encode()

        def check(answer):
            if answer != hashlib.sha256(nonce + self.secrets[username]).digest():
                return None
            return Authenticated(Identity(username, client_id), b"welcome")

        return Challenge(nonce, check)


def answer(nonce: bytes, secret: bytes = b"s3cret") -> bytes:
    return hashlib.sha256(nonce + secret).digest()


def auth(code: int, data: bytes | None = None, method: str = METHOD) -> P.Auth:
    properties = {"authentication_method": method}
    if data is not None:
        properties["authentication_data"] = data
    return P.Auth(code, properties)


def start(broker, client_id="dev"):
    client = broker.client()
    client.send(P.Connect(client_id=client_id, username="alice", protocol_level=5,
                          properties={"authentication_method": METHOD}))
    (challenge,) = client.take()
    return client, challenge


def broker() -> Broker5:
    authenticator = NonceAuthenticator()
    assert verifyObject(IEnhancedAuthenticator, authenticator)
    return Broker5(guard=Guard(authenticator))


def test_an_exchange_of_auth_packets_ends_in_connack():
    """[MQTT-4.12.0-2] [MQTT-4.12.0-5]: AUTH 0x18 with the method, the
    client's AUTH 0x18, then CONNACK 0x00 carrying the method and the
    server's last data."""
    client, challenge = start(broker())
    assert type(challenge) is P.Auth and challenge.reason_code == R.CONTINUE_AUTHENTICATION
    assert challenge.properties == {"authentication_method": METHOD,
                                    "authentication_data": b"nonce-dev"}
    client.send(auth(R.CONTINUE_AUTHENTICATION, answer(b"nonce-dev")))
    (connack,) = client.take()
    assert connack.return_code == 0
    assert connack.properties["authentication_method"] == METHOD
    assert connack.properties["authentication_data"] == b"welcome"
    assert client.protocol.identity == Identity("alice", "dev")


def test_a_wrong_answer_is_refused():
    """[MQTT-4.12.0-4]"""
    client, _ = start(broker())
    client.send(auth(R.CONTINUE_AUTHENTICATION, b"guess"))
    (connack,) = client.take()
    assert connack.return_code == R.BAD_USER_NAME_OR_PASSWORD
    assert client.closed


def test_an_unknown_user_is_not_authorized():
    client = broker().client()
    client.send(P.Connect(client_id="x", username="mallory", protocol_level=5,
                          properties={"authentication_method": METHOD}))
    (connack,) = client.take()
    assert connack.return_code == R.NOT_AUTHORIZED


def test_only_auth_or_disconnect_before_connack():
    """[MQTT-3.1.2-30]: anything else during the exchange is a Protocol Error."""
    client, _ = start(broker())
    client.send(P.PingReq())
    (connack,) = client.take()
    assert connack.return_code == R.PROTOCOL_ERROR
    assert client.closed


def test_an_auth_with_another_method_is_a_protocol_error():
    """[MQTT-4.12.0-5]"""
    client, _ = start(broker())
    client.send(auth(R.CONTINUE_AUTHENTICATION, b"x", method="OTHER"))
    (connack,) = client.take()
    assert connack.return_code == R.PROTOCOL_ERROR


def test_a_client_that_never_answers_is_closed():
    b = broker()
    client, _ = start(b)
    client.advance(10)
    assert client.closed


def test_the_connect_method_must_be_known():
    """[MQTT-4.12.0-1]"""
    client = broker().client()
    client.send(P.Connect(client_id="x", username="alice", protocol_level=5,
                          properties={"authentication_method": "SCRAM-SHA-256"}))
    (connack,) = client.take()
    assert connack.return_code == R.BAD_AUTHENTICATION_METHOD


def connected(b):
    client, _ = start(b)
    client.send(auth(R.CONTINUE_AUTHENTICATION, answer(b"nonce-dev")))
    client.take()
    return client


def test_re_authentication_while_connected():
    """[MQTT-4.12.1-1]: AUTH 0x19, AUTH 0x18 both ways, AUTH 0x00; the
    connection carries on meanwhile."""
    client = connected(broker())
    client.send(auth(R.RE_AUTHENTICATE))
    (challenge,) = client.take()
    assert (challenge.reason_code, challenge.properties["authentication_data"]) == (
        R.CONTINUE_AUTHENTICATION, b"nonce-dev")
    client.send(P.PingReq())
    assert [type(p) for p in client.take()] == [P.PingResp]
    client.send(auth(R.CONTINUE_AUTHENTICATION, answer(b"nonce-dev")))
    (done,) = client.take()
    assert (done.reason_code, done.properties) == (
        R.SUCCESS, {"authentication_method": METHOD, "authentication_data": b"welcome"})
    assert not client.closed


def test_a_failed_re_authentication_disconnects():
    """[MQTT-4.12.1-2]"""
    client = connected(broker())
    client.send(auth(R.RE_AUTHENTICATE))
    client.take()
    client.send(auth(R.CONTINUE_AUTHENTICATION, b"wrong"))
    (disconnect,) = client.take()
    assert (type(disconnect), disconnect.reason_code) == (P.Disconnect, R.NOT_AUTHORIZED)
    assert client.closed


def test_auth_without_a_method_in_connect_is_a_protocol_error():
    """[MQTT-4.12.0-6] [MQTT-4.12.0-7]: and the server sends no AUTH either."""
    client = Broker5().connect("plain")
    assert "authentication_method" not in client.connack.properties
    client.send(auth(R.RE_AUTHENTICATE))
    (disconnect,) = client.take()
    assert disconnect.reason_code == R.PROTOCOL_ERROR
    assert client.closed
