"""End to end: shared subscriptions (``$share/GROUP/FILTER``) with paho-mqtt
3.1.1 clients against ``twistd -n reactorapp``: competing consumers split
the messages, and what one leaves unacknowledged goes to another."""

from __future__ import annotations

import queue

import pytest

from reactorapp.mqtt import packets as P
from tests.brokerproc import running_broker
from tests.paho_client import TIMEOUT, PahoClient, published
from tests.rawmqtt import RawClient

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
