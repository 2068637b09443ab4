"""A hostile or broken peer before and during CONNECT, driven in memory
(StringTransport + Clock): refused early, answered, logged once."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import IAuthenticator, IAuthorizer, Identity
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import MAX_CONNECT_SIZE
from tests.mqtt_harness import Broker


def test_a_publish_header_before_connect_closes_at_its_first_byte():
    """[MQTT-3.1.0-1] A PUBLISH announcing 200 MB is not buffered: the
    connection is closed, without CONNACK, on the first byte."""
    broker = Broker()
    client = broker.client()
    client.send_bytes(b"\x30")
    assert client.closed
    assert client.take() == []
    client.send_bytes(b"\x80\xda\xc4\x5f" + b"x" * 65536)
    assert client.protocol._parser.buffered == 0
    assert broker.hub.stats.clients_connected == 0


def test_a_large_connect_is_refused_from_its_header():
    """CONNECT is bounded, whatever --max-packet-size says."""
    broker = Broker()
    client = broker.client()
    size = MAX_CONNECT_SIZE + 1
    length = bytearray()
    while True:  # Remaining Length of size - 4 (a 4-byte header)
        n = size - 4 if not length else n >> 7
        length.append(n & 0x7F | (0x80 if n >> 7 else 0))
        if not n >> 7:
            break
    client.send_bytes(b"\x10" + bytes(length))
    assert client.closed
    assert client.protocol._parser.buffered == 0


def test_after_connect_the_packet_limit_is_max_packet_size():
    broker = Broker()
    sub = broker.connect("sub")
    sub.subscribe(("t", 0))
    pub = broker.connect("pub")
    pub.publish("t", b"x" * (2 * MAX_CONNECT_SIZE))
    assert not pub.closed
    (message,) = sub.take()
    assert len(message.payload) == 2 * MAX_CONNECT_SIZE


@implementer(IAuthenticator)
class Anyone:
    def authenticate(self, username, password, client_id, peer, certificate):
        return succeed(Identity(username, client_id))

    def authenticate_token(self, token, peer):
        return succeed(None)


@implementer(IAuthorizer)
class Raising:
    """A plugin authorizer with a bug."""

    def can_publish(self, identity, topic):
        raise KeyError(topic)

    def can_read(self, identity, topic):
        return True

    def can_subscribe(self, identity, topic_filter):
        return True


def failures_logged(events):
    return [e for e in events if e.get("log_failure") is not None]


def _connect_with_a_raising_authorizer(authenticator):
    broker = Broker()
    broker.factory.guard = Guard(authenticator, Raising())
    client = broker.client()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        client.send(P.Connect(client_id="c", will=P.Will("w", b"gone", 0, False)))
    finally:
        globalLogPublisher.removeObserver(events.append)
    return broker, client, events


def test_accepting_that_raises_is_answered_and_logged_once():
    """An exception while accepting (here a plugin authorizer's) gets
    CONNACK 3 and a close, and one logged failure: no connection left
    waiting in AUTHENTICATING without a timer."""
    broker, client, events = _connect_with_a_raising_authorizer(Anyone())
    (connack,) = client.take()
    assert connack.return_code == P.ConnectReturnCode.SERVER_UNAVAILABLE
    assert client.closed
    assert len(failures_logged(events)) == 1
    assert broker.clock.getDelayedCalls() == []
    assert broker.hub.stats.clients_connected == 0


def test_accepting_that_raises_without_an_authenticator_is_answered_too():
    broker, client, events = _connect_with_a_raising_authorizer(None)
    (connack,) = client.take()
    assert connack.return_code == P.ConnectReturnCode.SERVER_UNAVAILABLE
    assert client.closed
    assert len(failures_logged(events)) == 1
