"""Webhooks end to end: the broker under twistd in a child process, MQTT
clients publishing, a twisted.web receiver in this process.

The receiver runs on this process's reactor, so everything that blocks (the
broker's start, paho's acknowledgements) runs in a thread with
`deferToThread`; every wait is bounded. Retry delays in the rules are tiny.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.brokerproc import running_broker
from tests.paho_client import PahoClient
from tests.webhook_receiver import the_reactor, Receiver, within

MESSAGES = 20


def write_config(tmp_path, url: str, **extra) -> str:
    path = tmp_path / "hub.toml"
    fields = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    path.write_text(
        "sys-interval = 0\n"
        "[[webhooks]]\n"
        'name = "sink"\n'
        'filters = ["sensors/#"]\n'
        f'url = "{url}"\n'
        'secret = "s3cret"\n'
        "timeout = 2\n"
        "retry = { max_attempts = 100, base_delay = 0.02, max_delay = 0.1 }\n" + fields)
    return str(path)


class Broker:
    """`running_broker` entered and left in a thread."""

    def __init__(self, tmp_path, *args) -> None:
        self._context = running_broker(tmp_path, *args)
        self.process = None

    async def start(self) -> Broker:
        self.process = await within(deferToThread(self._context.__enter__), 30)
        return self

    async def kill(self) -> None:
        await within(deferToThread(self.process.kill), 20)

    async def stop(self) -> None:
        await within(deferToThread(self._context.__exit__, None, None, None), 30)


def publish_all(port: int, messages) -> None:
    """Publish at QoS 1 and wait for every PUBACK (in a thread)."""
    client = PahoClient("127.0.0.1", port, "publisher").connect()
    try:
        for topic, payload in messages:
            client.publish_and_wait(topic, payload, qos=1)
    finally:
        client.close()


class Sink:
    """A receiver that fails or is away until told otherwise, and fires
    `all_delivered` once every expected payload has had a 2xx."""

    def __init__(self, expected) -> None:
        self.expected = set(expected)
        self.failing = True
        self.delivered: dict[bytes, str] = {}
        self.keys_seen: dict[bytes, set[str]] = {}
        self.all_delivered = defer.Deferred()
        self.receiver = Receiver(self._answer)

    def _answer(self, number, received):
        payload = json.loads(received.body)["payload"].encode()
        self.keys_seen.setdefault(payload, set()).add(received.header("Idempotency-Key"))
        if self.failing:
            return 503
        self.delivered.setdefault(payload, received.header("Idempotency-Key"))
        if set(self.delivered) >= self.expected and not self.all_delivered.called:
            self.all_delivered.callback(None)
        return 200


async def crash_with_pending_deliveries(tmp_path, receiver_down: bool):
    payloads = [b"m%02d" % i for i in range(MESSAGES)]
    sink = Sink(payloads)
    url = sink.receiver.listen(the_reactor())
    if receiver_down:
        await sink.receiver.stop()  # nobody listens on the port for now
    config = write_config(tmp_path, url)

    broker = await Broker(tmp_path, "--config", config).start()
    try:
        await within(deferToThread(
            publish_all, broker.process.port, [(f"sensors/{p.decode()}", p) for p in payloads]))
        if not receiver_down:
            await within(sink.receiver.received(1))  # deliveries are failing
    finally:
        await broker.kill()  # SIGKILL: no clean shutdown, no final flush

    sink.failing = False
    if receiver_down:
        sink.receiver.listen(the_reactor(), int(url.split(":")[2].split("/")[0]))
    broker = await Broker(tmp_path, "--config", config).start()
    try:
        await within(sink.all_delivered, 30)
    finally:
        await broker.stop()
        await sink.receiver.stop()
    # Every delivery kept its idempotency key across the crash.
    assert all(len(keys) == 1 for keys in sink.keys_seen.values())
    assert len(set(sink.delivered.values())) == MESSAGES
    # One at a time (max_concurrency 1): in publish order, crash or not.
    assert list(sink.delivered) == payloads
    return sink


@pytest_twisted.ensureDeferred
async def test_sigkill_with_failing_receiver_then_every_qos1_delivery_arrives(tmp_path):
    sink = await crash_with_pending_deliveries(tmp_path, receiver_down=False)
    assert set(sink.delivered) == {b"m%02d" % i for i in range(MESSAGES)}


@pytest_twisted.ensureDeferred
async def test_sigkill_with_receiver_down_then_every_qos1_delivery_arrives(tmp_path):
    sink = await crash_with_pending_deliveries(tmp_path, receiver_down=True)
    assert set(sink.delivered) == {b"m%02d" % i for i in range(MESSAGES)}


@pytest_twisted.ensureDeferred
async def test_api_rule_survives_a_restart_and_shows_in_metrics(tmp_path):
    sink = Sink([b"after-restart"])
    sink.failing = False
    url = sink.receiver.listen(the_reactor())
    broker = await Broker(tmp_path).start()
    api = f"http://127.0.0.1:{broker.process.http_port}/api/v1/webhooks"
    try:
        response = await within(treq.post(api, json={
            "name": "made-by-api", "filters": ["sensors/#"], "url": url,
            "retry": {"base_delay": 0.02, "max_delay": 0.1}}))
        assert response.code == 201
        await within(treq.content(response))
    finally:
        await broker.stop()

    broker = await Broker(tmp_path).start()
    base = f"http://127.0.0.1:{broker.process.http_port}"
    try:
        response = await within(treq.get(f"{base}/api/v1/webhooks"))
        rules = json.loads(await within(treq.content(response)))
        assert [(r["name"], r["source"]) for r in rules] == [("made-by-api", "api")]
        await within(deferToThread(
            publish_all, broker.process.port, [("sensors/x", b"after-restart")]))
        await within(sink.all_delivered)
        response = await within(treq.get(f"{base}/metrics"))
        text = (await within(treq.content(response))).decode()
        assert 'reactorapp_webhook_delivered_total{rule="made-by-api"} 1.0' in text
    finally:
        await broker.stop()
        await sink.receiver.stop()
