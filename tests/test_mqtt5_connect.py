"""MQTT 5 at the connection level, driven in memory (StringTransport +
Clock): CONNECT and CONNACK, refusals, the server's DISCONNECT reasons,
flow control both ways, Server Keep Alive. Statement ids are the MQTT 5.0
specification's (docs/mqtt-5-server.md)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import IAuthenticator, Identity, NotAuthorized, UseAnotherServer
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.conn5_harness import Broker5, Client5
from tests.mqtt_harness import Broker

R = P.ReasonCode


@implementer(IAuthenticator)
class Answers:
    """An authenticator that answers what it is told to."""

    def __init__(self, answer):
        self.answer = answer

    def authenticate(self, username, password, client_id, peer, certificate):
        return self.answer() if callable(self.answer) else succeed(self.answer)

    def authenticate_token(self, token, peer):
        return succeed(None)


def refused(client: Client5, **connect) -> P.ConnAck:
    connack = client.connect(**connect)
    assert connack.return_code >= 0x80 and connack.session_present is False  # [MQTT-3.2.2-6]
    assert client.closed  # [MQTT-3.2.2-7]
    return connack


def disconnected(client: Client5) -> P.Disconnect:
    """The DISCONNECT the broker sent last, once it closed the connection."""
    packets = client.take()
    assert packets and type(packets[-1]) is P.Disconnect, packets
    assert client.closed  # [MQTT-3.14.4-2]
    return packets[-1]


# -- CONNECT and CONNACK -----------------------------------------------------------


def test_a_level_5_connect_gets_a_connack_that_says_what_the_broker_does():
    """[MQTT-3.1.4-5] [MQTT-3.2.2-2] [MQTT-3.2.2-9]: accepted with 0x00; our
    Receive Maximum (--max-pending-acks) and Topic Alias Maximum, what is
    available; Maximum QoS left out (it would have to be 0 or 1)."""
    client = Broker5().connect("sensor", keep_alive=30)
    connack = client.connack
    assert (connack.return_code, connack.session_present) == (0, False)
    assert connack.properties == {
        "receive_maximum": 100, "topic_alias_maximum": 10, "retain_available": 1,
        "wildcard_subscription_available": 1, "subscription_identifier_available": 1,
        "shared_subscription_available": 1}
    assert client.protocol.keep_alive == 30  # [MQTT-3.2.2-22]
    assert client.protocol.describe()["protocol_version"] == "5.0"


def test_connack_carries_the_limits_that_are_set():
    connack = Broker5(max_packet_size=4096, max_pending_acks=70_000,
                      topic_alias_maximum=0).connect("c").connack
    assert connack.properties["maximum_packet_size"] == 4096
    assert connack.properties["receive_maximum"] == 65535
    assert "topic_alias_maximum" not in connack.properties


def test_an_empty_client_id_is_assigned_one_and_told():
    """[MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.2.2-16]: also with Clean Start 0,
    and the session kept under that id."""
    broker = Broker5()
    client = broker.connect("", clean=False, properties={"session_expiry_interval": 60})
    assigned = client.connack.properties["assigned_client_identifier"]
    assert assigned == client.protocol.client_id
    assert broker.hub.get_session(assigned) is not None
    other = broker.connect("")
    assert other.connack.properties["assigned_client_identifier"] != assigned
    assert "assigned_client_identifier" not in broker.connect("named").connack.properties


def test_response_information_only_when_asked_for():
    """[MQTT-3.1.2-28] [§4.10]: the topic prefix, with the client id."""
    broker = Broker5()
    assert "response_information" not in broker.connect("a").connack.properties
    asked = broker.connect("b", properties={"request_response_information": 1})
    assert asked.connack.properties["response_information"] == "response/b/"
    silent = Broker5(response_information="")
    assert "response_information" not in silent.connect(
        "c", properties={"request_response_information": 1}).connack.properties


@pytest.mark.parametrize(("answer", "code", "code311"), [
    (None, R.BAD_USER_NAME_OR_PASSWORD, 4),
    (lambda: fail(NotAuthorized("not today")), R.NOT_AUTHORIZED, 5),
    (lambda: fail(OSError("directory down")), R.SERVER_UNAVAILABLE, 3),
])
def test_refusals_have_reason_codes_and_strings(answer, code, code311):
    """[MQTT-3.1.4-2] [MQTT-3.2.2-6] [MQTT-3.2.2-7] [MQTT-3.2.2-8]; a 3.1.1
    client gets its own return code for the same refusal."""
    broker = Broker5(guard=Guard(Answers(answer)))
    connack = refused(broker.client(), client_id="x", username="u", password=b"p")
    assert connack.return_code == code
    assert connack.properties["reason_string"]
    old = Broker()
    old.factory.guard = Guard(Answers(answer))
    client = old.client()
    client.send(P.Connect(client_id="x", username="u", password=b"p"))
    (connack311,) = client.take()
    assert (connack311.return_code, len(connack311.body)) == (code311, 2)


def test_use_another_server_is_left_to_the_authenticator():
    """[§4.11]: 0x9C with a Server Reference; 0x9D when it moved for good."""
    def moved(permanent):
        return lambda: fail(UseAnotherServer("mqtt.example:1883", permanent))

    connack = refused(Broker5(guard=Guard(Answers(moved(False)))).client(), client_id="x")
    assert connack.return_code == R.USE_ANOTHER_SERVER
    assert connack.properties["server_reference"] == "mqtt.example:1883"
    connack = refused(Broker5(guard=Guard(Answers(moved(True)))).client(), client_id="x")
    assert connack.return_code == R.SERVER_MOVED


def test_an_authenticator_that_does_not_answer_makes_the_server_busy():
    broker = Broker5(guard=Guard(Answers(Deferred)), connect_timeout=5)
    client = broker.client()
    client.send(P.Connect(client_id="x", protocol_level=5))
    client.advance(5)
    (connack,) = client.take()
    assert connack.return_code == R.SERVER_BUSY
    assert client.closed


def test_an_unknown_authentication_method_gets_0x8c():
    """[MQTT-4.12.0-1]"""
    connack = refused(Broker5().client(), client_id="x",
                      properties={"authentication_method": "SCRAM-SHA-1"})
    assert connack.return_code == R.BAD_AUTHENTICATION_METHOD


def test_an_unknown_protocol_level_gets_the_3_1_1_connack():
    """[MQTT-3.1.2-2]: the level is none we speak, so is its CONNACK: 0x01."""
    client = Broker5().client()
    data = bytearray(encode(P.Connect(client_id="x", protocol_level=5)))
    data[data.index(b"MQTT") + 4] = 6
    client.send_bytes(bytes(data))
    assert client.raw() == b"\x20\x02\x00\x01"
    assert client.closed


def test_a_reason_string_too_large_for_the_client_is_left_out():
    """[MQTT-3.2.2-19]: the refusal still goes out, without its Reason String."""
    broker = Broker5(guard=Guard(Answers(None)))
    connack = refused(broker.client(), client_id="x",
                      properties={"maximum_packet_size": 16})
    assert connack.return_code == R.BAD_USER_NAME_OR_PASSWORD
    assert "reason_string" not in connack.properties


# -- the server's DISCONNECT --------------------------------------------------------


def test_a_protocol_error_gets_disconnect_0x82_then_close():
    """[MQTT-4.13.1-1] [MQTT-3.14.0-1]: a second CONNECT [MQTT-3.1.0-2]."""
    client = Broker5().connect("c")
    client.send(P.Connect(client_id="c", protocol_level=5))
    disconnect = disconnected(client)
    assert disconnect.reason_code == R.PROTOCOL_ERROR
    assert "session_expiry_interval" not in disconnect.properties  # [MQTT-3.14.2-2]


def test_a_malformed_packet_gets_disconnect_0x81():
    client = Broker5().connect("c")
    client.send_bytes(b"\x36\x00")  # PUBLISH with QoS 3
    assert disconnected(client).reason_code == R.MALFORMED_PACKET


def test_a_packet_over_the_maximum_gets_disconnect_0x95():
    client = Broker5(max_packet_size=64).connect("c")
    client.publish("t", b"x" * 100)
    assert disconnected(client).reason_code == R.PACKET_TOO_LARGE


def test_a_3_1_1_client_is_closed_without_a_disconnect():
    broker = Broker5()
    old = broker.connect311("old")
    old.send(P.Connect(client_id="old"))
    assert old.raw() == b""
    assert old.closed


def test_keep_alive_timeout_gets_disconnect_0x8d():
    """[MQTT-3.1.2-22]"""
    client = Broker5().connect("c", keep_alive=10)
    client.advance(14.9)
    assert client.take() == []
    client.advance(0.2)
    assert disconnected(client).reason_code == R.KEEP_ALIVE_TIMEOUT


def test_a_taken_over_connection_gets_disconnect_0x8e():
    """[MQTT-3.1.4-3]"""
    broker = Broker5()
    first = broker.connect("same")
    broker.connect("same")
    assert disconnected(first).reason_code == R.SESSION_TAKEN_OVER


def test_an_administrator_disconnect_gets_0x98_and_shutdown_0x8b():
    broker = Broker5()
    client = broker.connect("c")
    client.protocol.disconnect()
    assert disconnected(client).reason_code == R.ADMINISTRATIVE_ACTION
    client = broker.connect("d")
    client.protocol.disconnect(R.SERVER_SHUTTING_DOWN)
    assert disconnected(client).reason_code == R.SERVER_SHUTTING_DOWN


def test_nothing_is_sent_after_the_disconnect_and_a_deaf_client_is_cut_off():
    """[MQTT-3.14.4-1] [MQTT-3.14.4-2]"""
    broker = Broker5()
    subscriber = broker.connect("sub")
    subscriber.subscribe(("t", 0))
    subscriber.protocol.disconnect()
    broker.connect("pub").publish("t", b"late")
    packets = subscriber.take()
    assert [type(p) for p in packets] == [P.Disconnect]
    subscriber.lost = True  # the transport closes, but connectionLost waits for the peer
    subscriber.transport.disconnecting = True
    aborted = []
    subscriber.transport.abortConnection = lambda: aborted.append(True)
    broker.clock.advance(10)
    assert aborted == [True]


def test_a_disconnect_reason_string_too_large_for_the_client_is_left_out():
    """[MQTT-3.14.2-3]"""
    client = Broker5().connect("c", properties={"maximum_packet_size": 30})
    client.send(P.Connect(client_id="c", protocol_level=5))
    disconnect = disconnected(client)
    assert (disconnect.reason_code, disconnect.properties) == (R.PROTOCOL_ERROR, {})


def test_no_problem_information_means_no_reason_strings_but_on_connack_and_disconnect():
    """[MQTT-3.1.2-29]"""
    from reactorapp.mqtt.v5 import V5

    v5 = V5({"request_problem_information": 0})
    ack = v5.fit(P.PubAck(1, R.NOT_AUTHORIZED, {"reason_string": "no", "user_property": [("a", "b")]}))
    assert ack == b"\x40\x03\x00\x01\x87"
    disconnect = v5.fit(P.Disconnect(R.PROTOCOL_ERROR, {"reason_string": "why"}))
    assert b"why" in disconnect


# -- Receive Maximum, both ways ------------------------------------------------------


def test_more_unanswered_qos_2_publishes_than_receive_maximum_gets_0x93():
    """[MQTT-3.3.4-7] [§4.9]: a PUBLISH answered by PUBCOMP gives the quota back."""
    client = Broker5(max_pending_acks=2).connect("c")
    assert client.connack.properties["receive_maximum"] == 2
    first = client.publish("t", b"1", qos=2)
    client.publish("t", b"2", qos=2)
    assert [type(p) for p in client.take()] == [P.PubRec, P.PubRec]
    client.send(P.PubRel(first))
    assert [type(p) for p in client.take()] == [P.PubComp]
    client.publish("t", b"3", qos=2)
    assert [type(p) for p in client.take()] == [P.PubRec]
    client.publish("t", b"4", qos=2)
    assert disconnected(client).reason_code == R.RECEIVE_MAXIMUM_EXCEEDED


def test_qos_1_publishes_answered_at_once_never_exceed_receive_maximum():
    client = Broker5(max_pending_acks=2).connect("c")
    for n in range(10):
        client.publish("t", b"%d" % n, qos=1)
    assert [type(p) for p in client.take()] == [P.PubAck] * 10
    assert not client.closed


def test_the_clients_receive_maximum_bounds_what_is_sent_to_it():
    """[MQTT-3.3.4-9]: at most that many QoS 1/2 PUBLISHes unacknowledged."""
    broker = Broker5()
    subscriber = broker.connect("sub", properties={"receive_maximum": 2})
    subscriber.subscribe(("t", 1))
    publisher = broker.connect("pub")
    for n in range(5):
        publisher.publish("t", b"%d" % n, qos=1)
    sent = subscriber.take()
    assert [p.payload for p in sent] == [b"0", b"1"]
    subscriber.send(P.PubAck(sent[0].packet_id))
    assert [p.payload for p in subscriber.take()] == [b"2"]


# -- Maximum Packet Size of the client -----------------------------------------------


def test_a_publish_too_large_for_the_client_is_dropped_counted_and_done_with():
    """[MQTT-3.1.2-24] [MQTT-3.1.2-25]: not sent, and it does not hold the
    window: later messages still arrive."""
    broker = Broker5()
    subscriber = broker.connect("sub", properties={"maximum_packet_size": 100,
                                                   "receive_maximum": 1})
    subscriber.subscribe(("t", 1))
    publisher = broker.connect("pub")
    publisher.publish("t", b"x" * 200, qos=1)
    publisher.publish("t", b"y" * 200, qos=0)
    publisher.publish("t", b"small", qos=1)
    assert [p.payload for p in subscriber.take()] == [b"small"]
    assert broker.hub.stats.publish_too_large == 2
    assert len(broker.hub.get_session("sub").inflight) == 1  # "small" only


# -- Server Keep Alive ---------------------------------------------------------------


@pytest.mark.parametrize(("asked", "told", "held_to"), [
    (0, 60, 60), (120, 60, 60), (30, None, 30), (60, None, 60)])
def test_max_keepalive_is_told_to_5_clients_that_ask_for_more_or_for_none(asked, told, held_to):
    """[MQTT-3.2.2-21] [MQTT-3.2.2-22] [MQTT-3.1.2-22]"""
    client = Broker5(max_keepalive=60).connect("c", keep_alive=asked)
    assert client.connack.properties.get("server_keep_alive") == told
    client.advance(1.5 * held_to - 0.1)
    assert not client.closed
    client.advance(0.2)
    assert disconnected(client).reason_code == R.KEEP_ALIVE_TIMEOUT


def test_3_1_1_clients_keep_their_own_keep_alive():
    """3.1.1 has no way to tell a client another value: it is left its own."""
    broker = Broker5(max_keepalive=60)
    old = broker.connect311("old", keep_alive=600)
    old.advance(899)
    assert not old.closed
    never = broker.connect311("never", keep_alive=0)
    never.advance(10_000)
    assert not never.closed


def test_stopping_the_service_disconnects_5_0_clients_with_0x8b():
    """3.1.1 clients are closed without a DISCONNECT they would not understand."""
    from reactorapp.mqtt.shutdown import DisconnectOnStop

    broker = Broker5()
    client = broker.connect("new")
    old = broker.connect311("old")
    service = DisconnectOnStop(broker.hub, broker.clock)
    service.startService()
    client.transport.connected = True  # still open: shutdown waits, bounded
    d = service.stopService()
    assert disconnected(client).reason_code == R.SERVER_SHUTTING_DOWN
    assert old.raw() == b"" and old.closed
    broker.clock.advance(1.0)
    assert d.called
