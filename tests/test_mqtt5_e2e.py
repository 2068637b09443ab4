"""MQTT 5 connections end to end: paho-mqtt's 5.0 client against `twistd -n
reactorapp`, over TCP, TLS and WebSocket, and raw level-5 packets where paho
hides the detail. Every wait is bounded; the broker's log tells when a timer
fired. Statement ids are the MQTT 5.0 specification's."""

from __future__ import annotations

import socket
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import Parser, encode
from tests.brokerproc import running_broker
from tests.certs import issue, make_ca
from tests.paho_client import TIMEOUT, PahoClient

R = P.ReasonCode


class Paho5(PahoClient):
    """A paho 5.0 client: CONNECT properties and Clean Start, and what the
    broker said in CONNACK and DISCONNECT."""

    def __init__(self, host, port, client_id="", transport="tcp", **kw):
        self.connack_properties = None
        self.disconnect_reason = None
        super().__init__(host, port, client_id, **kw)
        # Clean Session is not MQTT 5's: a 5.0 client of our own, same callbacks.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5, transport=transport, reconnect_on_failure=False)
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack_properties = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnect_reason = reason_code.value
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def connect5(self, clean_start=True, keepalive=60, **properties) -> Paho5:
        props = Properties(PacketTypes.CONNECT)
        for name, value in properties.items():
            setattr(props, name, value)
        self.client.connect(self.host, self.port, keepalive=keepalive,
                            clean_start=clean_start, properties=props)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), f"{self.client_id}: no CONNACK"
        assert self.return_code == 0, f"{self.client_id}: CONNACK {self.return_code:#x}"
        return self

    def will5(self, topic, payload, delay):
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = delay
        self.client.will_set(topic, payload, 0, False, props)


def watcher(broker) -> PahoClient:
    client = PahoClient(broker.host, broker.port, "watcher").connect()
    client.subscribe(("wills/#", 0))
    return client


def test_connack_tells_a_paho_5_client_the_limits(tmp_path):
    """[MQTT-3.1.3-7] [MQTT-3.2.2-21] [MQTT-3.1.2-28]: an assigned id, our
    Receive Maximum and Topic Alias Maximum, Server Keep Alive when asking
    for more than --max-keepalive, Response Information on request."""
    with running_broker(tmp_path, "--max-keepalive", "30", "--max-pending-acks", "50",
                        "--max-packet-size", "65536") as broker:
        client = Paho5(broker.host, broker.port, "").connect5(
            keepalive=120, RequestResponseInformation=1)
        props = client.connack_properties
        assigned = props.AssignedClientIdentifier
        assert assigned.startswith("auto-")
        assert (props.ReceiveMaximum, props.TopicAliasMaximum, props.ServerKeepAlive,
                props.MaximumPacketSize) == (50, 10, 30, 65536)
        assert props.ResponseInformation == f"response/{assigned}/"
        assert client.subscribe(("t/#", 1)) == [1]
        client.publish_and_wait("t/x", b"hello", qos=1)
        assert client.next().payload == b"hello"
        client.disconnect()


def test_a_session_with_an_expiry_is_resumed_then_expires(tmp_path):
    """[MQTT-3.1.2-23] [MQTT-3.2.2-3]: resumed with what was queued while the
    client was away; gone (memory and store) once the interval passed."""
    with running_broker(tmp_path) as broker:
        device = Paho5(broker.host, broker.port, "dev").connect5(
            clean_start=False, SessionExpiryInterval=3600)
        device.subscribe(("cmd/#", 1))
        device.disconnect()
        PahoClient(broker.host, broker.port, "pub").connect().publish_and_wait(
            "cmd/go", b"while away", qos=1)
        back = Paho5(broker.host, broker.port, "dev").connect5(
            clean_start=False, SessionExpiryInterval=1)
        assert back.session_present is True
        assert back.next().payload == b"while away"
        back.disconnect()
        broker.wait_for(r"Session dev expired")
        again = Paho5(broker.host, broker.port, "dev").connect5(clean_start=False)
        assert again.session_present is False
        again.disconnect()


def test_a_delayed_will_goes_out_after_its_delay_and_not_on_a_normal_disconnect(tmp_path):
    """[MQTT-3.1.2-8] [MQTT-3.14.4-3]"""
    with running_broker(tmp_path) as broker:
        wills = watcher(broker)
        polite = Paho5(broker.host, broker.port, "polite")
        polite.will5("wills/polite", b"never", 0)
        polite.connect5().disconnect()
        crashing = Paho5(broker.host, broker.port, "crashing")
        crashing.will5("wills/crashing", b"gone", 1)
        crashing.connect5(clean_start=False, SessionExpiryInterval=60)
        crashing.kill()
        message = wills.next()
        assert (message.topic, message.payload) == ("wills/crashing", b"gone")
        wills.assert_nothing_pending()
        wills.disconnect()


def test_a_taken_over_paho_client_is_told_why(tmp_path):
    """[MQTT-3.1.4-3]: DISCONNECT 0x8E to the old connection."""
    with running_broker(tmp_path) as broker:
        first = Paho5(broker.host, broker.port, "same").connect5()
        second = Paho5(broker.host, broker.port, "same").connect5()
        assert first.disconnected.wait(TIMEOUT)
        assert first.disconnect_reason == R.SESSION_TAKEN_OVER
        first.close()
        second.disconnect()


def test_shutdown_tells_5_0_clients_why(tmp_path):
    """DISCONNECT 0x8B Server shutting down, on SIGTERM."""
    with running_broker(tmp_path) as broker:
        client = Paho5(broker.host, broker.port, "c").connect5()
        broker.stop()
        assert client.disconnected.wait(TIMEOUT)
        assert client.disconnect_reason == R.SERVER_SHUTTING_DOWN
        client.close()


def test_5_0_over_websocket_and_tls(tmp_path):
    """Level 5 on every listener: the CONNECT chooses."""
    server_ca = make_ca(tmp_path, "server-ca")
    server = issue(tmp_path, server_ca, "localhost", server=True)
    tls = f"ssl:0:interface=127.0.0.1:privateKey={server.key}:certKey={server.cert}"
    with running_broker(tmp_path, "--mqtt", tls) as broker:
        ws = Paho5(broker.host, broker.http_port, "ws", transport="websockets").connect5()
        assert ws.connack_properties.ReceiveMaximum == 100
        ws.disconnect()
        port = int(broker.wait_for(
            rf"MQTT listening on [^\s:]+:(?!{broker.port}\b)(?P<port>\d+)")["port"])
        secure = Paho5(broker.host, port, "tls")
        secure.client.tls_set(ca_certs=str(server_ca.cert), cert_reqs=ssl.CERT_REQUIRED)
        secure.connect5()
        assert secure.subscribe(("s", 0)) == [0]
        secure.disconnect()


# -- raw level-5 packets, where paho hides the reason codes -------------------------


class Raw5:
    """A blocking socket speaking level-5 packets, read with the codec."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.parser = Parser(protocol_level=P.MQTT_5, server_side=False)
        self.packets = []

    def send(self, *packets):
        self.sock.sendall(b"".join(encode(p, P.MQTT_5) for p in packets))

    def read(self):
        while not self.packets:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the broker")
            self.packets.extend(self.parser.feed(data))
        return self.packets.pop(0)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True


def test_receive_maximum_exceeded_and_packet_too_large_over_tcp(tmp_path):
    """[MQTT-3.3.4-7] 0x93, and 0x95 for a packet over --max-packet-size."""
    with running_broker(tmp_path, "--max-pending-acks", "2", "--max-packet-size", "1000") as broker:
        greedy = Raw5(broker.host, broker.port)
        greedy.send(P.Connect(client_id="greedy", protocol_level=5))
        connack = greedy.read()
        assert connack.properties["receive_maximum"] == 2
        greedy.send(*(P.Publish("t", b"x", qos=2, packet_id=n) for n in (1, 2, 3)))
        packets = [greedy.read() for _ in range(3)]
        assert [type(p) for p in packets] == [P.PubRec, P.PubRec, P.Disconnect]
        assert packets[-1].reason_code == R.RECEIVE_MAXIMUM_EXCEEDED
        assert greedy.closed()

        large = Raw5(broker.host, broker.port)
        large.send(P.Connect(client_id="large", protocol_level=5))
        large.read()
        large.send(P.Publish("t", b"x" * 2000))
        assert large.read().reason_code == R.PACKET_TOO_LARGE
        assert large.closed()


def test_a_publish_over_the_clients_maximum_packet_size_is_dropped_and_counted(tmp_path):
    """[MQTT-3.1.2-24] [MQTT-3.1.2-25]: paho sends the limit; the broker
    skips the message for it and counts it on /metrics."""
    import http.client

    with running_broker(tmp_path) as broker:
        small = Paho5(broker.host, broker.port, "small").connect5(MaximumPacketSize=200)
        small.subscribe(("t", 1))
        publisher = PahoClient(broker.host, broker.port, "pub").connect()
        publisher.publish_and_wait("t", b"x" * 500, qos=1)
        publisher.publish_and_wait("t", b"fits", qos=1)
        assert small.next().payload == b"fits"
        small.assert_nothing_pending()
        connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        assert "reactorapp_messages_too_large_total 1.0" in text
        small.disconnect()
        publisher.disconnect()


def test_enhanced_authentication_method_unknown_gets_0x8c(tmp_path):
    """[MQTT-4.12.0-1]: paho reports the CONNACK's reason code."""
    with running_broker(tmp_path) as broker:
        client = Paho5(broker.host, broker.port, "x")
        props = Properties(PacketTypes.CONNECT)
        props.AuthenticationMethod = "SCRAM-SHA-1"
        done = threading.Event()
        codes = []

        def on_connect(client_, userdata, flags, reason_code, properties):
            codes.append(reason_code.value)
            done.set()

        client.client.on_connect = on_connect
        client.client.connect(broker.host, broker.port, properties=props)
        client.client.loop_start()
        assert done.wait(TIMEOUT)
        assert codes == [R.BAD_AUTHENTICATION_METHOD]
        client.client.loop_stop()


def test_the_admin_api_and_metrics_show_protocol_versions_and_limits(tmp_path):
    """/api/v1/clients: the version and the negotiated limits both ways;
    /metrics: connections by protocol version."""
    import http.client
    import json

    with running_broker(tmp_path, "--max-pending-acks", "40") as broker:
        new = Paho5(broker.host, broker.port, "new").connect5(
            keepalive=20, ReceiveMaximum=5, MaximumPacketSize=4096, TopicAliasMaximum=3,
            SessionExpiryInterval=300)
        old = PahoClient(broker.host, broker.port, "old").connect()
        connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
        connection.request("GET", "/api/v1/clients")
        clients = {c["client_id"]: c for c in json.loads(connection.getresponse().read())}
        assert clients["old"]["protocol_version"] == "3.1.1"
        assert "limits" not in clients["old"]
        assert clients["new"]["protocol_version"] == "5.0"
        assert clients["new"]["keep_alive"] == 20
        assert clients["new"]["limits"] == {
            "client": {"receive_maximum": 5, "maximum_packet_size": 4096,
                       "topic_alias_maximum": 3},
            "server": {"receive_maximum": 40, "maximum_packet_size": 268435460,
                       "topic_alias_maximum": 10},
            "session_expiry": 300.0}
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        assert 'reactorapp_clients_connected_by_version{version="5.0"} 1.0' in text
        assert 'reactorapp_clients_connected_by_version{version="3.1.1"} 1.0' in text
        assert 'reactorapp_connections_by_version_total{version="5.0"} 1.0' in text
        new.disconnect()
        old.disconnect()


def test_the_readme_mqtt_5_example_runs(tmp_path):
    """The README's request and response example, against the broker."""
    import re
    import subprocess
    import sys

    from tests.brokerproc import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### MQTT 5"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with running_broker(tmp_path) as broker:
        script = tmp_path / "example.py"
        script.write_text(code.replace('HOST, PORT = "127.0.0.1", 1883',
                                       f'HOST, PORT = "127.0.0.1", {broker.port}'))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "b'request-1' 21.5\n"


NONCE_DROPIN = '''
from reactorapp.plugins import AuthenticatorPlugin
nonce = AuthenticatorPlugin("nonce", "A signed nonce (MQTT 5 enhanced authentication).",
                            authenticator="nonceauth.make")
'''

NONCE_MODULE = '''
import hashlib

from twisted.internet.defer import succeed
from zope.interface import implementer

from reactorapp.auth.interfaces import (
    Authenticated, Challenge, IAuthenticator, IEnhancedAuthenticator, Identity)


@implementer(IAuthenticator, IEnhancedAuthenticator)
class Nonce:
    auth_methods = {"X-NONCE"}

    def authenticate(self, username, password, client_id, peer, certificate):
        return succeed(None)  # passwords are not enough here

    def authenticate_token(self, token, peer):
        return succeed(None)

    def start_authentication(self, method, data, username, client_id, peer, certificate):
        nonce = b"nonce-" + client_id.encode()

        def check(answer):
            if answer != hashlib.sha256(nonce + b"s3cret").digest():
                return None
            return Authenticated(Identity(username, client_id), b"welcome")

        return Challenge(nonce, check)


def make(options):
    return Nonce()
'''


def test_enhanced_authentication_through_an_authenticator_plugin(tmp_path, monkeypatch):
    """[MQTT-4.12.0-2] [MQTT-4.12.0-5] [MQTT-4.12.1-1]: an authenticator plugin
    that speaks a challenge and response, chosen with --authenticator; a
    3.1.1 client with a password is refused."""
    import hashlib
    import os

    plugins = tmp_path / "plugin"
    (plugins / "twisted" / "plugins").mkdir(parents=True)
    (plugins / "twisted" / "plugins" / "nonce_dropin.py").write_text(NONCE_DROPIN)
    (plugins / "nonceauth.py").write_text(NONCE_MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(plugins), os.environ.get("PYTHONPATH")])))
    answer = hashlib.sha256(b"nonce-dev" + b"s3cret").digest()
    method = {"authentication_method": "X-NONCE"}
    with running_broker(tmp_path, "--authenticator", "nonce") as broker:
        client = Raw5(broker.host, broker.port)
        client.send(P.Connect(client_id="dev", username="alice", protocol_level=5,
                              properties=dict(method)))
        challenge = client.read()
        assert (type(challenge), challenge.reason_code) == (P.Auth, R.CONTINUE_AUTHENTICATION)
        assert challenge.properties["authentication_data"] == b"nonce-dev"
        client.send(P.Auth(R.CONTINUE_AUTHENTICATION,
                           {**method, "authentication_data": answer}))
        connack = client.read()
        assert connack.return_code == 0
        assert connack.properties["authentication_data"] == b"welcome"
        client.send(P.Auth(R.RE_AUTHENTICATE, dict(method)))
        assert client.read().reason_code == R.CONTINUE_AUTHENTICATION
        client.send(P.Auth(R.CONTINUE_AUTHENTICATION,
                           {**method, "authentication_data": answer}))
        done = client.read()
        assert (type(done), done.reason_code) == (P.Auth, R.SUCCESS)

        from tests.rawmqtt import RawClient

        old = RawClient(broker.host, broker.port)
        # 3.1.1: CONNACK 4, bad user name or password.
        assert old.connect("old", username="alice", password=b"s3cret").return_code == 4
        old.close()
