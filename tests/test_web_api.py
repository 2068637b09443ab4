"""The HTTP API in memory: the real site and request class, raw HTTP bytes in
and out over a StringTransport, the hub and MQTT clients of mqtt_harness."""

from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from reactorapp.mqtt.backlog import Backlog
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings
from reactorapp.web.health import Readiness
from reactorapp.web.metrics import new_registry
from reactorapp.web.site import LINGER, make_site
from reactorapp.web.stats import WebStats
from reactorapp.web.stream_tables import MemoryStreamTables
from reactorapp.web.streams import StreamSessions
from tests.mqtt_harness import Broker

LIMIT = 1024


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding") == "chunked":
            body = dechunk(body)
        self.body = body

    def json(self):
        assert self.headers["content-type"].startswith("application/json"), self.headers
        return json.loads(self.body)

    def error(self) -> str:
        """The body of an error answer, checked for its shape."""
        document = self.json()
        assert set(document) == {"error", "detail"}, document
        assert document["detail"].endswith("."), document
        return document["error"]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def dechunk(data: bytes) -> bytes:
    """Whatever complete chunks ``data`` holds (a stream may still be open)."""
    out = b""
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


class Web:
    """A site on a hub, with MQTT clients of that hub at hand."""

    def __init__(self, max_body_size: int = LIMIT, api: dict | None = None,
                 tables=None, settings: MQTTSettings | None = None) -> None:
        self.broker = Broker()
        self.hub = self.broker.hub
        self.reactor = MemoryReactorClock()
        self.readiness = Readiness()
        self.registry = new_registry()
        self.stats = WebStats()
        self.settings = settings = settings or MQTTSettings()
        self.stream_sessions = StreamSessions(
            self.hub, self.reactor, tables or MemoryStreamTables(),
            lambda: Backlog(settings, self.hub.stats), settings, self.stats)
        self.site = make_site(
            self.hub, self.reactor, MQTTFactory(self.hub, self.broker.clock, front_end="websocket"),
            max_body_size=max_body_size, readiness=self.readiness, registry=self.registry,
            api=api, stats=self.stats, stream_sessions=self.stream_sessions)

    def connect(self) -> tuple:
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def send(self, raw: bytes) -> tuple:
        channel, transport = self.connect()
        channel.dataReceived(raw)
        return channel, transport

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> Response:
        headers = {"Host": "hub.test", **(headers or {})}
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        _, transport = self.send(head.encode("latin-1") + (body or b""))
        return Response(transport.value())

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post_json(self, path: str, document, **kw) -> Response:
        return self.request("POST", path, json.dumps(document).encode(), **kw)


@pytest.fixture
def web():
    return Web()


# -- publishing -------------------------------------------------------------

def test_publish_reaches_an_mqtt_subscriber(web):
    """[MQTT-3.3.5-1] an HTTP publish is delivered like any other."""
    client = web.broker.connect("sub")
    client.subscribe(("sensors/#", 1))
    answer = web.post_json("/api/v1/publish", {"topic": "sensors/a", "payload": "21.5", "qos": 1})
    assert answer.status == 200, answer
    assert answer.json()["topic"] == "sensors/a"
    [publish] = client.take()
    assert (publish.topic, publish.payload, publish.qos) == ("sensors/a", b"21.5", 1)
    assert web.hub.stats.traffic["http"].received == [0, 1, 0]


def test_publish_base64_payload_and_retain(web):
    payload = bytes(range(256))
    answer = web.post_json("/api/v1/publish", {
        "topic": "bin", "payload": base64.b64encode(payload).decode(),
        "encoding": "base64", "retain": True})
    assert answer.status == 200, answer
    [retained] = web.get("/api/v1/retained?filter=bin").json()
    assert retained["encoding"] == "base64"
    assert base64.b64decode(retained["payload"]) == payload
    assert retained["retain"] is True


def test_raw_body_publish_with_query(web):
    client = web.broker.connect("sub")
    client.subscribe(("a/#", 2))
    answer = web.request("POST", "/api/v1/topics/a/b%2Fc/d?qos=2&retain=true", b"\x00raw")
    assert answer.status == 200, answer
    assert answer.json() == {"id": answer.json()["id"], "topic": "a/b/c/d", "qos": 2,
                             "retain": True}
    [publish] = client.take()
    assert (publish.topic, publish.payload, publish.qos) == ("a/b/c/d", b"\x00raw", 2)


def test_form_body_does_not_set_query_parameters(web):
    """qos and retain come from the URL only, never from a form-encoded body."""
    answer = web.request("POST", "/api/v1/topics/t", b"qos=2&retain=true",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.json()["qos"] == 0 and answer.json()["retain"] is False


def test_answer_waits_until_the_message_is_durable(web):
    """The 2xx is a promise, like PUBACK: it goes out once hub.publish's
    Deferred fired, and a failure to store is a 503, not a 2xx."""
    pending = []

    def publish(message):
        pending.append(Deferred())
        return pending[-1]

    web.hub.publish = publish
    channel, transport = web.send(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 27\r\n\r\n"
        b'{"topic": "t", "qos": 1}   ')
    assert transport.value() == b""
    pending[0].callback(None)
    assert Response(transport.value()).status == 200

    channel, transport = web.send(
        b"POST /api/v1/topics/t?qos=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    pending[1].errback(RuntimeError("disk full"))
    answer = Response(transport.value())
    assert answer.status == 503 and answer.error() == "not stored"


def test_client_gone_before_the_message_is_durable(web):
    pending = Deferred()
    web.hub.publish = lambda message: pending
    channel, transport = web.send(
        b"POST /api/v1/topics/t?qos=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    channel.connectionLost(Failure(ConnectionLost()))
    pending.callback(None)  # nothing to write to, and no error either
    assert transport.value() == b""


# -- client mistakes: each a 4xx with {"error", "detail"} ---------------------

@pytest.mark.parametrize("body, error", [
    (b"{not json", "invalid JSON"),
    (b"\xff\xfe", "invalid JSON"),
    (b"7", "invalid JSON"),
    (b'{"payload": "x"}', "bad topic"),
    (b'{"topic": ""}', "bad topic"),
    (b'{"topic": "a/+/b"}', "bad topic"),  # [MQTT-3.3.2-2]
    (b'{"topic": "a/#"}', "bad topic"),
    (b'{"topic": "a\\u0000b"}', "bad topic"),  # [MQTT-1.5.3-2]
    (b'{"topic": "$SYS/broker/uptime"}', "bad topic"),
    (b'{"topic": 7}', "bad topic"),
    (b'{"topic": "t", "qos": 3}', "bad request"),
    (b'{"topic": "t", "qos": true}', "bad request"),
    (b'{"topic": "t", "retain": "yes"}', "bad request"),
    (b'{"topic": "t", "payload": 5}', "bad request"),
    (b'{"topic": "t", "payload": "\\ud800"}', "bad request"),
    (b'{"topic": "t", "payload": "***", "encoding": "base64"}', "bad request"),
    (b'{"topic": "t", "encoding": "latin-1"}', "bad request"),
    (b'{"topic": "t", "colour": "blue"}', "bad request"),
])
def test_bad_publish_bodies(web, body, error):
    answer = web.request("POST", "/api/v1/publish", body)
    assert answer.status == 400, answer
    assert answer.error() == error


@pytest.mark.parametrize("path, error", [
    ("/api/v1/topics/", "bad topic"),
    ("/api/v1/topics", "bad topic"),
    ("/api/v1/topics/a/%2B", "bad topic"),
    ("/api/v1/topics/%FF", "bad topic"),
    ("/api/v1/topics/$SYS/x", "bad topic"),
    ("/api/v1/topics/t?qos=5", "bad request"),
    ("/api/v1/topics/t?retain=perhaps", "bad request"),
])
def test_bad_raw_publishes(web, path, error):
    answer = web.request("POST", path, b"x")
    assert answer.status == 400, answer
    assert answer.error() == error


@pytest.mark.parametrize("path", [
    "/api/v1/retained?filter=a/b%23",
    "/api/v1/retained?filter=",
    "/api/v1/retained?filter=%2B/x%23",
    "/api/v1/stream?filter=a/%23/b",
    "/api/v1/stream?qos=9",
    "/api/v1/stream?retained=maybe",
    "/api/v1/retained?filter=%FF",
    "/api/v1/stream?qos=%C2%B2",
    "/api/v1/stream?qos=%B2",
])
def test_bad_filters_and_query_values(web, path):
    answer = web.get(path)
    assert answer.status == 400, answer
    assert answer.error() in ("bad filter", "bad request")


@pytest.mark.parametrize("path", [
    "/nope", "/api", "/api/v1", "/api/v2/publish", "/api/v1/nope",
    "/api/v1/stats/extra", "/static/nope.js", "/healthz/x", "/mqtt/x",
])
def test_unknown_routes_are_json_404s(web, path):
    answer = web.get(path)
    assert answer.status == 404, answer
    assert answer.error() == "not found"


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/api/v1/publish", "POST"),
    ("PUT", "/api/v1/publish", "POST"),
    ("GET", "/api/v1/topics/a", "POST"),
    ("POST", "/api/v1/stats", "GET, HEAD"),
    ("DELETE", "/api/v1/sessions", "GET, HEAD"),
    ("POST", "/api/v1/clients", "GET, HEAD"),
    ("POST", "/metrics", "GET, HEAD"),
    ("POST", "/", "GET, HEAD"),
    ("BREW", "/healthz", "GET, HEAD"),
    ("POST", "/mqtt", "GET"),
])
def test_wrong_methods_are_json_405s(web, method, path, allowed):
    answer = web.request(method, path, b"")
    assert answer.status == 405, answer
    assert answer.error() == "method not allowed"
    assert answer.headers["allow"] == allowed


def test_head_is_answered_like_get(web):
    answer = web.request("HEAD", "/api/v1/stats")
    assert answer.status == 200 and answer.body == b""


def test_cross_site_pages_cannot_change_anything(web):
    """A form on another site must not publish or disconnect (CSRF)."""
    foreign = {"Origin": "http://evil.test"}
    answer = web.post_json("/api/v1/publish", {"topic": "t"}, headers=foreign)
    assert answer.status == 403 and answer.error() == "forbidden"
    answer = web.post_json("/api/v1/publish", {"topic": "t"}, headers={"Origin": "null"})
    assert answer.status == 403
    same = {"Origin": "http://hub.test"}
    assert web.post_json("/api/v1/publish", {"topic": "t"}, headers=same).status == 200
    assert web.get("/api/v1/stats", headers=foreign).status == 200  # reading is fine


# -- the body limit, enforced while reading -----------------------------------

def test_declared_oversized_body_is_refused_before_it_is_read(web):
    channel, transport = web.send(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
    answer = Response(transport.value())
    assert answer.status == 413, answer
    assert answer.error() == "payload too large"
    assert answer.headers["connection"] == "close"
    assert b"100 Continue" not in transport.value()
    # The rest is read and thrown away, then the connection closes.
    channel.dataReceived(b"x" * (LIMIT + 1))
    assert transport.disconnecting


def test_a_client_that_keeps_sending_is_cut_off_after_lingering(web):
    channel, transport = web.send(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n")
    for _ in range(10):
        channel.dataReceived(b"x" * 65536)
    assert Response(transport.value()).status == 413
    assert not transport.disconnecting
    web.reactor.advance(LINGER)
    assert transport.disconnecting


def test_chunked_body_is_refused_once_it_crosses_the_limit(web):
    published = []
    web.hub.publish = published.append
    channel, transport = web.send(
        b"POST /api/v1/topics/t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 600
    channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert transport.value() == b""
    channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    answer = Response(transport.value())
    assert answer.status == 413 and answer.error() == "payload too large"
    channel.dataReceived(b"0\r\n\r\n")
    assert transport.disconnecting
    assert published == []


def test_a_body_at_the_limit_is_accepted(web):
    answer = web.request("POST", "/api/v1/topics/t", b"x" * LIMIT)
    assert answer.status == 200, answer


# -- reading --------------------------------------------------------------------

def test_retained_with_several_filters(web):
    for topic in ("a/1", "a/2", "b/1", "c"):
        web.post_json("/api/v1/publish", {"topic": topic, "payload": topic, "retain": True})
    answer = web.get("/api/v1/retained?filter=a/%2B&filter=b/%23&filter=a/1")
    assert [m["topic"] for m in answer.json()] == ["a/1", "a/2", "b/1"]
    assert [m["topic"] for m in web.get("/api/v1/retained").json()] == ["a/1", "a/2", "b/1", "c"]


def test_clients_sessions_and_disconnect(web):
    """DELETE closes the connection without DISCONNECT, so the will goes out
    [MQTT-3.1.2-8] and a persistent session stays."""
    from reactorapp.mqtt import packets as P

    watcher = web.broker.connect("watcher")
    watcher.subscribe(("wills/#", 0))
    kept = web.broker.connect("kept", clean=False,
                              will=P.Will("wills/kept", b"gone", 0, False))
    kept.subscribe(("x/#", 1))
    clients = web.get("/api/v1/clients").json()
    assert [c["client_id"] for c in clients] == ["kept", "watcher"]
    assert clients[0]["subscriptions"] == {"x/#": 1}
    assert clients[0]["persistent"] is True and clients[0]["front_end"] == "mqtt"

    assert web.get("/api/v1/clients/kept").json()["connected"] is True
    assert web.get("/api/v1/clients/nobody").status == 404
    assert web.request("DELETE", "/api/v1/clients/nobody").error() == "not found"

    answer = web.request("DELETE", "/api/v1/clients/kept")
    assert answer.status == 204 and answer.body == b""
    assert kept.transport.disconnecting
    kept.drop()
    [will] = watcher.take()
    assert (will.topic, will.payload) == ("wills/kept", b"gone")
    assert web.get("/api/v1/clients/kept").status == 404
    sessions = {s["client_id"]: s for s in web.get("/api/v1/sessions").json()}
    assert sessions["kept"]["connected"] is False and "peer" not in sessions["kept"]


def test_client_ids_are_percent_decoded(web):
    web.broker.connect("room/1 sensor")
    assert web.get("/api/v1/clients/room%2F1%20sensor").json()["client_id"] == "room/1 sensor"


def test_stats(web):
    client = web.broker.connect("c")
    client.subscribe(("t", 0))
    client.publish("t", b"x", qos=1)
    web.post_json("/api/v1/publish", {"topic": "t", "qos": 0})
    stats = web.get("/api/v1/stats").json()
    assert stats["clients"]["connected"] == 1
    assert stats["traffic"]["mqtt"] == {"received": [0, 1, 0], "sent": [2, 0, 0]}
    assert stats["traffic"]["http"]["received"] == [1, 0, 0]
    assert stats["messages"] == {"received": 2, "sent": 2, "dropped": 0, "too_large": 0,
                                 "expired": 0}


def test_health_and_readiness(web):
    assert web.get("/healthz").json() == {"status": "ok"}
    web.readiness.add_check("listeners", lambda: False)
    web.readiness.add_check("store", lambda: 1 / 0)
    answer = web.get("/readyz")
    assert answer.status == 503 and answer.error() == "not ready"
    assert "listeners, store" in answer.json()["detail"]
    web.readiness.add_check("listeners", lambda: True)
    web.readiness.add_check("store", lambda: True)
    assert web.get("/readyz").json() == {"status": "ready"}


def test_metrics_and_more_collectors(web):
    """Other parts of the hub add their metrics to the same registry."""
    from prometheus_client import Histogram

    latency = Histogram("reactorapp_store_commit_seconds", "Store commit latency.",
                        registry=web.registry)
    latency.observe(0.003)
    web.broker.connect("c").publish("t", b"x", qos=2)
    answer = web.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.body.decode()
    assert 'reactorapp_messages_received_total{protocol="mqtt",qos="2"} 1.0' in text
    assert "reactorapp_clients_connected 1.0" in text
    assert "reactorapp_store_commit_seconds_count 1.0" in text
    assert "reactorapp_sse_dropped_total 0.0" in text
    openmetrics = web.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.body.endswith(b"# EOF\n")


def test_a_bug_is_a_json_500_without_a_traceback(web):
    def broken(topic_filter):
        raise KeyError("bug")

    web.hub.retained = broken
    answer = web.get("/api/v1/retained")
    assert answer.status == 500 and answer.error() == "internal error"
    assert b"Traceback" not in answer.body


def test_dashboard_and_its_files(web):
    page = web.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert f"/static/{name}".encode() in page.body
        assert web.get(f"/static/{name}").status == 200
    # Nothing is fetched from elsewhere: the dashboard works offline.
    for name in ("/", "/static/app.js", "/static/style.css"):
        assert b"http://" not in web.get(name).body and b"https://" not in web.get(name).body


def test_more_resources_under_the_api_are_described_too():
    """Resources mounted beside ours (webhooks, ...) bring their part of the
    OpenAPI document with them."""
    from reactorapp.web.errors import JSONResource

    class Things(JSONResource):
        openapi = {"paths": {"/api/v1/things": {"get": {"responses": {"200": {
            "description": "Things.", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Thing"}}}}}}}},
            "components": {"schemas": {"Thing": {"type": "object"}}}}

        def json_GET(self, request):
            return {}

    web = Web(api={b"things": Things()})
    assert web.get("/api/v1/things").json() == {}
    document = web.get("/api/v1/openapi.json").json()
    assert "/api/v1/things" in document["paths"] and "/api/v1/publish" in document["paths"]
    assert "Thing" in document["components"]["schemas"]
    assert "Message" in document["components"]["schemas"]
