"""Retained messages sent again for a repeated SUBSCRIBE [MQTT-3.8.4-3]
obey the session's bounds like everything else: a client that repeats
SUBSCRIBE and never acknowledges cannot grow its queue, spill file or
store rows past them."""

from __future__ import annotations

from reactorapp.hub.message import Message
from reactorapp.mqtt import packets as P
from reactorapp.store.memory import MemoryStore
from tests.brokerproc import running_broker
from tests.mqtt_harness import Broker
from tests.rawmqtt import RawClient, rss_kib

RETAINED = 1000


def retain_topics(broker: Broker, count: int = RETAINED, size: int = 100) -> None:
    for i in range(count):
        broker.hub.publish(Message(f"r/{i}", b"x" * size, 1, True))


def resubscribe(client, times: int) -> None:
    for _ in range(times):
        client.send(P.Subscribe(client.packet_id(), [P.SubscriptionRequest("r/#", 1)]))
        client.take()  # it reads, but never acknowledges


def test_repeated_subscribes_stay_within_the_queue_bounds(tmp_path):
    broker = Broker(max_inflight=20, max_queued_messages=100, max_queued_bytes=0,
                    max_spill_bytes=64 * 1024, spill_directory=str(tmp_path))
    retain_topics(broker)
    client = broker.connect("greedy")
    resubscribe(client, 200)
    session = client.protocol.session
    assert len(session.inflight) == 20
    assert len(session.queue._memory) <= 100
    assert broker.hub.stats.spill_bytes <= 64 * 1024 + 200
    assert broker.hub.stats.queue_refused > 190_000
    assert session.queue._waiters == []  # no Deferred left for nobody to wait on


def test_repeated_subscribes_without_a_spill_directory_keep_the_byte_bound():
    broker = Broker(max_inflight=20, max_queued_messages=100_000,
                    max_queued_bytes=64 * 1024, max_spill_bytes=0)
    retain_topics(broker)
    client = broker.connect("greedy")
    resubscribe(client, 200)
    assert client.protocol.session.queue.bytes <= 64 * 1024 + 200


def test_a_persistent_session_stores_no_more_than_its_bounds():
    store = MemoryStore()
    broker = Broker(max_inflight=20, max_queued_messages=100, max_spill_bytes=0)
    broker.hub.store = store
    retain_topics(broker)
    client = broker.connect("greedy", clean=False)
    resubscribe(client, 50)
    assert store.writes < 50 * 200  # 1,000 rows a SUBSCRIBE without the bound
    session = client.protocol.session
    assert len(session.inflight) + len(session.queue) <= 120


def test_repeated_subscribes_against_twistd_keep_the_broker_small(tmp_path):
    with running_broker(tmp_path, "--store", "memory") as broker:
        publisher = RawClient(broker.host, broker.port)
        publisher.connect("retainer")
        for i in range(500):
            publisher.send(P.Publish(f"r/{i}", b"x" * 1000, 0, True))
        publisher.send(P.PingReq())
        assert publisher.read().type == "PINGRESP"
        client = RawClient(broker.host, broker.port)
        client.connect("greedy")
        before = rss_kib(broker.proc.pid)
        for _ in range(200):
            client.send(P.Subscribe(client.packet_id(), [P.SubscriptionRequest("r/#", 1)]))
        client.send(P.PingReq())
        while client.read().type != "PINGRESP":  # read everything, acknowledge nothing
            pass
        grown_mib = (rss_kib(broker.proc.pid) - before) / 1024
        assert grown_mib < 16, f"broker grew by {grown_mib:.0f} MiB"
