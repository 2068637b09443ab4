"""End to end through ``twistd -n reactorapp``: HTTP, Server-Sent Events,
MQTT over WebSocket and /metrics against real MQTT clients (paho-mqtt).

Every wait is bounded: paho's callbacks fill queues read with a timeout,
sockets have timeouts, and the broker's log is read with a deadline.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import re
import socket
import struct
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.brokerproc import HTTP_LISTENING, LISTENING, BrokerProcess, running_broker
from tests.wire import read_packets

TIMEOUT = 10.0
BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with running_broker(tmp_path_factory.mktemp("web"), "--max-body-size",
                        str(BODY_LIMIT), "--sys-interval", "0") as broker:
        yield broker
        broker.stop()
    print(broker.log)
    assert "Traceback" not in broker.log
    assert "Unhandled" not in broker.log


# -- clients with bounded waits -------------------------------------------------

class Paho:
    """A paho client on its loop thread, over TCP or over WebSocket (/mqtt)."""

    def __init__(self, broker, client_id: str | None = None, websocket: bool = False,
                 protocol: int = mqtt.MQTTv311) -> None:
        self.client_id = client_id or f"c-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
            transport="websockets" if websocket else "tcp", reconnect_on_failure=False)
        if websocket:
            self.client.ws_set_options(path="/mqtt")
        self.messages: queue.Queue = queue.Queue()
        self._subacks: queue.Queue = queue.Queue()
        self._connected = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self._connected.put(rc)
        self.client.on_subscribe = lambda c, u, mid, codes, props: self._subacks.put(mid)
        self.client.on_message = lambda c, u, message: self.messages.put(message)
        port = broker.http_port if websocket else broker.port
        self.client.connect(broker.host, port, keepalive=30)
        self.client.loop_start()
        rc = self._connected.get(timeout=TIMEOUT)
        assert not rc.is_failure, rc

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        _, mid = self.client.subscribe(topic_filter, qos)
        assert self._subacks.get(timeout=TIMEOUT) == mid

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(TIMEOUT)

    def message(self):
        return self.messages.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho(broker):
    clients = []

    def make(client_id=None, websocket=False, protocol=mqtt.MQTTv311):
        clients.append(Paho(broker, client_id, websocket, protocol))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def request(broker, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_json(broker, path: str):
    status, _, body = request(broker, "GET", path)
    assert status == 200, (status, body)
    return json.loads(body)


def assert_error(status: int, headers: dict, body: bytes, code: int, error: str) -> None:
    assert status == code, (status, body)
    assert headers["content-type"].startswith("application/json")
    document = json.loads(body)
    assert set(document) == {"error", "detail"} and document["error"] == error, document


class EventReader:
    """GET /api/v1/stream, read event by event with a socket timeout."""

    def __init__(self, broker, query: str) -> None:
        self.connection = http.client.HTTPConnection(broker.host, broker.http_port,
                                                     timeout=TIMEOUT)
        self.connection.request("GET", f"/api/v1/stream?{query}")
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type").startswith("text/event-stream")
        assert self.response.readline().startswith(b"retry: ")  # subscribed by now
        self.response.readline()

    def event(self) -> dict:
        data = None
        while True:
            line = self.response.readline()
            assert line, "stream ended"
            if line == b"\n" and data is not None:
                return json.loads(data)
            if line.startswith(b"data: "):
                data = line[len(b"data: "):]

    def close(self) -> None:
        self.connection.close()


class RawWebSocket:
    """Just enough of a WebSocket client to control frames exactly."""

    def __init__(self, broker, protocols=("mqtt",)) -> None:
        self.sock = socket.create_connection((broker.host, broker.http_port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET /mqtt HTTP/1.1", f"Host: {broker.host}:{broker.http_port}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        assert data, "connection closed"
        self.buffer += data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_frame(self, payload: bytes, opcode: int = 2, fin: bool = True) -> None:
        mask = os.urandom(4)
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        else:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(n)

    def packets(self, count: int) -> list:
        """``count`` MQTT packets from the binary messages that follow."""
        data = b""
        while True:
            opcode, payload = self.frame()
            assert opcode == 2, (opcode, payload)
            data += payload
            try:
                packets = read_packets(data)
            except (AssertionError, IndexError):
                continue  # a packet is still incomplete
            if len(packets) >= count:
                return packets

    def close(self) -> None:
        self.sock.close()


# -- HTTP <-> MQTT ----------------------------------------------------------------

def test_http_publish_reaches_an_mqtt_subscriber(broker, paho):
    subscriber = paho()
    subscriber.subscribe("e2e/http/#", 1)
    status, _, body = request(broker, "POST", "/api/v1/publish", json.dumps(
        {"topic": "e2e/http/a", "payload": "from http", "qos": 1}).encode(),
        {"Content-Type": "application/json"})
    assert status == 200, body
    message = subscriber.message()
    assert (message.topic, message.payload, message.qos) == ("e2e/http/a", b"from http", 1)

    status, _, body = request(broker, "POST", "/api/v1/topics/e2e/http/raw?qos=2&retain=1",
                              b"\x00\x01")
    assert status == 200, body
    message = subscriber.message()
    assert (message.topic, message.payload, message.qos) == ("e2e/http/raw", b"\x00\x01", 1)
    [retained] = get_json(broker, "/api/v1/retained?filter=e2e/http/%23")
    assert retained["topic"] == "e2e/http/raw" and retained["encoding"] == "utf-8"


def test_mqtt_publish_reaches_an_sse_stream(broker, paho):
    stream = EventReader(broker, "filter=e2e/sse/%2B&qos=1")
    try:
        paho().publish("e2e/sse/x", "über".encode(), qos=1)
        event = stream.event()
        assert (event["topic"], event["payload"], event["qos"]) == ("e2e/sse/x", "über", 1)
    finally:
        stream.close()


# -- MQTT over WebSocket ------------------------------------------------------------

def test_websocket_client_talks_to_a_tcp_client(broker, paho):
    """[MQTT-6.0.0-4] paho over WebSocket and paho over TCP, both ways."""
    tcp = paho("e2e-tcp")
    ws = paho("e2e-ws", websocket=True)
    tcp.subscribe("e2e/ws/to-tcp", 1)
    ws.subscribe("e2e/ws/to-ws", 2)
    ws.publish("e2e/ws/to-tcp", b"hello tcp", qos=1)
    tcp.publish("e2e/ws/to-ws", b"hello ws", qos=2)
    assert tcp.message().payload == b"hello tcp"
    message = ws.message()
    assert (message.payload, message.qos) == (b"hello ws", 2)
    clients = {c["client_id"]: c for c in get_json(broker, "/api/v1/clients")}
    assert clients["e2e-ws"]["front_end"] == "websocket"
    assert clients["e2e-tcp"]["front_end"] == "mqtt"


def test_mqtt_3_1_over_websocket(broker, paho):
    """paho's MQTTv31 asks for the mqttv3.1 subprotocol and speaks MQIsdp."""
    old = paho("e2e-ws-v31", websocket=True, protocol=mqtt.MQTTv31)
    old.subscribe("e2e/ws/v31", 1)
    old.publish("e2e/ws/v31", b"from 3.1", qos=1)
    assert old.message().payload == b"from 3.1"


@pytest.mark.parametrize("offered, chosen", [
    (("mqtt",), "mqtt"), (("mqttv3.1",), "mqttv3.1"), (("wamp", "mqtt"), "mqtt")])
def test_subprotocol_is_selected_and_returned(broker, offered, chosen):
    """[MQTT-6.0.0-4]"""
    ws = RawWebSocket(broker, offered)
    try:
        assert ws.status == 101
        assert ws.headers["sec-websocket-protocol"] == chosen
    finally:
        ws.close()


def test_packets_split_across_frames_and_joined_in_one(broker):
    """[MQTT-6.0.0-2] a CONNECT in three frames (the last of one message in
    two fragments), then SUBSCRIBE, PUBLISH and PINGREQ in a single frame."""
    ws = RawWebSocket(broker)
    try:
        connect = encode(P.Connect(client_id="e2e-frames", keep_alive=30))
        ws.send_frame(connect[:3])
        ws.send_frame(connect[3:7], opcode=2, fin=False)
        ws.send_frame(connect[7:], opcode=0, fin=True)
        [connack] = ws.packets(1)
        assert connack.type == "CONNACK" and connack.return_code == 0
        ws.send_frame(
            encode(P.Subscribe(1, [P.SubscriptionRequest("e2e/frames", 0)]))
            + encode(P.Publish("e2e/frames", b"echo")) + encode(P.PingReq()))
        suback, publish, pingresp = ws.packets(3)
        assert suback.type == "SUBACK" and suback.return_codes == [0]
        assert (publish.type, publish.payload) == ("PUBLISH", b"echo")
        assert pingresp.type == "PINGRESP"
    finally:
        ws.close()


def test_text_frames_close_the_connection(broker):
    """[MQTT-6.0.0-1] MQTT travels in binary messages only."""
    ws = RawWebSocket(broker)
    try:
        ws.send_frame(encode(P.Connect(client_id="e2e-text")), opcode=1)
        opcode, payload = ws.frame()
        assert opcode == 8  # close
        assert struct.unpack("!H", payload[:2])[0] == 1003  # unsupported data
    finally:
        ws.close()


def test_websocket_mistakes_are_json_4xx(broker):
    ws = RawWebSocket(broker, protocols=())
    try:
        assert ws.status == 400
    finally:
        ws.close()
    assert_error(*request(broker, "GET", "/mqtt"), 426, "upgrade required")


# -- metrics, health ---------------------------------------------------------------------

def test_metrics_count_http_and_mqtt_and_websocket(broker, paho):
    def sample(text, protocol, qos):
        match = re.search(rf'reactorapp_messages_received_total\{{protocol="{protocol}",'
                          rf'qos="{qos}"\}} (\S+)', text)
        return float(match[1]) if match else 0.0

    before = request(broker, "GET", "/metrics")[2].decode()
    paho(websocket=True).publish("e2e/metrics", b"1", qos=1)
    paho().publish("e2e/metrics", b"1", qos=1)
    request(broker, "POST", "/api/v1/publish", b'{"topic": "e2e/metrics", "qos": 1}')
    status, headers, body = request(broker, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    after = body.decode()
    for protocol in ("websocket", "mqtt", "http"):
        assert sample(after, protocol, 1) == sample(before, protocol, 1) + 1, protocol
    assert "reactorapp_clients_connected" in after
    assert "reactorapp_mqtt_received_bytes_total" in after


def test_health_and_readiness(broker):
    assert get_json(broker, "/healthz") == {"status": "ok"}
    assert get_json(broker, "/readyz") == {"status": "ready"}


# -- every kind of client mistake, over a real socket ------------------------------------

@pytest.mark.parametrize("method, path, body, code, error", [
    ("POST", "/api/v1/publish", b"{not json", 400, "invalid JSON"),
    ("POST", "/api/v1/publish", b'{"topic": "a/+"}', 400, "bad topic"),
    ("POST", "/api/v1/topics/a/%23", b"x", 400, "bad topic"),
    ("GET", "/api/v1/retained?filter=a%23", None, 400, "bad filter"),
    ("POST", "/api/v1/publish", b"x" * (BODY_LIMIT + 1), 413, "payload too large"),
    ("DELETE", "/api/v1/publish", None, 405, "method not allowed"),
    ("GET", "/api/v1/nowhere", None, 404, "not found"),
    ("DELETE", "/api/v1/clients/nobody", None, 404, "not found"),
])
def test_client_mistakes(broker, method, path, body, code, error):
    assert_error(*request(broker, method, path, body), code, error)


def test_a_large_body_is_refused_and_the_client_reads_why(broker):
    """The 413 goes out before the body is read; the broker then reads and
    drops the rest (bounded in time) so the client is not reset mid-send."""
    body = b"x" * (4 * 1024 * 1024)
    status, headers, answer = request(broker, "POST", "/api/v1/topics/big", body)
    assert_error(status, headers, answer, 413, "payload too large")
    assert get_json(broker, "/api/v1/retained?filter=big") == []


# -- the OpenAPI document matches the server ------------------------------------------------

def test_openapi_document_matches_the_routes(broker, paho):
    """Each documented operation exists and answers one of its documented
    statuses with a documented media type; each route of the site is documented."""
    document = get_json(broker, "/api/v1/openapi.json")
    assert document["openapi"].startswith("3.")
    paho("sensor-1")  # the example client id of /api/v1/clients/{client_id}
    order = {"get": 0, "post": 1, "delete": 2}
    checked = 0
    for template, item in sorted(document["paths"].items()):
        shared = item.get("parameters", [])
        for method in sorted((m for m in item if m in order), key=order.get):
            operation = item[method]
            path = template
            for parameter in shared + operation.get("parameters", []):
                if parameter["in"] == "path":
                    path = path.replace("{%s}" % parameter["name"],
                                        parameter.get("example", "example"))
            body = None
            if "requestBody" in operation:
                media, spec = next(iter(operation["requestBody"]["content"].items()))
                example = spec.get("example", {} if media == "application/json" else "")
                body = json.dumps(example).encode() if media == "application/json" \
                    else example.encode()
            status, headers, answer = _exercise(broker, method.upper(), path, body)
            responses = operation["responses"]
            assert str(status) in responses, (method, path, status, answer[:200])
            content = responses[str(status)].get("content")
            if content:
                media_type = headers["content-type"].split(";")[0]
                assert media_type in content, (method, path, media_type)
                if media_type == "application/json":
                    json.loads(answer)
            checked += 1
    assert checked >= 15
    documented = {t.split("/")[1] for t in document["paths"]} | {"static"}
    documented |= {t.split("/")[3] for t in document["paths"] if t.startswith("/api/v1/")}
    for name in ("", "healthz", "readyz", "metrics", "mqtt", "api", "publish", "topics",
                 "retained", "stream", "clients", "sessions", "stats", "openapi.json"):
        assert name in documented, name


def _exercise(broker, method: str, path: str, body: bytes | None):
    """One request; a stream is answered with its headers and then closed."""
    if path.startswith("/api/v1/stream"):
        reader = EventReader(broker, "filter=%23")
        reader.close()
        return 200, {"content-type": "text/event-stream"}, b""
    if path == "/mqtt":
        ws = RawWebSocket(broker)
        ws.close()
        return ws.status, ws.headers, b""
    return request(broker, method, path, body)


# -- starting with and without HTTP ------------------------------------------------------

def test_http_none_turns_it_off(tmp_path):
    with running_broker(tmp_path, "--http", "none") as broker:
        assert broker.http_port is None
        assert "HTTP listening" not in broker.log


def test_http_listeners_from_the_config_file(tmp_path):
    config = tmp_path / "reactorapp.toml"
    config.write_text('http = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]\n'
                      "max-body-size = 10\n")
    broker = BrokerProcess(["-n", "reactorapp", "--config", str(config), "--mqtt",
                            "tcp:0:interface=127.0.0.1", "--data", str(tmp_path / "d")],
                           cwd=tmp_path, free_http=False)
    try:
        broker.wait_for(LISTENING)
        first = broker.wait_for(HTTP_LISTENING)["port"]
        second = broker.wait_for(rf"HTTP listening on [^\s:]+:(?!{first}\b)(\d+)")[1]
        broker.host = "127.0.0.1"
        for port in (first, second):
            broker.http_port = int(port)
            assert_error(*request(broker, "POST", "/api/v1/topics/t", b"x" * 11),
                         413, "payload too large")
        assert_error(*request(broker, "POST", "/api/v1/topics/t", b"x" * 11),
                     413, "payload too large")
    finally:
        broker.stop()


def test_invalid_http_endpoint_is_one_sentence(tmp_path):
    from tests.brokerproc import run_twistd

    result = run_twistd(tmp_path, "-n", "reactorapp", "--http", "tcp:notaport",
                        "--data", str(tmp_path / "d"))
    assert result.returncode != 0
    assert result.stderr.strip().startswith("reactorapp: invalid HTTP endpoint 'tcp:notaport'")
    assert "Traceback" not in result.stderr + result.stdout
