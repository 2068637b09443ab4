"""Publishers that wait for nothing, against ``twistd -n reactorapp``.

Raw-socket publishers write PUBLISHes as fast as TCP takes them. A broker
that reads faster than it writes must not drop what a reading subscriber is
owed: it stops reading from the publishers until the subscriber drains
(reactorapp/hub/flow.py). Counts only, never timings.
"""

from __future__ import annotations

import pytest

from tests.blast import TOPIC, Counter, Publisher, receive, receive_all
from tests.brokerproc import running_broker
from tests.rawmqtt import RawClient, rss_kib

PUBLISHERS = 4
EACH = 200_000


def start_publishers(broker, publishers: int, each: int, qos: int = 0) -> list[Publisher]:
    threads = [Publisher(broker.host, broker.port, i, each, qos) for i in range(publishers)]
    for thread in threads:
        thread.start()
    return threads


def subscriber(broker, name: str, qos: int = 0, rcvbuf: int | None = None) -> RawClient:
    client = RawClient(broker.host, broker.port, rcvbuf=rcvbuf)
    client.connect(name)
    assert client.subscribe((TOPIC.decode(), qos)) == [qos]
    return client


def test_blast_fan_in_loses_nothing_for_a_reading_subscriber(tmp_path):
    """[MQTT-4.6.0-6] Four unpaced publishers, one subscriber that reads:
    every message arrives, in order per publisher."""
    with running_broker(tmp_path, "--store", "memory") as broker:
        reader = subscriber(broker, "reader")
        publishers = start_publishers(broker, PUBLISHERS, EACH)
        got = receive(reader, Counter(PUBLISHERS), PUBLISHERS * EACH)
        for p in publishers:
            p.finish()
        assert got.next == [EACH] * PUBLISHERS and got.out_of_order == 0


def test_a_stuck_subscriber_costs_the_reading_one_nothing(tmp_path):
    """The same with a second subscriber that never reads: after
    --slow-subscriber-timeout it holds nobody back, the reading one still
    gets everything, and the broker's memory stays bounded."""
    with running_broker(tmp_path, "--store", "memory", "--slow-subscriber-timeout", "1") as broker:
        stuck = subscriber(broker, "stuck", rcvbuf=4096)
        reader = subscriber(broker, "reader")
        before = rss_kib(broker.proc.pid)
        publishers = start_publishers(broker, PUBLISHERS, EACH)
        got = receive(reader, Counter(PUBLISHERS), PUBLISHERS * EACH)
        for p in publishers:
            p.finish()
        grown_mib = (rss_kib(broker.proc.pid) - before) / 1024
        assert got.next == [EACH] * PUBLISHERS and got.out_of_order == 0
        # One --send-buffer (64 KiB) and a queue of at most 1,000 messages
        # for the stuck client, plus the interpreter's own growth.
        assert grown_mib < 64, f"broker grew by {grown_mib:.0f} MiB"
        stuck.close()


def test_blast_fan_out_gives_every_reading_subscriber_everything(tmp_path):
    """One unpaced publisher, sixteen subscribers that read."""
    each = EACH
    with running_broker(tmp_path, "--store", "memory") as broker:
        readers = [subscriber(broker, f"reader-{i}") for i in range(16)]
        [publisher] = start_publishers(broker, 1, each)
        counters = receive_all(readers, [Counter(1) for _ in readers], each)
        publisher.finish()
        assert [c.next for c in counters] == [[each]] * 16
        assert sum(c.out_of_order for c in counters) == 0


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_blast_qos1_loses_nothing_acknowledged(tmp_path, store):
    """[MQTT-4.3.2-2] QoS 1 publishers that never wait for their PUBACKs:
    every acknowledged message reaches the subscriber, once, in order."""
    each = 20_000
    with running_broker(tmp_path, "--store", store) as broker:
        reader = subscriber(broker, "reader", qos=1)
        publishers = start_publishers(broker, PUBLISHERS, each, qos=1)
        got = receive(reader, Counter(PUBLISHERS), PUBLISHERS * each, qos=1)
        for p in publishers:
            p.finish()
        assert [p.acked for p in publishers] == [each] * PUBLISHERS
        assert got.next == [each] * PUBLISHERS and got.out_of_order == 0
