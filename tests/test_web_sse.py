"""Server-Sent Events in memory: events, heartbeats on a Clock, back-pressure
through producer/consumer, a bounded buffer, and unsubscribing on the end."""

from __future__ import annotations

import gc
import json

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.message import Message
from reactorapp.web import sse
from reactorapp.web.sse import (
    BUFFER_BYTES, BUFFER_SIZE, HEARTBEAT, HEARTBEAT_BYTES, MAX_FILTERS, EventStream,
)
from tests.test_web_api import Response, Web, dechunk


class Stream:
    """One open GET /api/v1/stream on the in-memory site."""

    def __init__(self, web: Web, query: str = "filter=%23") -> None:
        self.web = web
        opened = len(STARTED)
        self.channel, self.transport = web.send(
            f"GET /api/v1/stream?{query} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        self.response = Response(self.transport.value())
        [self.producer] = STARTED[opened:]
        self._seen = 0

    def pause(self) -> None:
        """What the transport does when its send buffer is full."""
        self.transport.producer.pauseProducing()

    def resume(self) -> None:
        self.transport.producer.resumeProducing()

    def raw(self) -> bytes:
        return dechunk(self.transport.value().partition(b"\r\n\r\n")[2])

    def events(self) -> list[dict]:
        """Events (as their JSON data) written since the last call."""
        text = self.raw().decode()
        blocks = [b for b in text.split("\n\n") if b.startswith("id: ")]
        new, self._seen = blocks[self._seen:], len(blocks)
        return [json.loads(b.split("data: ", 1)[1]) for b in new]

    def publish(self, topic="t", payload=b"x", qos=0, retain=False):
        self.web.hub.publish(Message(topic, payload, qos, retain))


def unhandled_errors() -> list[str]:
    """Failures left at the end of Deferreds, as Twisted logs them on GC."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if e.get("log_failure") is not None
            or "Unhandled error" in (e.get("log_format") or "")]


STARTED: list[EventStream] = []


class RecordedEventStream(EventStream):
    def start(self, send_retained):
        STARTED.append(self)
        super().start(send_retained)


@pytest.fixture
def web(monkeypatch):
    monkeypatch.setattr(sse, "EventStream", RecordedEventStream)
    yield Web()
    STARTED.clear()


def test_stream_headers_and_one_event_per_message(web):
    stream = Stream(web)
    assert stream.response.status == 200
    assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.raw().startswith(b"retry: ")
    stream.publish("a/b", "héllo".encode(), qos=1)
    stream.publish("bin", b"\xff\x00")
    first, second = stream.events()
    assert (first["topic"], first["payload"], first["encoding"]) == ("a/b", "héllo", "utf-8")
    assert first["qos"] == 0  # the stream subscribed at QoS 0
    assert (second["payload"], second["encoding"]) == ("/wA=", "base64")
    assert web.hub.stats.traffic["sse"].sent == [2, 0, 0]
    assert verifyObject(ISubscriber, stream.producer)


def test_filters_qos_and_retained_first(web):
    """Retained messages come first, flagged retain [MQTT-3.3.1-8], once
    each even if several filters match them."""
    web.hub.publish(Message("a/1", b"old", 1, True))
    web.hub.publish(Message("b/1", b"old", 2, True))
    stream = Stream(web, "filter=a/%2B&filter=%2B/1&qos=1")
    retained = stream.events()
    assert [(e["topic"], e["retain"], e["qos"]) for e in retained] == [
        ("a/1", True, 1), ("b/1", True, 1)]
    stream.publish("a/1", qos=2)
    stream.publish("c/2")
    [live] = stream.events()
    assert (live["topic"], live["retain"], live["qos"]) == ("a/1", False, 1)


def test_retained_can_be_skipped(web):
    web.hub.publish(Message("a", b"old", 0, True))
    stream = Stream(web, "filter=a&retained=false")
    assert stream.events() == []


def test_heartbeat_comments_on_the_clock(web):
    stream = Stream(web)
    before = stream.raw()
    web.reactor.advance(HEARTBEAT - 0.1)
    assert stream.raw() == before
    web.reactor.advance(0.1)
    assert stream.raw() == before + HEARTBEAT_BYTES


def test_slow_reader_gets_a_bounded_buffer_and_qos0_drops_are_counted(web):
    """Back-pressure: while the connection cannot take more, events wait in
    the stream's buffer up to its bound; past it QoS 0 messages are dropped,
    counted, and never buffered."""
    stream = Stream(web)
    stream.pause()
    for i in range(BUFFER_SIZE + 25):
        stream.publish(payload=b"%d" % i)
    assert stream.events() == []
    assert len(stream.producer.buffer) == BUFFER_SIZE
    assert web.site.stats.sse_dropped == 25
    assert web.hub.stats.publish_dropped == 25
    web.reactor.advance(HEARTBEAT)  # no heartbeat while paused
    stream.resume()
    events = stream.events()
    assert [e["payload"] for e in events] == [str(i) for i in range(BUFFER_SIZE)]
    assert stream.producer.buffer == []
    stream.publish(payload=b"after")
    assert [e["payload"] for e in stream.events()] == ["after"]
    metrics = web.get("/metrics").body.decode()
    assert "reactorapp_sse_dropped_total 25.0" in metrics


def test_order_is_kept_when_writing_pauses_again(web):
    stream = Stream(web)
    producer = stream.producer
    producer.pauseProducing()
    for i in range(5):
        stream.publish(payload=b"%d" % i)
    writes = []
    write = producer.request.write

    def write_then_pause(data):
        write(data)
        writes.append(data)
        if len(writes) == 2:
            producer.pauseProducing()

    producer.request.write = write_then_pause
    producer.resumeProducing()
    assert len(producer.buffer) == 3
    stream.publish(payload=b"5")  # queued behind the others, not written first
    producer.request.write = write
    producer.resumeProducing()
    assert [e["payload"] for e in stream.events()] == ["0", "1", "2", "3", "4", "5"]


def test_qos1_overflow_ends_the_stream_instead_of_a_silent_drop(web):
    stream = Stream(web, "filter=%23&qos=1")
    stream.pause()
    for _ in range(BUFFER_SIZE):
        stream.publish(qos=1)
    assert not stream.transport.disconnecting
    stream.publish(qos=1)
    assert stream.transport.disconnecting  # aborted
    assert web.site.stats.sse_overflowed == 1
    assert web.hub.subscription_count == 0


def test_the_buffer_is_bounded_by_bytes_too(web):
    """A few large messages fill the buffer long before its event count does."""
    stream = Stream(web, "filter=%23&qos=1")
    stream.pause()
    big = b"x" * (BUFFER_BYTES // 4)
    for _ in range(3):
        stream.publish(payload=big, qos=1)
    stream.publish(payload=big, qos=0)
    assert len(stream.producer.buffer) == 3
    assert stream.producer.buffered <= BUFFER_BYTES
    assert web.site.stats.sse_dropped == 1
    stream.publish(payload=big, qos=1)
    assert stream.transport.disconnecting  # a QoS 1 message that does not fit ends it
    assert web.site.stats.sse_overflowed == 1


def test_bytes_are_counted_back_as_the_reader_drains(web):
    stream = Stream(web)
    stream.pause()
    for i in range(10):
        stream.publish(payload=b"%d" % i)
    assert stream.producer.buffered > 0
    stream.resume()
    assert stream.producer.buffered == 0
    assert len(stream.events()) == 10


def test_too_many_filters_is_a_400(web):
    query = "&".join(f"filter=f/{i}" for i in range(MAX_FILTERS + 1))
    answer = web.get(f"/api/v1/stream?{query}")
    assert answer.status == 400, answer
    assert answer.error() == "too many filters"
    assert web.hub.subscription_count == 0
    query = "&".join(f"filter=f/{i}" for i in range(MAX_FILTERS))
    stream = Stream(web, query)
    assert stream.response.status == 200
    assert web.hub.subscription_count == MAX_FILTERS


@pytest.mark.parametrize("reason", [ConnectionLost(), ConnectionDone()])
def test_unsubscribes_when_the_client_goes_away(web, reason):
    """Like klein cancelling on disconnect: notifyFinish's errback ends the
    subscription and the heartbeat, and the failure goes no further."""
    stream = Stream(web, "filter=a&filter=b")
    assert web.hub.subscription_count == 2 and web.site.stats.sse_streams == 1
    stream.channel.connectionLost(Failure(reason))
    assert web.hub.subscription_count == 0 and web.site.stats.sse_streams == 0
    assert web.reactor.getDelayedCalls() == []
    assert stream.producer.closed
    assert unhandled_errors() == []


def test_stream_close_is_idempotent_and_unregisters():
    from tests.mqtt_harness import Broker

    class FakeRequest:
        producer = None
        transport = None
        channel = "connected"

        def registerProducer(self, producer, streaming):
            self.producer = producer

        def unregisterProducer(self):
            self.producer = None

    hub = Broker().hub
    stats = type("S", (), {"sse_streams": 1})()
    stream = EventStream(FakeRequest(), hub, Clock(), ["#"], 0, stats,
                         hub.stats.traffic_for("sse"))
    stream.request.registerProducer(stream, True)
    stream.close()
    stream.close()
    stream.stopProducing()
    assert stats.sse_streams == 0 and stream.request.producer is None
