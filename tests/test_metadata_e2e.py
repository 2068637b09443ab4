"""MQTT 5 metadata end to end through ``twistd -n reactorapp``: published
over HTTP with treq, read back from an event stream, from two webhook rules
(JSON and raw) received by a twisted.web receiver in this process, and from
the retained API.

Everything runs on this process's reactor (pytest-twisted); the broker's
start and stop run in a thread; every wait is bounded.
"""

from __future__ import annotations

import base64
import http.client
import json
import queue

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.web.client import HTTPConnectionPool

from tests.brokerproc import running_broker
from tests.test_webhooks_e2e import Broker
from tests.webhook_receiver import Receiver, the_reactor, within

TIMEOUT = 10.0
CORRELATION = b"\x00req-42\xff"
METADATA = {
    "content_type": "application/json",
    "payload_format": "utf-8",
    "user_properties": [["site", "north"], ["unit", "C"], ["site", "south"]],
    "response_topic": "replies/panel",
    "correlation_data": base64.b64encode(CORRELATION).decode(),
    "message_expiry": 3600,
}


def write_config(tmp_path, url: str) -> str:
    path = tmp_path / "hub.toml"
    rules = "".join(
        "[[webhooks]]\n"
        f'name = "{name}"\n'
        'filters = ["meta/#"]\n'
        f'url = "{url}"\n'
        f'format = "{form}"\n'
        "retry = { max_attempts = 3, base_delay = 0.02, max_delay = 0.1 }\n"
        for name, form in (("as-json", "json"), ("as-raw", "raw")))
    path.write_text("sys-interval = 0\n" + rules)
    return str(path)


class EventCollector:
    """Reads an event stream's body as it comes: fires ``opened`` at the
    first bytes (the stream is subscribed by then) and ``event`` with the
    first event's JSON data."""

    def __init__(self) -> None:
        self.data = b""
        self.opened = defer.Deferred()
        self.event = defer.Deferred()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        if not self.opened.called:
            self.opened.callback(None)
        if self.event.called:
            return
        for block in self.data.split(b"\n\n")[:-1]:
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self.event.callback(json.loads(line[len(b"data: "):]))
                    return


@pytest_twisted.ensureDeferred
async def test_metadata_published_over_http_reaches_a_stream_webhooks_and_the_retained_api(
        tmp_path):
    reactor = the_reactor()
    receiver = Receiver()
    url = receiver.listen(reactor)
    broker = await Broker(tmp_path, "--config", write_config(tmp_path, url)).start()
    base = f"http://127.0.0.1:{broker.process.http_port}/api/v1"
    pool = HTTPConnectionPool(reactor, persistent=False)
    stream_done = None
    try:
        stream = await within(treq.get(f"{base}/stream?filter=meta/%23&qos=1",
                                       unbuffered=True, pool=pool))
        assert stream.code == 200
        events = EventCollector()
        stream_done = treq.collect(stream, events)
        stream_done.addErrback(lambda failure: None)  # ends when the broker stops
        await within(events.opened)

        answer = await within(treq.post(f"{base}/publish", pool=pool, json={
            "topic": "meta/kitchen", "payload": json.dumps({"on": True}), "qos": 1,
            "retain": True, **METADATA}))
        assert answer.code == 200, await treq.text_content(answer)
        await within(treq.content(answer))

        event = await within(events.event)
        assert event["topic"] == "meta/kitchen"
        assert {k: event[k] for k in METADATA if k != "message_expiry"} == {
            k: v for k, v in METADATA.items() if k != "message_expiry"}
        assert 3500 < event["message_expiry"] <= 3600  # the time left

        requests = await within(receiver.received(2))
        by_rule = {r.header("X-Reactorapp-Rule"): r for r in requests}
        envelope = json.loads(by_rule["as-json"].body)
        assert envelope["payload"] == '{"on": true}'
        assert envelope["user_properties"] == METADATA["user_properties"]
        assert base64.b64decode(envelope["correlation_data"]) == CORRELATION
        assert envelope["response_topic"] == "replies/panel"
        assert 3500 < envelope["message_expiry"] <= 3600
        raw = by_rule["as-raw"]
        assert raw.body == b'{"on": true}'
        assert raw.header("Content-Type") == "application/json"
        assert raw.header("X-Reactorapp-Payload-Format") == "utf-8"
        assert raw.header("X-Reactorapp-Response-Topic") == "replies/panel"
        assert base64.b64decode(raw.header("X-Reactorapp-Correlation-Data")) == CORRELATION

        retained = await within(treq.get(f"{base}/retained?filter=meta/%23", pool=pool))
        [shown] = json.loads(await within(treq.content(retained)))
        assert shown["content_type"] == "application/json"
        assert shown["user_properties"] == METADATA["user_properties"]
        assert shown["retain"] is True

        refused = await within(treq.post(f"{base}/publish", pool=pool, json={
            "topic": "meta/x", "response_topic": "replies/+"}))
        assert refused.code == 400
        assert json.loads(await within(treq.content(refused)))["error"] == "bad response topic"
    finally:
        await broker.stop()
        if stream_done is not None:
            await within(stream_done)
        await within(pool.closeCachedConnections())
        await receiver.stop()
    assert "Traceback" not in broker.process.log


# -- with paho-mqtt at MQTT 5 (no reactor of ours: paho on its thread, every wait bounded) --

class Paho5:
    """A paho client at protocol level 5 whose callbacks fill queues."""

    def __init__(self, broker, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        self.events: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.events.put(("connack", rc))
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.events.put(
            ("suback", codes))
        self.client.on_message = lambda c, u, message: self.messages.put(message)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        kind, code = self.events.get(timeout=TIMEOUT)
        assert (kind, code.is_failure) == ("connack", False), code

    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)
        kind, codes = self.events.get(timeout=TIMEOUT)
        assert kind == "suback" and not codes[0].is_failure, codes

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def http_json(broker, method: str, path: str, document=None):
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
    try:
        body = None if document is None else json.dumps(document)
        connection.request(method, path, body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _level5_connect() -> bool:
    """Whether this build answers a level-5 CONNECT (the MQTT 5 connection
    handling, ``reactorapp.mqtt.v5``); the message path alone is tested in
    memory by test_web_metadata.py."""
    try:
        import reactorapp.mqtt.v5  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _level5_connect(), reason="MQTT 5 CONNECT handling is not in this build")
def test_http_metadata_reaches_an_mqtt5_subscriber_and_mqtt5_metadata_the_http_api(tmp_path):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    with running_broker(tmp_path, "--sys-interval", "0") as broker:
        subscriber = Paho5(broker, "sub5")
        try:
            subscriber.subscribe("meta/#")
            status, _ = http_json(broker, "POST", "/api/v1/publish", {
                "topic": "meta/request", "payload": "{}", "qos": 1, **METADATA})
            assert status == 200
            got = subscriber.messages.get(timeout=TIMEOUT)
            p = got.properties
            assert (got.topic, got.payload) == ("meta/request", b"{}")
            assert p.ContentType == "application/json"
            assert p.PayloadFormatIndicator == 1
            assert p.UserProperty == [tuple(pair) for pair in METADATA["user_properties"]]
            assert p.ResponseTopic == "replies/panel"
            assert p.CorrelationData == CORRELATION
            assert 3500 < p.MessageExpiryInterval <= 3600

            # ... and the other way: an MQTT 5 publisher's metadata in the HTTP API.
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = "text/plain"
            properties.ResponseTopic = "replies/device"
            properties.CorrelationData = b"\x01\x02"
            properties.UserProperty = ("k", "v")
            info = subscriber.client.publish("meta/reply", b"ok", qos=1, retain=True,
                                             properties=properties)
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()
            status, [shown] = http_json(broker, "GET", "/api/v1/retained?filter=meta/reply")
            assert status == 200
            assert (shown["content_type"], shown["response_topic"]) == (
                "text/plain", "replies/device")
            assert base64.b64decode(shown["correlation_data"]) == b"\x01\x02"
            assert shown["user_properties"] == [["k", "v"]]
        finally:
            subscriber.close()
        broker.stop()
    assert "Traceback" not in broker.log
