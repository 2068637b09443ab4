"""Slow and absent subscribers: bounded queues, spill files, back-pressure.

The transport's buffer filling up is simulated by calling the protocol's
``pauseProducing``/``resumeProducing``, as Twisted's transports do. A paused
client is congested; one that stays paused for ``slow_subscriber_timeout``
is stuck (`stuck` below), and only then do its queue's bounds apply
(tests/test_flow.py has the congested case).
"""

from __future__ import annotations

import os

import pytest

from reactorapp.hub.hub import HubStats
from reactorapp.hub.message import Message
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.backlog import OVERHEAD, Backlog
from reactorapp.mqtt.session import MQTTSettings
from reactorapp.mqtt.spill import SpillFile
from tests.mqtt_harness import Broker


def entry(i, qos=1, payload=b"x" * 36):
    return (Message(f"t/{i}", payload, qos, properties={"n": i}, sender="s"), qos, False, i)


# -- the spill file ---------------------------------------------------------------


def test_spill_file_round_trip(tmp_path):
    spill = SpillFile(str(tmp_path))
    entries = [entry(i) for i in range(10)]
    for e in entries:
        spill.append(e)
    assert spill.count == 10 and spill.size > 0
    first = spill.read(3, 1 << 30)
    rest = spill.read(100, 1 << 30)
    got = first + rest
    assert [(m.topic, m.payload, m.properties, m.sender, m.id, q, r, s) for m, q, r, s in got] \
        == [(m.topic, m.payload, m.properties, m.sender, m.id, q, r, s) for m, q, r, s in entries]
    assert spill.count == 0 and spill.size == 0
    spill.close()


def test_spill_file_reads_entries_larger_than_a_chunk(tmp_path):
    spill = SpillFile(str(tmp_path))
    big = entry(1, payload=os.urandom(200_000))
    spill.append(entry(0))
    spill.append(big)
    spill.append(entry(2))
    got = spill.read(10, 1 << 30)
    assert [m.payload for m, *_ in got] == [entry(0)[0].payload, big[0].payload, entry(2)[0].payload]


def test_spill_file_leaves_nothing_behind(tmp_path):
    spill = SpillFile(str(tmp_path))
    spill.append(entry(0))
    assert os.listdir(tmp_path) == []  # anonymous: gone with the process
    spill.close()


def test_spill_read_respects_the_byte_budget(tmp_path):
    spill = SpillFile(str(tmp_path))
    for i in range(10):
        spill.append(entry(i))
    assert len(spill.read(100, 1)) == 1  # at least one
    assert 1 < len(spill.read(100, 300)) < 9


# -- the backlog -----------------------------------------------------------------


def backlog(tmp_path=None, **kw):
    settings = MQTTSettings(spill_directory=str(tmp_path) if tmp_path else None, **kw)
    return Backlog(settings, HubStats(0))


def test_backlog_is_a_deque_while_it_fits():
    queue = backlog(max_queued_messages=5)
    for i in range(3):
        queue.append(entry(i))
    assert len(queue) == 3 and queue
    assert [queue.popleft()[3] for _ in range(3)] == [0, 1, 2]
    assert not queue and queue.bytes == 0


def test_qos0_held_then_dropped_oldest_first():
    queue = backlog(max_queued_messages=3)
    for i in range(5):
        queue.hold0(Message(f"t/{i}", b"x"), False)
    assert [m.topic for m, _ in queue.held0] == ["t/2", "t/3", "t/4"]
    assert queue.stats.queue_dropped_qos0 == 2 and queue.stats.publish_dropped == 2


def test_qos1_makes_room_by_dropping_qos0():
    queue = backlog(max_queued_messages=3)
    for i in range(3):
        queue.hold0(Message(f"q0/{i}", b"x"), False)
    queue.append(entry(9))
    assert len(queue.held0) == 2 and len(queue) == 1
    assert queue.stats.queue_dropped_qos0 == 1


def test_qos0_that_does_not_fit_is_dropped_itself():
    queue = backlog(max_queued_messages=2)
    queue.append(entry(0))
    queue.append(entry(1))
    queue.hold0(Message("late", b"x"), False)
    assert not queue.held0 and queue.stats.queue_dropped_qos0 == 1


def test_byte_bound():
    size = 36 + len("t/0") + OVERHEAD
    queue = backlog(max_queued_messages=1000, max_queued_bytes=3 * size)
    for i in range(3):
        queue.hold0(entry(i, 0)[0], False)
    queue.hold0(entry(3, 0)[0], False)
    assert len(queue.held0) == 3 and queue.bytes == 3 * size


def test_overflow_spills_and_comes_back_in_order(tmp_path):
    queue = backlog(tmp_path, max_queued_messages=4)
    for i in range(20):
        queue.append(entry(i))
    assert len(queue) == 20 and queue.stats.queue_spilled == 16
    assert not queue.full()
    assert [queue.popleft()[3] for _ in range(20)] == list(range(20))
    assert not queue


def test_full_when_memory_and_disk_are_full(tmp_path):
    queue = backlog(tmp_path, max_queued_messages=2, max_spill_bytes=400)
    while not queue.full():
        queue.append(entry(len(queue)))
    spilled = queue.stats.queue_spilled
    assert spilled >= 1
    queue.append(entry(99))  # over the quota, still kept, on disk behind the rest
    assert queue.stats.queue_spilled == spilled + 1
    order = [queue.popleft()[3] for _ in range(len(queue))]
    assert order == sorted(order[:-1]) + [99]


def test_without_a_spill_directory_full_means_memory_full():
    queue = backlog(max_queued_messages=2)
    queue.append(entry(0))
    assert not queue.full()
    queue.append(entry(1))
    assert queue.full()


def test_waiters_are_released_at_half_the_bound():
    queue = backlog(max_queued_messages=4)
    for i in range(5):
        queue.append(entry(i))
    waited = []
    queue.wait().addCallback(waited.append)
    assert queue.stats.publishers_held == 1
    queue.popleft()
    queue.popleft()
    assert waited == []
    queue.popleft()
    assert waited == [None]


def test_spill_files_together_stay_under_the_total(tmp_path):
    """Many slow or absent clients must not fill the disk: past
    max_spill_total_bytes no session spills more, and what is read back or
    dropped makes room again."""
    settings = MQTTSettings(spill_directory=str(tmp_path), max_queued_messages=1,
                            max_spill_bytes=1 << 20, max_spill_total_bytes=300)
    stats = HubStats(0)
    first, second = Backlog(settings, stats), Backlog(settings, stats)
    first.append(entry(0))  # in memory
    while not first.full(entry(9)[0]):
        first.append(entry(len(first)))
    assert 300 <= stats.spill_bytes < 400 and stats.queue_spilled == len(first) - 1
    second.append(entry(0))
    assert second.full(entry(1)[0])  # no spill room left for anybody
    first.popleft()  # reads spilled entries back: room again
    assert stats.spill_bytes < 300 and not second.full(entry(1)[0])
    first.clear()
    assert stats.spill_bytes == 0


def test_clear_releases_waiters_and_spill(tmp_path):
    queue = backlog(tmp_path, max_queued_messages=1)
    for i in range(3):
        queue.append(entry(i))
    waited = []
    queue.wait().addCallback(waited.append)
    queue.clear()
    assert waited == [None] and not queue and len(queue) == 0


# -- through the protocol ----------------------------------------------------------


@pytest.fixture
def broker(tmp_path):
    return Broker(max_inflight=2, max_queued_messages=4, max_spill_bytes=0,
                  spill_directory=str(tmp_path), max_pending_acks=3)


def stuck(client) -> None:
    """The client's transport is full and drains nothing for the slow
    subscriber timeout: from then it is slow."""
    client.protocol.pauseProducing()
    client.advance(client.broker.factory.settings.slow_subscriber_timeout)


def test_producer_is_registered(broker):
    client = broker.connect("c")
    assert client.transport.producer is client.protocol and client.transport.streaming


def test_stuck_subscriber_gets_qos0_in_order_after_resuming(broker):
    """Nothing is written to a stuck client; held messages go out in order
    when it drained."""
    sub = broker.connect("sub")
    sub.subscribe(("t/#", 0))
    stuck(sub)
    pub = broker.connect("pub")
    for i in range(3):
        pub.publish(f"t/{i}", b"x")
    assert sub.take() == []
    sub.protocol.resumeProducing()
    assert [p.topic for p in sub.take()] == ["t/0", "t/1", "t/2"]


def test_stuck_subscriber_loses_oldest_qos0_only(broker):
    sub = broker.connect("sub")
    sub.subscribe(("t/#", 0))
    stuck(sub)
    pub = broker.connect("pub")
    for i in range(10):
        pub.publish(f"t/{i}", b"x")
    sub.protocol.resumeProducing()
    assert [p.topic for p in sub.take()] == ["t/6", "t/7", "t/8", "t/9"]
    assert broker.hub.stats.queue_dropped_qos0 == 6


def test_a_stuck_subscriber_does_not_slow_another(broker):
    slow, fast = broker.connect("slow"), broker.connect("fast")
    slow.subscribe(("t", 0))
    fast.subscribe(("t", 0))
    stuck(slow)
    pub = broker.connect("pub")
    for i in range(100):
        pub.publish("t", str(i).encode())
    assert [p.payload for p in fast.take()] == [str(i).encode() for i in range(100)]
    assert len(slow.protocol.session.queue.held0) == 4
    assert pub.transport.producerState == "producing"


def test_full_subscriber_holds_the_publishers_ack_back(broker):
    """[MQTT-4.3.2-2] PUBACK is only sent once the message is placed: a
    subscriber with no room left holds it back instead of losing a message."""
    sub = broker.connect("sub")
    sub.subscribe(("t", 1))
    stuck(sub)
    pub = broker.connect("pub")
    for i in range(4):
        pub.publish("t", str(i).encode(), qos=1)
    assert [p.type for p in pub.take()] == ["PUBACK"] * 3  # the 4th filled the queue
    assert broker.hub.stats.publishers_held == 1
    sub.protocol.resumeProducing()
    got = sub.take()
    assert [p.payload for p in got] == [b"0", b"1"]  # the window
    for p in got:
        sub.send(P.PubAck(p.packet_id))
    assert [p.type for p in pub.take()] == ["PUBACK"]
    received = [p.payload for p in sub.take()]
    assert received == [b"2", b"3"]
    assert broker.hub.stats.publish_dropped == 0


def test_publisher_is_not_read_from_past_max_pending_acks(broker):
    sub = broker.connect("sub")
    sub.subscribe(("t", 1))
    stuck(sub)
    pub = broker.connect("pub")
    for i in range(6):
        pub.publish("t", str(i).encode(), qos=1)
    assert pub.transport.producerState == "paused"
    sub.drop()  # the slow client goes away: its publishers go on
    assert pub.transport.producerState == "producing"
    assert [p.type for p in pub.take()] == ["PUBACK"] * 6


def test_offline_session_over_its_bounds_refuses_and_counts(broker):
    sub = broker.connect("sub", clean=False)
    sub.subscribe(("t", 1))
    sub.send(P.Disconnect())
    pub = broker.connect("pub")
    for i in range(6):
        pub.publish("t", str(i).encode(), qos=1)
    assert [p.type for p in pub.take()] == ["PUBACK"] * 6  # nobody is held back
    assert broker.hub.stats.queue_refused == 2
    sub = broker.connect("sub", clean=False)
    got = sub.take()
    assert [p.payload for p in got] == [b"0", b"1"]
    for p in got:
        sub.send(P.PubAck(p.packet_id))
    assert [p.payload for p in sub.take()] == [b"2", b"3"]


def test_spilled_messages_all_arrive_in_order(tmp_path):
    broker = Broker(max_inflight=5, max_queued_messages=10, spill_directory=str(tmp_path))
    sub = broker.connect("sub")
    sub.subscribe(("t", 1))
    stuck(sub)
    pub = broker.connect("pub")
    for i in range(500):
        pub.publish("t", str(i).encode(), qos=1)
    assert [p.type for p in pub.take()] == ["PUBACK"] * 500
    assert broker.hub.stats.queue_spilled == 490  # all but the 10 kept in memory
    sub.protocol.resumeProducing()
    received = []
    while True:
        packets = sub.take()
        if not packets:
            break
        for p in packets:
            received.append(int(p.payload))
            sub.send(P.PubAck(p.packet_id))
    assert received == list(range(500))


def test_closing_unregisters_the_producer(broker):
    """A producer left registered would keep a TLS connection from closing."""
    client = broker.connect("c")
    client.send(P.Disconnect())
    assert client.transport.producer is None


def test_a_spill_file_that_cannot_be_read_empties_the_queue(tmp_path):
    """A broken disk loses the spilled messages (counted), never the session."""
    queue = backlog(tmp_path, max_queued_messages=1)
    for i in range(3):
        queue.append(entry(i))
    queue._spill._read_at = 10 ** 9  # as if the file were cut short
    assert queue.popleft()[3] == 0
    assert not queue
    assert queue.stats.publish_dropped == 2
    with pytest.raises(IndexError):
        queue.popleft()


def test_max_queued_messages_0_goes_straight_to_disk(tmp_path):
    queue = backlog(tmp_path, max_queued_messages=0)
    for i in range(5):
        queue.append(entry(i))
    assert queue.stats.queue_spilled == 5
    assert [queue.popleft()[3] for _ in range(5)] == list(range(5))


def test_spilling_writes_64_kib_at_a_time(tmp_path, monkeypatch):
    """The reactor thread pays a system call per 64 KiB spilled, not per
    message."""
    import reactorapp.mqtt.spill as spill_module

    writes = []
    real = os.pwrite
    monkeypatch.setattr(spill_module.os, "pwrite",
                        lambda fd, data, at: writes.append(len(data)) or real(fd, data, at))
    spill = SpillFile(str(tmp_path))
    entries = [entry(i) for i in range(2000)]
    for e in entries:
        spill.append(e)
    assert len(writes) < 2000 // 500 and all(size >= 65536 for size in writes)
    got = spill.read(10_000, 1 << 30)
    assert [m.properties["n"] for m, *_ in got] == list(range(2000))


def test_an_entry_that_cannot_be_written_is_not_kept(tmp_path, monkeypatch):
    import reactorapp.mqtt.spill as spill_module

    spill = SpillFile(str(tmp_path))
    spill.append(entry(0))

    def full(fd, data, at):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spill_module.os, "pwrite", full)
    with pytest.raises(OSError):
        spill.append(entry(1, payload=b"x" * 70_000))
    assert spill.count == 1
