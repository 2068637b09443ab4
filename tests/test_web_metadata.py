"""MQTT 5 metadata over HTTP, in memory: the publish API sets it (single and
batch), refuses what MQTT could not carry, and the retained API, event
streams (plain and named sessions) and webhooks show it; an expired message
is shown nowhere and sent nowhere. Time is the tests' Clock."""

from __future__ import annotations

import base64
import json

import pytest
from zope.interface import implementer

from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.message import Message
from reactorapp.mqtt import packets as P
from reactorapp.web import sse
from reactorapp.webhooks.delivery import Delivery
from reactorapp.webhooks.payload import envelope, render
from reactorapp.webhooks.rules import parse_rule
from tests.mqtt5_harness import connect5
from tests.test_stream_sessions import Events
from tests.test_web_api import Web
from tests.test_web_sse import STARTED, RecordedEventStream, Stream
from tests.test_webhooks_outbox import make, sample

CORRELATION = b"\x00\x01req-7\xff"
METADATA = {
    "content_type": "application/json",
    "payload_format": "utf-8",
    "user_properties": [["unit", "C"], ["site", "north"], ["unit", "K"]],
    "response_topic": "replies/kitchen",
    "correlation_data": base64.b64encode(CORRELATION).decode(),
    "message_expiry": 60,
}
PROPERTIES = {
    "content_type": "application/json",
    "payload_format_indicator": 1,
    "user_property": [("unit", "C"), ("site", "north"), ("unit", "K")],
    "response_topic": "replies/kitchen",
    "correlation_data": CORRELATION,
    "message_expiry_interval": 60,
}


@implementer(ISubscriber)
class Recorder:
    """A hub subscriber that keeps what it gets."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, message, qos, retained):
        self.messages.append(message)


@pytest.fixture
def web(monkeypatch):
    monkeypatch.setattr(sse, "EventStream", RecordedEventStream)
    yield Web()
    STARTED.clear()


def advance(web: Web, seconds: float) -> None:
    """The hub's clock and the site's move together, as the one reactor does."""
    web.broker.clock.advance(seconds)
    web.reactor.advance(seconds)


def recorder(web, topic_filter="#") -> Recorder:
    r = Recorder()
    web.hub.subscribe(r, topic_filter, 1)
    return r


# -- setting it ----------------------------------------------------------------

def test_a_publish_sets_the_properties_with_the_conventions_keys(web):
    r = recorder(web)
    answer = web.post_json("/api/v1/publish", {"topic": "k/t", "payload": "{}", **METADATA})
    assert answer.status == 200, answer
    [message] = r.messages
    assert message.properties == PROPERTIES


def test_user_properties_as_an_object_and_none_at_all(web):
    r = recorder(web)
    web.post_json("/api/v1/publish", {"topic": "k/t", "user_properties": {"a": "1", "b": "2"}})
    web.post_json("/api/v1/publish", {"topic": "k/t"})
    web.post_json("/api/v1/publish", {"topic": "k/t", "payload_format": "bytes"})
    first, plain, marked = r.messages
    assert first.properties == {"user_property": [("a", "1"), ("b", "2")]}
    assert plain.properties is None  # 3.1.1 traffic carries nothing new
    assert marked.properties == {"payload_format_indicator": 0}


def test_a_batch_sets_each_messages_own_properties(web):
    r = recorder(web)
    batch = [{"topic": "a", "content_type": "text/plain"}, {"topic": "b"},
             {"topic": "c", "message_expiry": 5}]
    answer = web.post_json("/api/v1/publish", batch)
    assert answer.status == 200, answer
    assert [m.properties for m in r.messages] == [
        {"content_type": "text/plain"}, None, {"message_expiry_interval": 5}]
    ndjson = "\n".join(json.dumps(item) for item in batch).encode()
    web.request("POST", "/api/v1/publish", ndjson,
                headers={"Content-Type": "application/x-ndjson"})
    assert r.messages[3].properties == {"content_type": "text/plain"}


@pytest.mark.parametrize("fields, error, words", [
    ({"response_topic": "replies/+"}, "bad response topic", "wildcard"),
    ({"response_topic": "replies/#"}, "bad response topic", "wildcard"),
    ({"response_topic": ""}, "bad response topic", "empty"),
    ({"payload": base64.b64encode(b"\xff\xfe").decode(), "encoding": "base64",
      "payload_format": "utf-8"}, "bad payload format", "not valid UTF-8"),
    ({"payload_format": "text"}, "bad request", "'utf-8' or 'bytes'"),
    ({"content_type": 7}, "bad request", "must be a string"),
    ({"content_type": "a\u0000b"}, "bad request", "U+0000"),
    ({"user_properties": "a=b"}, "bad request", "object or a list"),
    ({"user_properties": [["a"]]}, "bad request", "not a pair"),
    ({"user_properties": {"a": 1}}, "bad request", "must be a string"),
    ({"correlation_data": "not base64!"}, "bad request", "base64"),
    ({"correlation_data": 12}, "bad request", "base64 string"),
    ({"message_expiry": 0}, "bad request", "from 1 to 4294967295"),
    ({"message_expiry": 2**32}, "bad request", "from 1 to 4294967295"),
    ({"message_expiry": True}, "bad request", "whole seconds"),
    ({"message_expiry": "60"}, "bad request", "whole seconds"),
])
def test_what_mqtt_could_not_carry_is_a_400_that_says_why(web, fields, error, words):
    """A Response Topic is a topic name [MQTT-3.3.2-14]; strings are MQTT's
    UTF-8 strings [MQTT-1.5.4-2]; a payload marked UTF-8 is UTF-8."""
    r = recorder(web)
    answer = web.post_json("/api/v1/publish", {"topic": "k/t", **fields})
    assert answer.status == 400, answer
    assert answer.error() == error
    assert words in answer.json()["detail"]
    assert r.messages == []


def test_a_batch_with_one_bad_message_publishes_none(web):
    r = recorder(web)
    answer = web.post_json("/api/v1/publish", [
        {"topic": "a"}, {"topic": "b", "response_topic": "x/#"}])
    assert answer.status == 400
    document = answer.json()
    assert document["error"] == "invalid batch"
    assert document["errors"][0]["index"] == 1
    assert "wildcard" in document["errors"][0]["detail"]
    assert r.messages == []


# -- showing it: retained messages ----------------------------------------------

def test_the_retained_api_shows_the_metadata_and_the_time_left(web):
    """The time left [MQTT-3.3.2-6]; once it is gone, so is the message [MQTT-3.3.2-5]."""
    web.post_json("/api/v1/publish", {"topic": "k/t", "payload": "{}", "retain": True,
                                      **METADATA})
    web.post_json("/api/v1/publish", {"topic": "k/plain", "payload": "p", "retain": True})
    advance(web, 20)
    [plain, shown] = web.get("/api/v1/retained?filter=k/%23").json()
    assert "content_type" not in plain and "message_expiry" not in plain
    assert {k: shown[k] for k in METADATA} == {**METADATA, "message_expiry": 40}
    advance(web, 40)
    assert [m["topic"] for m in web.get("/api/v1/retained?filter=k/%23").json()] == ["k/plain"]


# -- event streams ----------------------------------------------------------------

def test_an_event_carries_the_metadata(web):
    stream = Stream(web)
    web.post_json("/api/v1/publish", {"topic": "k/t", "payload": "{}", **METADATA})
    web.post_json("/api/v1/publish", {"topic": "k/plain"})
    event, plain = stream.events()
    assert {k: event[k] for k in METADATA} == METADATA
    assert set(plain) == {"id", "topic", "payload", "encoding", "qos", "retain", "timestamp"}


def test_a_message_that_expires_while_a_stream_is_paused_is_not_sent(web):
    """[MQTT-3.3.2-5]; what is still sent shows the time left then [MQTT-3.3.2-6]."""
    stream = Stream(web)
    stream.pause()
    web.post_json("/api/v1/publish", {"topic": "k/short", "message_expiry": 5})
    web.post_json("/api/v1/publish", {"topic": "k/long", "message_expiry": 50})
    web.post_json("/api/v1/publish", {"topic": "k/plain"})
    advance(web, 10)
    stream.resume()
    events = stream.events()
    assert [(e["topic"], e.get("message_expiry")) for e in events] == [
        ("k/long", 40), ("k/plain", None)]
    assert web.stats.sse_expired == web.hub.stats.messages_expired == 1


def test_a_retained_message_that_expired_is_not_sent_to_a_new_stream(web):
    web.post_json("/api/v1/publish", {"topic": "k/a", "payload": "a", "retain": True, "message_expiry": 5})
    web.post_json("/api/v1/publish", {"topic": "k/b", "payload": "b", "retain": True, "message_expiry": 30})
    advance(web, 10)
    [event] = Stream(web).events()
    assert (event["topic"], event["retain"], event["message_expiry"]) == ("k/b", True, 20)
    assert web.hub.stats.messages_expired == 1  # the hub let it go, from the store too


def test_a_stream_sessions_backlog_drops_what_expired_and_counts_it(web):
    """[MQTT-3.3.2-5] for a session's queue, [MQTT-3.3.2-6] for what is left."""
    first = Events(web, "session=s1&filter=k/%23&qos=1")
    first.cut()  # the session keeps what comes while no stream is attached
    web.post_json("/api/v1/publish", {"topic": "k/a", "qos": 1, "payload": "gone",
                                      "message_expiry": 5})
    web.post_json("/api/v1/publish", {"topic": "k/b", "qos": 1, "payload": "kept",
                                      "message_expiry": 100, "content_type": "text/plain"})
    advance(web, 30)
    again = Events(web, "session=s1&filter=k/%23&qos=1")
    data = [json.loads(b["data"]) for b in again.blocks() if "data" in b]
    assert [(d["payload"], d["message_expiry"], d["content_type"]) for d in data] == [
        ("kept", 70, "text/plain")]
    assert web.stats.sse_expired == 1
    assert "reactorapp_sse_expired_total 1.0" in web.get("/metrics").body.decode()


# -- webhooks ---------------------------------------------------------------------

def test_the_webhook_outbox_drops_expired_messages_and_counts_them():
    """[MQTT-3.3.2-5]: a webhook delivery is a subscriber's copy too."""
    t = make(max_concurrency=1)
    t.outbox.add_rule(t.rule)
    t.hub.publish(Message("s/first", b"1", 1))  # holds the only place under way
    t.hub.publish(Message("s/short", b"2", 1, properties={"message_expiry_interval": 5},
                          timestamp=t.clock.seconds()))
    t.hub.publish(Message("s/long", b"3", 1, properties={"message_expiry_interval": 500},
                          timestamp=t.clock.seconds()))
    t.clock.advance(10)
    t.dispatcher.finish(0)
    t.dispatcher.finish(1)
    assert t.dispatcher.payloads() == [b"1", b"3"]
    assert sample(t, "expired") == 1 and t.hub.stats.messages_expired == 1
    assert sample(t, "pending") == 0
    assert t.store.tables.outbox == {}  # the expired one's row went too


def test_a_delivery_that_expires_between_attempts_is_dropped_not_dead():
    from twisted.internet.task import Clock
    from reactorapp.webhooks.dispatcher import Attempt, Dispatcher
    from reactorapp.webhooks.metrics import WebhookMetrics
    from prometheus_client import CollectorRegistry

    clock = Clock()
    dispatcher = Dispatcher(clock, client=None, jitter=lambda: 0.5)
    tries = []

    def send(rule, delivery, attempt, metrics):
        from twisted.internet.defer import succeed
        tries.append(attempt)
        return succeed(Attempt(False, True, "HTTP 503", None))

    dispatcher.send = send
    rule = parse_rule({"name": "r", "filters": ["#"], "url": "http://127.0.0.1:1/",
                       "retry": {"max_attempts": 5, "base_delay": 10}})
    target = type("T", (), {"rule": rule,
                            "metrics": WebhookMetrics(CollectorRegistry()).for_rule("r")})()
    delivery = Delivery(1, "r", "t", b"x", 1, False, "k", 0.0, 0.0, True,
                        {"message_expiry_interval": 5}, 5.0)
    results = []
    dispatcher.deliver(target, delivery).addCallback(results.append)
    clock.advance(60)
    [result] = results
    assert result.expired and not result.delivered
    assert tries == [1]


def test_the_webhook_envelope_and_raw_headers_carry_the_metadata():
    message = Message("k/t", b"{}", 1, properties=dict(PROPERTIES), timestamp=100.0)
    delivery = Delivery.of(7, "r", message, 1, "e-1", 100.0)
    document = json.loads(envelope("r", delivery, 112.5))
    assert {k: document[k] for k in METADATA} == {**METADATA, "message_expiry": 48}

    rule = parse_rule({"name": "r", "filters": ["#"], "url": "http://127.0.0.1:1/",
                       "format": "raw"})
    headers, body = render(rule, delivery, 1, 130.0)
    assert body == b"{}"
    one = lambda name: headers.getRawHeaders(name.encode())[0].decode()  # noqa: E731
    assert one("Content-Type") == "application/json"
    assert one("X-Reactorapp-Payload-Format") == "utf-8"
    assert one("X-Reactorapp-Response-Topic") == "replies/kitchen"
    assert base64.b64decode(one("X-Reactorapp-Correlation-Data")) == CORRELATION
    assert one("X-Reactorapp-Message-Expiry") == "30"
    assert headers.getRawHeaders(b"X-Reactorapp-User-Property") == [
        b"unit=C", b"site=north", b"unit=K"]


def test_a_content_type_that_is_no_header_value_stays_out():
    message = Message("k/t", b"x", 1, properties={"content_type": "a\r\nX-Evil: 1"})
    rule = parse_rule({"name": "r", "filters": ["#"], "url": "http://127.0.0.1:1/",
                       "format": "raw"})
    headers, _ = render(rule, Delivery.of(1, "r", message, 1, "k", 0.0), 1, 0.0)
    assert headers.getRawHeaders(b"Content-Type") == [b"application/octet-stream"]
    assert not headers.hasHeader(b"X-Evil")


def test_a_raw_publish_takes_the_metadata_in_its_query(web):
    r = recorder(web)
    correlation = base64.b64encode(CORRELATION).decode().replace("+", "%2B").replace("=", "%3D")
    answer = web.request(
        "POST", "/api/v1/topics/k/t?qos=1&content_type=application/json&payload_format=utf-8"
        "&user_property=unit=C&user_property=site%3Dnorth&user_property=unit=K"
        f"&response_topic=replies/kitchen&correlation_data={correlation}&message_expiry=60",
        b"{}")
    assert answer.status == 200, answer
    [message] = r.messages
    assert message.properties == PROPERTIES
    assert message.payload == b"{}"


@pytest.mark.parametrize("query, words", [
    ("message_expiry=soon", "whole seconds"),
    ("response_topic=a/%2B", "wildcard"),
    ("user_property=novalue", "name=value"),
    ("payload_format=utf-8", "not valid UTF-8"),
])
def test_a_raw_publish_with_bad_metadata_is_a_400(web, query, words):
    r = recorder(web)
    answer = web.request("POST", f"/api/v1/topics/k/t?{query}", b"\xff")
    assert answer.status == 400, answer
    assert words in answer.json()["detail"]
    assert r.messages == []


# -- MQTT 5 subscribers and publishers (in memory: the codec at level 5) ---------------

def test_http_metadata_reaches_an_mqtt5_subscriber_as_publish_properties(web):
    """Payload Format Indicator, Response Topic, Correlation Data, User
    Properties in order and Content Type unchanged [MQTT-3.3.2-4]
    [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
    [MQTT-3.3.2-20], whoever published."""
    subscriber = connect5(web.broker, "sub5")
    subscriber.subscribe(("k/#", 1))
    old = web.broker.connect("sub311")
    old.subscribe(("k/#", 1))
    answer = web.post_json("/api/v1/publish", {"topic": "k/t", "payload": "{}", "qos": 1,
                                              **METADATA})
    assert answer.status == 200, answer
    advance(web, 0)
    [publish] = [p for p in subscriber.take() if type(p) is P.Publish]
    assert publish.payload == b"{}"
    assert publish.properties == PROPERTIES  # 60 seconds left: no time passed
    [plain] = [p for p in old.take() if p.type == "PUBLISH"]
    assert plain.payload == b"{}"  # 3.1.1 gets the message without what it cannot carry


def test_an_mqtt5_publishers_metadata_shows_in_the_http_api(web):
    publisher = connect5(web.broker, "pub5")
    publisher.publish("k/r", b"ok", 1, retain=True, content_type="text/plain",
                      response_topic="replies/x", correlation_data=b"\x01",
                      user_property=[("a", "1")], message_expiry_interval=30)
    advance(web, 10)
    [shown] = web.get("/api/v1/retained?filter=k/r").json()
    assert {k: shown[k] for k in ("content_type", "response_topic", "correlation_data",
                                  "user_properties", "message_expiry")} == {
        "content_type": "text/plain", "response_topic": "replies/x",
        "correlation_data": "AQ==", "user_properties": [["a", "1"]], "message_expiry": 20}
