"""Authentication, ACLs, TLS and limits against a real ``twistd -n reactorapp``.

Clients are raw sockets (tests/rawmqtt.py), so they can misbehave; every
wait is bounded.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from reactorapp.auth.passwd import set_password
from reactorapp.mqtt import packets as P
from tests.brokerproc import REPO, running_broker, twistd_env
from tests.certs import issue, make_ca
from tests.rawmqtt import RawClient

CHEAP = {"n": 2 ** 4}
ACL = """
topic read public/#
user alice
topic readwrite home/#
topic deny home/secret/#
user device1
topic readwrite devices/device1/#
"""


@pytest.fixture
def secured(tmp_path):
    passwd = tmp_path / "passwd"
    set_password(str(passwd), "alice", b"wonderland", **CHEAP)
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return ["--passwd", str(passwd), "--acl", str(acl)]


def client(broker, port=None) -> RawClient:
    return RawClient(broker.host, port or broker.port)


def test_passwords(tmp_path, secured):
    """[§3.1.4] [MQTT-3.2.2-5]: CONNACK 4 for a wrong password or an unknown
    user, 5 for an anonymous client, then the connection is closed."""
    with running_broker(tmp_path, *secured) as broker:
        for who, password, code in [("alice", b"nope", 4), ("mallory", b"x", 4),
                                    (None, None, 5), ("alice", b"wonderland", 0)]:
            c = client(broker)
            connack = c.connect("c-" + str(who), username=who, password=password)
            assert connack.return_code == code, who
            assert connack.session_present is False
            if code:
                assert c.closed_by_broker()
            c.close()


def test_a_mosquitto_password_file_as_it_is(tmp_path):
    """Users move from Mosquitto with their password file unchanged."""
    mosquitto_file = REPO / "tests" / "data" / "mosquitto.passwd"
    with running_broker(tmp_path, "--passwd", str(mosquitto_file)) as broker:
        for who, password, code in [("alice", b"s3cret pass", 0), ("carol", b"pw6", 0),
                                    ("bob", b"s3cret pass", 4)]:
            c = client(broker)
            assert c.connect("m-" + who, username=who, password=password).return_code == code
            c.close()


def test_allow_anonymous(tmp_path, secured):
    with running_broker(tmp_path, *secured, "--allow-anonymous") as broker:
        c = client(broker)
        assert c.connect("anon").return_code == 0
        assert c.subscribe(("public/#", 0), ("home/#", 0)) == [0, 0x80]


def test_acl_denials(tmp_path, secured):
    """[MQTT-3.9.3-2] 0x80 for a forbidden filter; a forbidden PUBLISH is
    acknowledged and dropped; forbidden topics are never delivered, retained
    ones included."""
    with running_broker(tmp_path, *secured, "--allow-anonymous") as broker:
        alice = client(broker)
        alice.connect("alice", username="alice", password=b"wonderland")
        alice.send(P.Publish("home/secret/pin", b"1234", 1, True, packet_id=1),
                   P.Publish("home/light", b"on", 1, True, packet_id=2))
        assert [alice.read().type, alice.read().type] == ["PUBACK", "PUBACK"]
        assert alice.subscribe(("home/#", 1), ("#", 0)) == [1, 0x80]
        retained = alice.read()
        assert (retained.topic, retained.retain) == ("home/light", True)
        anon = client(broker)
        anon.connect("anon")
        anon.send(P.Publish("home/light", b"hacked", 1, packet_id=7))
        puback = anon.read()
        assert (puback.type, puback.packet_id) == ("PUBACK", 7)
        alice.send(P.PingReq())
        assert alice.read().type == "PINGRESP"  # nothing before it: not delivered


def tls_listener(tmp_path):
    ca = make_ca(tmp_path, "clients-ca")
    server_ca = make_ca(tmp_path, "server-ca")
    server = issue(tmp_path, server_ca, "localhost", server=True)
    endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={server.key}:certKey={server.cert}"
                f":caCerts={ca.cert}")
    return ca, server_ca, endpoint


def tls_client(broker, port, server_ca, cert=None) -> RawClient:
    context = ssl.create_default_context(cafile=str(server_ca.cert))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    raw = socket.create_connection((broker.host, port), timeout=10)
    return RawClient(broker.host, port, sock=context.wrap_socket(raw, server_hostname="localhost"))


def second_port(broker) -> int:
    """The port of the second MQTT listener (the first is ``broker.port``)."""
    match = broker.wait_for(rf"MQTT listening on [^\s:]+:(?!{broker.port}\b)(?P<port>\d+)")
    return int(match["port"])


def test_tls_client_certificates(tmp_path, secured):
    """A client certificate from the trusted authority logs in as its common
    name (--tls-cert-auth), and the ACL applies to that user; without a
    certificate, or with one from another authority, the handshake fails
    and no CONNACK is ever sent."""
    ca, server_ca, endpoint = tls_listener(tmp_path)
    device = issue(tmp_path, ca, "device1")
    stranger = issue(tmp_path, make_ca(tmp_path, "other-ca"), "device1", stem="stranger")
    with running_broker(tmp_path, *secured, "--tls-cert-auth", "--mqtt", endpoint) as broker:
        port = second_port(broker)
        good = tls_client(broker, port, server_ca, device)
        assert good.connect("dev").return_code == 0
        assert good.subscribe(("devices/device1/#", 1), ("home/#", 0)) == [1, 0x80]
        for cert in (None, stranger):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                bad = tls_client(broker, port, server_ca, cert)
                bad.connect("intruder")
        # The plain listener still asks for passwords.
        assert client(broker).connect("x").return_code == 5


def test_too_many_connections(tmp_path):
    with running_broker(tmp_path, "--max-connections", "3") as broker:
        held = [client(broker) for _ in range(3)]
        for c in held:
            assert c.connect().return_code == 0
        extra = client(broker)
        assert extra.closed_by_broker()
        held.pop().close()
        for _ in range(50):  # the slot comes back once the close is seen
            late = client(broker)
            try:
                if late.connect().return_code == 0:
                    break
            except ConnectionError:
                late.close()
        else:
            raise AssertionError("no slot came back")


def test_oversized_packet_closes_only_that_connection(tmp_path):
    """[MQTT-4.8.0-1] a packet over --max-packet-size is a protocol error for
    that client alone."""
    with running_broker(tmp_path, "--max-packet-size", "1024") as broker:
        other = client(broker)
        other.connect("other")
        big = client(broker)
        big.connect("big")
        big.send(P.Publish("t", b"x" * 2000))
        assert big.closed_by_broker()
        other.send(P.PingReq())
        assert other.read().type == "PINGRESP"


def test_connect_timeout(tmp_path):
    """Slowloris: a connection that sends no CONNECT is closed after
    --connect-timeout, without a CONNACK [MQTT-3.1.0-1]."""
    with running_broker(tmp_path, "--connect-timeout", "0.5") as broker:
        idle = client(broker)
        idle.sock.sendall(b"\x10")  # the first byte of a CONNECT
        assert idle.closed_by_broker(timeout=10)
        broker.wait_for(r"no CONNECT within 0.5s")


def test_open_listener_warns(tmp_path):
    with running_broker(tmp_path, "--mqtt", "tcp:0:interface=0.0.0.0") as broker:
        broker.wait_for(r"WARNING: MQTT listener tcp:0:interface=0.0.0.0 accepts clients")


def http_status(broker, path, headers=None, body=None) -> int:
    request = urllib.request.Request(f"http://{broker.host}:{broker.http_port}{path}",
                                     data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


def test_http_api_uses_the_same_users(tmp_path, secured):
    """Basic auth with the password file's users, bearer tokens made by
    ``python -m reactorapp.passwd FILE USER --token``, and the same ACL."""
    passwd = secured[1]
    token = subprocess.run([sys.executable, "-m", "reactorapp.passwd", passwd, "alice", "--token"],
                           capture_output=True, text=True, cwd=REPO, env=twistd_env(),
                           timeout=30, check=True).stdout.strip()
    with running_broker(tmp_path, *secured) as broker:
        alice = "Basic " + base64.b64encode(b"alice:wonderland").decode()
        publish = json.dumps({"topic": "home/door", "payload": "open"}).encode()
        assert http_status(broker, "/api/v1/publish", body=publish) == 401
        assert http_status(broker, "/api/v1/publish", {"Authorization": alice}, publish) == 200
        assert http_status(broker, "/api/v1/publish", {"Authorization": f"Bearer {token}"},
                           publish) == 200
        secret = json.dumps({"topic": "home/secret/x", "payload": "1"}).encode()
        assert http_status(broker, "/api/v1/publish", {"Authorization": alice}, secret) == 403
        assert http_status(broker, "/healthz") == 200
