"""End to end: shared subscriptions (``$share/GROUP/FILTER``) with paho-mqtt
3.1.1 clients against ``twistd -n reactorapp``: competing consumers split
the messages, and what one leaves unacknowledged goes to another."""

from __future__ import annotations

import json
import queue

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from reactorapp.mqtt import packets as P
from tests.brokerproc import running_broker
from tests.paho_client import TIMEOUT, PahoClient, published
from tests.rawmqtt import RawClient
from tests.webhook_receiver import Receiver, the_reactor, within

MAX_INFLIGHT = 8


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    path = tmp_path_factory.mktemp("shared")
    with running_broker(path, "--max-inflight", str(MAX_INFLIGHT)) as broker:
        yield broker
    assert "Traceback" not in broker.log, broker.log


@pytest.fixture
def clients(broker):
    made = []

    def connect(client_id: str, clean_session: bool = True) -> PahoClient:
        client = PahoClient(broker.host, broker.port, client_id, clean_session)
        made.append(client)
        return client.connect()

    yield connect
    for client in made:
        client.close()


def pooled(consumers) -> queue.Queue:
    """One queue of (client id, payload) for several consumers, so that the
    test waits for whichever receives next."""
    pool: queue.Queue = queue.Queue()
    for consumer in consumers:
        def on_message(client, userdata, message, name=consumer.client_id):
            pool.put((name, message.payload))
        consumer.client.on_message = on_message
    return pool


def take(pool: queue.Queue) -> tuple[str, bytes]:
    try:
        return pool.get(timeout=TIMEOUT)
    except queue.Empty:
        raise AssertionError(f"no message within {TIMEOUT} s") from None


def test_three_consumers_share_300_messages_each_once(clients):
    """Each of 300 QoS 1 messages reaches exactly one of three consumers of
    ``$share/work/...``, and each consumer gets some."""
    names = ["consumer-a", "consumer-b", "consumer-c"]
    consumers = [clients(name) for name in names]
    for consumer in consumers:
        assert consumer.subscribe(("$share/work/e2e/jobs/+", 1)) == [1]
    pool = pooled(consumers)
    publisher = clients("producer")
    infos = [publisher.publish(f"e2e/jobs/{i % 7}", b"%d" % i, qos=1) for i in range(300)]
    for info in infos:
        published(info)
    got = [take(pool) for _ in range(300)]
    payloads = [payload for _, payload in got]
    assert sorted(payloads) == sorted(b"%d" % i for i in range(300))
    by_consumer = {name: sum(1 for who, _ in got if who == name) for name in names}
    assert all(count > 0 for count in by_consumer.values()), by_consumer
    # Nothing else is on its way: a marker per consumer, published after
    # the 300, arrives with nothing before it (one connection is handled
    # in order).
    seen: set = set()
    marker = 0
    while seen != set(names):
        marker += 1
        publisher.publish_and_wait("e2e/jobs/0", b"marker-%d" % marker, qos=1)
        who, payload = take(pool)
        assert payload.startswith(b"marker-"), (who, payload)
        seen.add(who)


def test_a_consumer_killed_with_unacknowledged_messages_hands_them_over(broker, clients):
    """A consumer that took QoS 1 messages and never acknowledged them dies
    (no DISCONNECT): the other member of the group gets every one of them,
    so all 20 messages reach the surviving consumer."""
    taker = RawClient(broker.host, broker.port)
    taker.connect("greedy", clean_session=True)
    assert taker.subscribe(("$share/kill/e2e/kill", 1)) == [1]
    survivor = clients("survivor")
    assert survivor.subscribe(("$share/kill/e2e/kill", 1)) == [1]
    publisher = clients("kill-producer")
    for i in range(20):
        publisher.publish_and_wait("e2e/kill", b"%d" % i, qos=1)
    first = taker.read()  # it has some, and acknowledges none of them
    assert first.type == "PUBLISH" and first.qos == 1
    taker.close()
    got = {message.payload for message in survivor.take(20)}
    assert got == {b"%d" % i for i in range(20)}


def test_shared_subscription_gets_no_retained_message(clients):
    """MQTT 5 section 4.8.2: retained messages are not sent to a session
    joining a shared subscription; a plain subscription on the same filter
    gets them."""
    publisher = clients("retainer")
    publisher.publish_and_wait("e2e/kept", b"old", qos=1, retain=True)
    sub = clients("joiner")
    assert sub.subscribe(("$share/r/e2e/kept", 1)) == [1]
    publisher.publish_and_wait("e2e/kept", b"new", qos=1)
    assert sub.next().payload == b"new"
    assert sub.subscribe(("e2e/kept", 1)) == [1]
    assert sub.next().payload == b"old"  # the retained one, for the plain subscription
    publisher.publish_and_wait("e2e/kept", b"", qos=1, retain=True)  # clean up


def test_bad_share_names_are_refused(broker):
    """[MQTT-4.8.2-1] [MQTT-4.8.2-2] SUBACK 0x80 for a malformed shared
    filter (a raw client: paho will not send some of them)."""
    sub = RawClient(broker.host, broker.port)
    try:
        sub.connect("bad-share")
        codes = sub.subscribe(("$share//x", 1), ("$share/g+/x", 1), ("$share/g", 0),
                              ("$share/g/x", 1))
        assert codes == [P.SUBACK_FAILURE] * 3 + [1]
    finally:
        sub.close()


# -- an SSE stream, a webhook rule and an MQTT client in one group ---------------


class Tally:
    """Who got which payload; `done` fires once ``expected`` have arrived.
    Called on the reactor thread (paho's thread goes through callFromThread)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.got: dict[str, list[bytes]] = {"sse": [], "webhook": [], "mqtt": []}
        self.done = defer.Deferred()

    def add(self, who: str, payload: bytes) -> None:
        self.got[who].append(payload)
        if sum(map(len, self.got.values())) >= self.expected and not self.done.called:
            self.done.callback(None)


class SSEEvents:
    """Feeds the ``data:`` lines of an event stream read with treq to a Tally."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = b""
        self.opened = defer.Deferred()

    def chunk(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened.called and b"retry:" in self.buffer:
            self.opened.callback(None)  # subscribed by the time this is written
        *events, self.buffer = self.buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    self.tally.add("sse", json.loads(line[6:])["payload"].encode())


@pytest_twisted.ensureDeferred
async def test_sse_webhook_and_mqtt_members_share_the_messages(tmp_path):
    """An SSE stream (``/api/v1/stream?filter=$share/mixed/...``), a webhook
    rule whose filter is ``$share/mixed/...`` and a paho client are three
    members of one group: 30 QoS 1 messages are split among them, each
    delivered once, and each member gets some."""
    count = 30
    tally = Tally(count)

    def answer(number, received):
        tally.add("webhook", json.loads(received.body)["payload"].encode())
        return 200

    receiver = Receiver(answer)
    url = receiver.listen(the_reactor())
    config = tmp_path / "hub.toml"
    config.write_text(
        "[[webhooks]]\n"
        'name = "mixed"\n'
        'filters = ["$share/mixed/e2e/mixed/#"]\n'
        f'url = "{url}"\n'
        "qos = 1\n")
    context = running_broker(tmp_path, "--config", str(config))
    process = await within(deferToThread(context.__enter__), 30)
    consumer = None
    try:
        base = f"http://127.0.0.1:{process.http_port}"
        response = await within(treq.get(
            f"{base}/api/v1/stream?filter=$share/mixed/e2e/mixed/%23&qos=1", unbuffered=True))
        assert response.code == 200
        events = SSEEvents(tally)
        streaming = treq.collect(response, events.chunk)
        streaming.addErrback(lambda _failure: None)  # ends when the broker stops
        await within(events.opened)

        def join() -> PahoClient:
            client = PahoClient(process.host, process.port, "mixed-mqtt").connect()
            client.client.on_message = lambda c, u, m: the_reactor().callFromThread(
                tally.add, "mqtt", m.payload)
            assert client.subscribe(("$share/mixed/e2e/mixed/#", 1)) == [1]
            return client

        consumer = await within(deferToThread(join))

        def publish_all() -> None:
            client = PahoClient(process.host, process.port, "mixed-producer").connect()
            try:
                for i in range(count):
                    client.publish_and_wait(f"e2e/mixed/{i % 3}", b"%d" % i, qos=1)
            finally:
                client.close()

        await within(deferToThread(publish_all), 30)
        await within(tally.done, 30)
    finally:
        if consumer is not None:
            await within(deferToThread(consumer.close))
        await within(deferToThread(context.__exit__, None, None, None), 30)
        await receiver.stop()
    everything = [p for payloads in tally.got.values() for p in payloads]
    assert sorted(everything) == sorted(b"%d" % i for i in range(count))
    assert all(tally.got.values()), tally.got


def paho5(broker, client_id: str) -> PahoClient:
    """A `PahoClient` speaking MQTT 5 (Clean Start, no Clean Session)."""
    wrapper = PahoClient(broker.host, broker.port, client_id)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, reconnect_on_failure=False)
    for name in ("on_connect", "on_disconnect", "on_subscribe", "on_message"):
        setattr(client, name, getattr(wrapper.client, name))
    wrapper.client = client
    return wrapper


def test_mqtt5_and_311_consumers_share_one_group(broker):
    """A paho MQTT 5 client and a 3.1.1 client in one group: CONNACK says
    shared subscriptions are available, and 20 QoS 1 messages are split
    between them, each delivered once."""
    five = paho5(broker, "five")
    eleven = PahoClient(broker.host, broker.port, "eleven")
    publisher = paho5(broker, "five-producer")
    properties: list = []
    on_connect = five.client.on_connect

    def remember(client, userdata, flags, reason_code, props):
        properties.append(props)
        on_connect(client, userdata, flags, reason_code, props)

    five.client.on_connect = remember
    try:
        five.connect()
        eleven.connect()
        publisher.connect()
        # Absent means available [MQTT 5 3.2.2.3.15]
        assert getattr(properties[0], "SharedSubscriptionAvailable", 1) == 1
        assert five.subscribe(("$share/mixed5/e2e/five/#", 1)) == [1]
        assert eleven.subscribe(("$share/mixed5/e2e/five/#", 1)) == [1]
        pool = pooled([five, eleven])
        for i in range(20):
            publisher.publish_and_wait("e2e/five/x", b"%d" % i, qos=1)
        got = [take(pool) for _ in range(20)]
        assert sorted(p for _, p in got) == sorted(b"%d" % i for i in range(20))
        assert {who for who, _ in got} == {"five", "eleven"}
    finally:
        for client in (five, eleven, publisher):
            client.close()


def test_after_a_restart_the_first_member_back_gets_what_the_others_held(tmp_path):
    """Two persistent consumers are away while 6 QoS 1 messages are queued
    on them in turn; twistd restarts; the first consumer back gets all 6,
    each once, and the other, when it comes back, gets none of them."""
    with running_broker(tmp_path, "--http", "none") as broker:
        for name in ("early", "late"):
            member = PahoClient(broker.host, broker.port, name, clean_session=False).connect()
            assert member.subscribe(("$share/restart/e2e/restart", 1)) == [1]
            member.disconnect()
        publisher = PahoClient(broker.host, broker.port, "restart-producer").connect()
        for i in range(6):
            publisher.publish_and_wait("e2e/restart", b"%d" % i, qos=1)
        publisher.disconnect()
    with running_broker(tmp_path, "--http", "none") as broker:
        early = PahoClient(broker.host, broker.port, "early", clean_session=False).connect()
        try:
            assert sorted(m.payload for m in early.take(6)) == [b"%d" % i for i in range(6)]
            late = PahoClient(broker.host, broker.port, "late", clean_session=False).connect()
            try:
                assert late.subscribe(("e2e/restart-marker", 1)) == [1]
                publisher = PahoClient(broker.host, broker.port, "restart-producer").connect()
                publisher.publish_and_wait("e2e/restart-marker", b"end", qos=1)
                publisher.disconnect()
                assert late.until("e2e/restart-marker", b"end") == []
            finally:
                late.close()
        finally:
            early.close()
