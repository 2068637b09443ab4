"""Authentication, ACLs and limits on MQTT connections, driven in memory.

Each test names the specification statements it covers."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from reactorapp.auth.acl import ACL, ACLAuthorizer
from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import IAuthenticator, Identity
from reactorapp.auth.limits import ConnectionLimiter
from reactorapp.auth.passwd import PasswordFile, PasswordFileAuthenticator, set_password
from reactorapp.mqtt import packets as P
from tests.mqtt_harness import Broker

CHEAP = {"n": 2 ** 4}


def guarded(guard: Guard, **settings) -> Broker:
    broker = Broker(**settings)
    broker.factory.guard = guard
    return broker


@pytest.fixture
def passwords(tmp_path):
    path = str(tmp_path / "passwd")
    set_password(path, "alice", b"wonderland", **CHEAP)
    set_password(path, "bob", b"builder", **CHEAP)
    return PasswordFile(path)


@pytest.fixture
def broker(passwords):
    return guarded(Guard(PasswordFileAuthenticator(passwords)))


def refused(client, **connect):
    client.send(P.Connect(**connect))
    (connack,) = client.take()
    assert connack.type == "CONNACK" and connack.session_present is False
    assert client.closed
    return connack.return_code


# -- who may connect ----------------------------------------------------------


def test_right_password(broker):
    """[MQTT-3.1.4-4]"""
    client = broker.connect("c1", username="alice", password=b"wonderland")
    assert client.protocol.identity == Identity("alice", "c1")


def test_wrong_password_gets_connack_4(broker):
    """[§3.1.4] [MQTT-3.2.2-5] [MQTT-3.2.2-4]"""
    code = refused(broker.client(), client_id="c1", username="alice", password=b"nope")
    assert code == P.ConnectReturnCode.BAD_USERNAME_OR_PASSWORD
    assert broker.factory.guard.stats.bad_credentials == 1
    assert broker.hub.stats.clients_connected == 0


def test_unknown_user_gets_connack_4(broker):
    """[§3.1.4]"""
    code = refused(broker.client(), client_id="c1", username="mallory", password=b"x")
    assert code == P.ConnectReturnCode.BAD_USERNAME_OR_PASSWORD


def test_user_without_password_gets_connack_4(broker):
    """[§3.1.4]"""
    assert refused(broker.client(), client_id="c1", username="alice") == 4


def test_anonymous_refused_with_connack_5(broker):
    """[§3.1.4] a password file without --allow-anonymous."""
    assert refused(broker.client(), client_id="c1") == P.ConnectReturnCode.NOT_AUTHORIZED
    assert broker.factory.guard.stats.not_authorized == 1


def test_anonymous_allowed(passwords):
    broker = guarded(Guard(PasswordFileAuthenticator(passwords, allow_anonymous=True)))
    assert broker.connect("c1").protocol.identity == Identity(None, "c1")


def test_refused_client_leaves_no_will_and_no_session(broker):
    """[MQTT-3.1.4-5] [MQTT-3.2.2-5]: a refused CONNECT has no effect."""
    watcher = broker.connect("w", username="bob", password=b"builder")
    watcher.subscribe(("will/#", 0))
    code = refused(broker.client(), client_id="c1", username="alice", password=b"bad",
                   will=P.Will("will/c1", b"gone"))
    assert code == 4
    assert watcher.take() == []
    assert broker.hub.get_session("c1") is None


@implementer(IAuthenticator)
class Later:
    """An authenticator that answers when the test says so."""

    def __init__(self):
        self.pending: list[Deferred] = []

    def authenticate(self, username, password, client_id, peer, certificate):
        d = Deferred()
        self.pending.append(d)
        return d

    def authenticate_token(self, token, peer):
        return succeed(None)


def test_packets_behind_connect_wait_for_the_answer():
    """[§3.1.4] packets sent right after CONNECT are held, reading pauses,
    and they are handled in order once the CONNECT is accepted."""
    later = Later()
    broker = guarded(Guard(later))
    client = broker.client()
    client.send(P.Connect(client_id="c1", username="u", password=b"p"),
                P.Subscribe(1, [P.SubscriptionRequest("t", 1)]),
                P.Publish("t", b"one", 1, packet_id=2),
                P.PingReq())
    assert client.take() == []
    assert client.transport.producerState == "paused"
    later.pending[0].callback(Identity("u", "c1"))
    types = [p.type for p in client.take()]
    assert types == ["CONNACK", "SUBACK", "PUBLISH", "PUBACK", "PINGRESP"]
    assert client.transport.producerState == "producing"


def test_protocol_error_behind_connect_is_handled_after_acceptance():
    """[§3.1.4] [MQTT-4.8.0-1]"""
    later = Later()
    broker = guarded(Guard(later))
    client = broker.client()
    client.send(P.Connect(client_id="c1"), P.PingReq())
    client.send_bytes(b"\x00\x00")  # reserved packet type 0
    assert not client.closed
    later.pending[0].callback(Identity(None, "c1"))
    assert [p.type for p in client.take()] == ["CONNACK", "PINGRESP"]
    assert client.closed


def test_held_packets_are_ignored_after_refusal():
    """[MQTT-3.1.4-5]"""
    later = Later()
    broker = guarded(Guard(later))
    client = broker.client()
    client.send(P.Connect(client_id="c1", username="u", password=b"p"), P.PingReq())
    later.pending[0].callback(None)
    (connack,) = client.take()
    assert connack.return_code == 4 and client.closed


def test_answer_after_the_client_left_is_ignored():
    later = Later()
    broker = guarded(Guard(later))
    client = broker.client()
    client.send(P.Connect(client_id="c1", username="u", password=b"p"))
    client.drop()
    later.pending[0].callback(Identity("u", "c1"))
    assert client.take() == []
    assert broker.hub.get_session("c1") is None
    assert broker.hub.stats.clients_connected == 0


def test_authenticator_failure_is_server_unavailable():
    """[§3.2.2.3] code 3 when the check itself could not be made."""

    @implementer(IAuthenticator)
    class Broken:
        def authenticate(self, *args):
            return fail(RuntimeError("directory down"))

        def authenticate_token(self, token, peer):
            return succeed(None)

    broker = guarded(Guard(Broken()))
    assert refused(broker.client(), client_id="c1") == P.ConnectReturnCode.SERVER_UNAVAILABLE


def test_authentication_has_a_time_limit():
    """Every wait has a bound: no answer within the CONNECT timeout is code 3."""
    broker = guarded(Guard(Later()), connect_timeout=5)
    client = broker.client()
    client.send(P.Connect(client_id="c1"))
    client.advance(5)
    (connack,) = client.take()
    assert connack.return_code == P.ConnectReturnCode.SERVER_UNAVAILABLE
    assert client.closed


# -- what they may touch ------------------------------------------------------

ACL_TEXT = """
topic read public/#
user alice
topic readwrite home/#
topic deny home/secret/#
pattern write clients/%c/#
"""


@pytest.fixture
def acl_broker(passwords):
    return guarded(Guard(PasswordFileAuthenticator(passwords, allow_anonymous=True),
                         ACLAuthorizer(ACL.parse(ACL_TEXT))))


def alice(broker, client_id="a1"):
    return broker.connect(client_id, username="alice", password=b"wonderland")


def test_denied_subscribe_gets_0x80(acl_broker):
    """[MQTT-3.9.3-2] failure code 0x80 for a filter the ACL forbids; the
    others in the same SUBSCRIBE are granted, in order [MQTT-3.9.3-1]."""
    client = alice(acl_broker)
    codes, _ = client.subscribe(("home/#", 1), ("#", 0), ("home/secret/x", 0), ("public/+", 2))
    assert codes == [1, 0x80, 0x80, 0x80]
    assert acl_broker.factory.guard.stats.subscribe_denied == 3


def test_denied_publish_is_acknowledged_and_dropped(acl_broker):
    """A PUBLISH the ACL forbids is acknowledged [MQTT-4.3.2-2] and goes nowhere."""
    reader = alice(acl_broker, "reader")
    reader.subscribe(("home/#", 1))
    anon = acl_broker.connect("anon")
    pid = anon.publish("home/door", b"open", qos=1)
    assert [(p.type, p.packet_id) for p in anon.take()] == [("PUBACK", pid)]
    assert reader.take() == []
    assert acl_broker.factory.guard.stats.publish_denied == 1


def test_allowed_publish_goes_through(acl_broker):
    reader = alice(acl_broker, "reader")
    reader.subscribe(("home/#", 0))
    alice(acl_broker).publish("home/door", b"open")
    assert [p.payload for p in reader.take()] == [b"open"]


def test_pattern_rule_with_client_id(acl_broker):
    reader = alice(acl_broker, "reader")
    reader.subscribe(("home/#", 0))
    writer = acl_broker.connect("dev7")
    writer.publish("clients/dev7/temp", b"20")
    writer.publish("clients/dev8/temp", b"21")
    assert acl_broker.factory.guard.stats.publish_denied == 1


def test_denied_reads_are_never_delivered(acl_broker):
    """Subscribed to home/#, alice still never sees home/secret/..."""
    reader = alice(acl_broker, "reader")
    reader.subscribe(("home/#", 2))
    acl_broker.hub.publish(_message("home/secret/code", b"1234"))
    acl_broker.hub.publish(_message("home/light", b"on"))
    assert [p.topic for p in reader.take()] == ["home/light"]
    assert acl_broker.factory.guard.stats.deliveries_denied == 1


def test_denied_retained_messages_are_never_delivered(acl_broker):
    acl_broker.hub.publish(_message("home/secret/code", b"1234", retain=True))
    acl_broker.hub.publish(_message("home/light", b"on", retain=True))
    reader = alice(acl_broker, "reader")
    _, retained = reader.subscribe(("home/#", 0))
    assert [(p.topic, p.retain) for p in retained] == [("home/light", True)]


def test_will_to_a_forbidden_topic_is_refused(acl_broker):
    code = refused(acl_broker.client(), client_id="anon", will=P.Will("home/x", b"bye"))
    assert code == P.ConnectReturnCode.NOT_AUTHORIZED


def test_no_acl_means_no_checks(broker):
    client = broker.connect("c1", username="alice", password=b"wonderland")
    assert client.protocol.authorizer is None and client.protocol.session.may_read is None


def test_a_session_belongs_to_its_user(acl_broker, passwords):
    """Another user reusing a persistent client id does not inherit the
    session's subscriptions or queued messages."""
    first = alice(acl_broker, "shared")
    first.send(P.Disconnect())
    acl_broker.connect("shared", clean=False)  # anonymous, clean session 0
    session = acl_broker.hub.get_session("shared")
    session.queue.append((_message("public/a", b"x", qos=1), 1, False, 0))
    client = acl_broker.client()
    client.send(P.Connect(client_id="shared", clean_session=False,
                          username="alice", password=b"wonderland"))
    connack = client.take()[0]
    assert connack.return_code == 0 and connack.session_present is False
    assert acl_broker.hub.get_session("shared") is not session


def _message(topic, payload, qos=0, retain=False):
    from reactorapp.hub.message import Message

    return Message(topic, payload, qos, retain)


# -- limits -------------------------------------------------------------------


def test_connect_must_arrive_in_time():
    """Slowloris: no CONNECT within --connect-timeout closes the connection."""
    broker = guarded(Guard(), connect_timeout=10)
    idle = broker.client()
    idle.send_bytes(b"\x10")  # the first byte of a CONNECT, then nothing
    idle.advance(9.9)
    assert not idle.closed
    idle.advance(0.1)
    assert idle.closed and idle.take() == []
    assert broker.factory.guard.stats.connect_timeouts == 1


def test_connect_in_time_cancels_the_timer():
    broker = guarded(Guard(), connect_timeout=10)
    client = broker.connect("c1")
    client.advance(3600)
    assert not client.closed
    assert not broker.clock.getDelayedCalls()


def test_too_many_connections_in_total():
    broker = guarded(Guard(limiter=ConnectionLimiter(max_total=2)))
    a, b = broker.connect("a"), broker.connect("b")
    c = broker.client()
    assert c.closed and c.transport.disconnected  # aborted at once
    assert broker.factory.guard.stats.connections_refused == 1
    a.drop()
    assert not broker.client().closed
    assert not b.closed


def test_too_many_connections_from_one_address():
    broker = guarded(Guard(limiter=ConnectionLimiter(max_per_address=1)))
    first = broker.connect("a")
    assert broker.client().closed
    elsewhere = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 1234))
    broker.factory.buildProtocol(None).makeConnection(elsewhere)
    assert not elsewhere.disconnecting
    limiter = broker.factory.guard.limiter
    assert limiter.by_address == {"192.168.1.1": 1, "10.0.0.2": 1}
    first.drop()
    assert limiter.by_address == {"10.0.0.2": 1} and not broker.client().closed


def test_max_subscriptions():
    broker = guarded(Guard(), max_subscriptions=2)
    client = broker.connect("c1")
    codes, _ = client.subscribe(("a", 0), ("b", 0), ("c", 0), ("a", 1))
    assert codes == [0, 0, 0x80, 1]
    assert broker.factory.guard.stats.subscriptions_over_limit == 1


def test_publish_rate_limit_pauses_reading():
    """Over --publish-rate the client is not read from for a while: nothing
    is dropped, and keep-alive does not count the pause against it."""
    broker = guarded(Guard(), publish_rate=10, publish_burst=5)
    client = broker.connect("c1", keep_alive=1)
    for _ in range(5):
        client.publish("t", b"x")
    assert client.transport.producerState == "producing"
    client.publish("t", b"x")
    assert client.transport.producerState == "paused"
    assert broker.factory.guard.stats.publish_throttled == 1
    client.advance(0.1)
    assert client.transport.producerState == "producing"
    assert not client.closed
