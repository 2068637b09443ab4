"""MQTT 5 metadata end to end through ``twistd -n reactorapp``: published
over HTTP with treq, read back from an event stream, from two webhook rules
(JSON and raw) received by a twisted.web receiver in this process, and from
the retained API.

Everything runs on this process's reactor (pytest-twisted); the broker's
start and stop run in a thread; every wait is bounded.
"""

from __future__ import annotations

import base64
import json

import pytest_twisted
import treq
from twisted.internet import defer
from twisted.web.client import HTTPConnectionPool

from tests.test_webhooks_e2e import Broker
from tests.webhook_receiver import Receiver, the_reactor, within

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
