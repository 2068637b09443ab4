"""The dispatcher against real twisted.web receivers on loopback.

HTTP goes over real sockets; back-off and timeouts run on a `WatchedClock`,
so a test waits until a retry is scheduled and then moves time, instead of
sleeping. Every wait on the reactor is bounded by `within`.
"""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry

from reactorapp.hub.hub import Hub
from reactorapp.hub.message import Message
from reactorapp.webhooks.delivery import Delivery
from reactorapp.webhooks.dispatcher import Dispatcher, Result, make_client, retry_after_seconds
from reactorapp.webhooks.memorystore import MemoryWebhookStore
from reactorapp.webhooks.metrics import WebhookMetrics
from reactorapp.webhooks.outbox import Outbox
from reactorapp.webhooks.rules import parse_rule
from reactorapp.webhooks.signing import verify
from tests.webhook_receiver import the_reactor, HOLD, Receiver, WatchedClock, within


@pytest_twisted.async_yield_fixture
async def http():
    client, pool = make_client(the_reactor())
    yield client
    await pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def receivers():
    made = []

    def make(answer=lambda number, received: 200):
        receiver = Receiver(answer)
        receiver.listen(the_reactor())
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        await receiver.stop()


def target(url, **fields):
    retry = fields.pop("retry", {"max_attempts": 3, "base_delay": 2.0, "max_delay": 8.0})
    rule = parse_rule({"name": "r", "filters": ["#"], "url": url, "timeout": 30,
                       "retry": retry, **fields})
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry).for_rule("r")
    return SimpleNamespace(rule=rule, metrics=metrics, registry=registry)


def delivery(payload=b"21.5", id=7, key="k-42"):
    return Delivery(id, "r", "sensors/kitchen", payload, 1, False, key, 1700000000.5, 0.0, True)


def value(t, name):
    suffix = "" if name == "in_flight" else "_total"
    return t.registry.get_sample_value(f"reactorapp_webhook_{name}{suffix}", {"rule": "r"})


@pytest_twisted.ensureDeferred
async def test_success_sends_the_json_envelope(http, receivers):
    receiver = receivers()
    t = target(receiver.url)
    result = await within(Dispatcher(WatchedClock(), http).deliver(t, delivery()))
    assert result == Result(True, 1, "HTTP 200")
    (request,) = receiver.requests
    assert request.method == b"POST"
    assert request.header("Content-Type") == "application/json"
    assert json.loads(request.body) == {
        "topic": "sensors/kitchen", "payload": "21.5", "encoding": "utf-8",
        "qos": 1, "retain": False, "message_id": "k-42", "timestamp": 1700000000.5,
        "rule": "r",
    }
    assert request.header("Idempotency-Key") == "k-42"
    assert request.header("X-Reactorapp-Attempt") == "1"
    assert request.header("X-Reactorapp-Signature") is None  # no secret, no signature
    assert value(t, "delivered") == 1 and value(t, "in_flight") == 0


@pytest_twisted.ensureDeferred
async def test_raw_format_binary_payload_and_rule_headers(http, receivers):
    receiver = receivers()
    t = target(receiver.url, format="raw", method="PUT",
               headers={"Authorization": "Bearer x", "Content-Type": "application/cbor"})
    d = delivery(payload=b"\xff\x00bin")
    d.topic = "caf\u00e9/1"
    await within(Dispatcher(WatchedClock(), http).deliver(t, d))
    (request,) = receiver.requests
    assert request.method == b"PUT" and request.body == b"\xff\x00bin"
    assert request.header("Content-Type") == "application/cbor"
    assert request.header("Authorization") == "Bearer x"
    assert request.header("X-Reactorapp-Topic") == "caf%C3%A9/1"
    assert request.header("X-Reactorapp-Qos") == "1"
    assert request.header("X-Reactorapp-Retain") == "0"


@pytest_twisted.ensureDeferred
async def test_signature_verifies_with_the_secret(http, receivers):
    receiver = receivers()
    t = target(receiver.url, secret="s3cret")
    clock = WatchedClock()
    clock.advance(1767225600)
    await within(Dispatcher(clock, http).deliver(t, delivery(payload=b"\x80binary")))
    (request,) = receiver.requests
    stamp = request.header("X-Reactorapp-Timestamp")
    signature = request.header("X-Reactorapp-Signature")
    assert stamp == "1767225600" and signature.startswith("sha256=")
    assert verify("s3cret", stamp, request.body, signature, now=1767225600 + 10)
    assert not verify("other", stamp, request.body, signature)
    assert not verify("s3cret", stamp, request.body + b" ", signature)
    assert not verify("s3cret", "1767225601", request.body, signature)
    assert not verify("s3cret", stamp, request.body, signature, now=1767225600 + 3600)
    assert json.loads(request.body)["encoding"] == "base64"


@pytest_twisted.ensureDeferred
async def test_500_then_200_is_retried_and_delivered_once(http, receivers):
    receiver = receivers(lambda number, received: 500 if number == 1 else 200)
    t = target(receiver.url)
    clock = WatchedClock()
    d = Dispatcher(clock, http, jitter=lambda: 0.0).deliver(t, delivery())
    await within(clock.scheduled(1.0))  # base 2 s, "equal jitter" at its lowest: 1 s
    clock.advance(1.0)
    assert await within(d) == Result(True, 2, "HTTP 200")
    first, second = receiver.requests
    assert first.body == second.body
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key") == "k-42"
    assert second.header("X-Reactorapp-Attempt") == "2"
    assert (value(t, "delivered"), value(t, "failed_attempts"), value(t, "retries")) == (1, 1, 1)


@pytest_twisted.ensureDeferred
async def test_backoff_grows_with_jitter_and_is_capped(http, receivers):
    receiver = receivers(lambda number, received: 503)
    t = target(receiver.url, retry={"max_attempts": 4, "base_delay": 2.0, "max_delay": 5.0})
    clock = WatchedClock()
    d = Dispatcher(clock, http, jitter=lambda: 0.5).deliver(t, delivery())
    for delay in (1.5, 3.0, 3.75):  # 2, 4, then 8 capped at 5; times 0.75
        await within(clock.scheduled(delay))
        clock.advance(delay)
    result = await within(d)
    assert result == Result(False, 4, "HTTP 503 Service Unavailable")
    assert len(receiver.requests) == 4


@pytest_twisted.ensureDeferred
async def test_429_honours_retry_after(http, receivers):
    receiver = receivers(
        lambda number, received: (429, {b"Retry-After": b"7"}) if number == 1 else 200)
    t = target(receiver.url)
    clock = WatchedClock()
    d = Dispatcher(clock, http, jitter=lambda: 0.0).deliver(t, delivery())
    call = await within(clock.scheduled(7.0))  # not the 1 s back-off
    clock.advance(6.9)
    assert call.active() and len(receiver.requests) == 1
    clock.advance(0.1)
    assert await within(d) == Result(True, 2, "HTTP 200")


def test_retry_after_as_a_date():
    assert retry_after_seconds(b"Wed, 21 Oct 2015 07:28:30 GMT", 1445412480.0) == 30.0
    assert retry_after_seconds(b"120", 0) == 120.0
    assert retry_after_seconds(b"999999", 0) == 3600.0
    assert retry_after_seconds(b"soon", 0) is None
    assert retry_after_seconds(None, 0) is None


@pytest_twisted.ensureDeferred
async def test_hanging_receiver_times_out_and_is_retried(http, receivers):
    receiver = receivers(lambda number, received: HOLD if number == 1 else 200)
    t = target(receiver.url, timeout=5)
    clock = WatchedClock()
    d = Dispatcher(clock, http, jitter=lambda: 0.0).deliver(t, delivery())
    await within(receiver.received(1))
    clock.advance(5)  # the request's timeout
    await within(clock.scheduled(1.0))
    clock.advance(1.0)
    result = await within(d)
    assert result == Result(True, 2, "HTTP 200")
    assert value(t, "failed_attempts") == 1 and value(t, "in_flight") == 0


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_retried_then_dead(http):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = target(f"http://127.0.0.1:{port}/hook",
               retry={"max_attempts": 2, "base_delay": 2.0, "max_delay": 2.0})
    clock = WatchedClock()
    d = Dispatcher(clock, http, jitter=lambda: 0.0).deliver(t, delivery())
    await within(clock.scheduled(1.0))
    clock.advance(1.0)
    result = await within(d)
    assert not result.delivered and result.attempts == 2
    assert "ConnectionRefused" in result.reason
    assert value(t, "retries") == 1 and value(t, "failed_attempts") == 2


@pytest.mark.parametrize("status", [400, 404, 410, 301])
@pytest_twisted.ensureDeferred
async def test_other_4xx_and_3xx_are_not_retried(http, receivers, status):
    receiver = receivers(lambda number, received: status)
    t = target(receiver.url)
    clock = WatchedClock()
    result = await within(Dispatcher(clock, http).deliver(t, delivery()))
    assert not result.delivered and result.attempts == 1
    assert result.reason.startswith(f"HTTP {status}")
    assert len(receiver.requests) == 1 and not clock.getDelayedCalls()
    assert value(t, "retries") == 0


@pytest_twisted.ensureDeferred
async def test_cancel_stops_a_delivery_during_its_backoff(http, receivers):
    receiver = receivers(lambda number, received: 500)
    t = target(receiver.url)
    clock = WatchedClock()
    d = Dispatcher(clock, http, jitter=lambda: 0.0).deliver(t, delivery())
    await within(clock.scheduled(1.0))
    d.cancel()
    failure = []
    d.addErrback(failure.append)
    assert failure and not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_connections_are_reused_from_the_pool(http, receivers):
    receiver = receivers()
    t = target(receiver.url)
    dispatcher = Dispatcher(WatchedClock(), http)
    for n in range(3):
        await within(dispatcher.deliver(t, delivery(id=n)))
    # One TCP connection served the three requests: the pool kept it open.
    assert len({r.peer_port for r in receiver.requests}) == 1
    assert [r.header("X-Reactorapp-Delivery") for r in receiver.requests] == ["0", "1", "2"]


# -- with the outbox: many deliveries to one receiver -----------------------------

def outbox_for(http, url, clock, **fields):
    hub = Hub(clock)
    outbox = Outbox(hub, MemoryWebhookStore(), Dispatcher(clock, http, jitter=lambda: 0.0),
                    clock, WebhookMetrics(CollectorRegistry()))
    rule = parse_rule({"name": "r", "filters": ["s/#"], "url": url, "timeout": 30,
                       "retry": {"base_delay": 2.0, "max_delay": 2.0}, **fields})
    outbox.add_rule(rule)
    return hub


def publish(hub, count):
    for i in range(count):
        hub.publish(Message("s/x", b"%d" % i, 1))


@pytest_twisted.ensureDeferred
async def test_concurrency_limit_is_respected_by_a_real_receiver(http, receivers):
    receiver = receivers(lambda number, received: HOLD)
    hub = outbox_for(http, receiver.url, WatchedClock(), max_concurrency=3)
    publish(hub, 7)
    await within(receiver.received(3))
    assert receiver.open == 3
    for n in range(4, 8):
        receiver.release()
        await within(receiver.received(n))  # one finished, the next one starts
        assert receiver.open == 3
    while receiver.held:
        receiver.release()
    assert receiver.max_open == 3
    assert sorted(json.loads(r.body)["payload"] for r in receiver.requests) == [
        str(i) for i in range(7)]


@pytest_twisted.ensureDeferred
async def test_concurrency_one_keeps_publish_order_through_a_retry(http, receivers):
    delivered = []

    def answer(number, received):
        if number == 3:
            return 500  # the third message fails once
        delivered.append(json.loads(received.body)["payload"])
        return 200

    receiver = receivers(answer)
    clock = WatchedClock()
    hub = outbox_for(http, receiver.url, clock)
    publish(hub, 6)
    await within(clock.scheduled(1.0))
    assert delivered == ["0", "1"] and len(receiver.requests) == 3  # the rest wait
    clock.advance(1.0)
    await within(receiver.received(7))
    assert delivered == ["0", "1", "2", "3", "4", "5"]
    assert receiver.max_open == 1


def test_retry_after_is_parsed_strictly():
    """Only ASCII digits are seconds: '²' and other digits float() refuses
    are no value at all, and a long run of digits is the cap."""
    assert retry_after_seconds("\u00b2".encode("latin-1"), 0) is None
    assert retry_after_seconds("\u0663".encode("utf-8"), 0) is None
    assert retry_after_seconds(b"9" * 5000, 0) == 3600.0


@pytest_twisted.ensureDeferred
async def test_client_connections_do_not_log_their_factories(receivers):
    """Without a pool every delivery opens a connection; Twisted would log
    "Starting factory" and "Stopping factory" for each. The client's
    endpoints (public Agent API) keep them quiet."""
    from twisted.logger import globalLogPublisher

    receiver = receivers()
    client, pool = make_client(the_reactor(), persistent=False)
    logged = []

    def observe(event):
        factory = event.get("factory")
        if factory is not None and "Client" in type(factory).__name__:
            logged.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(2):
            result = await within(Dispatcher(WatchedClock(), client).deliver(
                target(receiver.url), delivery()))
            assert result.delivered
    finally:
        globalLogPublisher.removeObserver(observe)
        await pool.closeCachedConnections()
    assert len(receiver.requests) == 2 and logged == []
