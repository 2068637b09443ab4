"""Hostile and slow clients against a real ``twistd -n reactorapp``.

- A live fuzz: many connections send random and mutated packets while a
  well-behaved pair of clients exchange messages; afterwards the broker is
  up, its memory bounded, and every message arrived.
- Slow consumers: a subscriber that never reads while a publisher sends far
  more than the memory bound; the broker's RSS stays under a stated bound
  and a second subscriber gets every message, in order.

Memory is read from /proc/PID/status (VmRSS); the bounds are generous on
purpose (a broker that buffers for a slow reader grows by the whole stream:
100 MB and more here).
"""

from __future__ import annotations

import random
import socket
import threading

import pytest

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.brokerproc import running_broker
from tests.rawmqtt import RawClient, rss_kib

MIB = 1024


class GoodSubscriber:
    """Reads on a thread, acknowledges, and records payload numbers."""

    def __init__(self, broker, client_id: str, topic_filter: str, qos: int = 1):
        self.client = RawClient(broker.host, broker.port)
        assert self.client.connect(client_id).return_code == 0
        assert self.client.subscribe((topic_filter, qos)) == [qos]
        self.received: list[int] = []
        self.done = threading.Event()
        self.expected = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, expected: int) -> None:
        self.expected = expected
        self._thread.start()

    def _run(self) -> None:
        try:
            while len(self.received) < self.expected:
                packet = self.client.read(timeout=60)
                if packet.type == "PUBLISH":
                    self.received.append(int(packet.payload[:8]))
                    if packet.qos == 1:
                        self.client.send(P.PubAck(packet.packet_id))
        except BaseException as e:  # reported by wait()
            self.error = e
        finally:
            self.done.set()

    def wait(self, timeout: float = 120) -> list[int]:
        assert self.done.wait(timeout), f"got {len(self.received)} of {self.expected}"
        if self.error is not None:
            raise AssertionError(f"after {len(self.received)} messages") from self.error
        return self.received


def publish_all(broker, client_id: str, topic: str, count: int, size: int,
                window: int = 20) -> None:
    """Publish ``count`` QoS 1 messages numbered 0.., with at most ``window``
    unacknowledged, as a well-behaved client does."""
    pub = RawClient(broker.host, broker.port)
    assert pub.connect(client_id).return_code == 0
    padding = b"x" * max(0, size - 8)
    pending = 0
    for i in range(count):
        pub.send(P.Publish(topic, b"%08d" % i + padding, 1, packet_id=i % 65535 + 1))
        pending += 1
        while pending >= window:
            if pub.read(timeout=60).type == "PUBACK":
                pending -= 1
    while pending:
        if pub.read(timeout=60).type == "PUBACK":
            pending -= 1
    pub.close()


def still_serving(broker) -> None:
    assert broker.proc.poll() is None, broker.log
    probe = RawClient(broker.host, broker.port)
    assert probe.connect("probe").return_code == 0
    probe.send(P.PingReq())
    assert probe.read().type == "PINGRESP"
    probe.close()


# -- live fuzz -------------------------------------------------------------------

def _valid_packets(rng: random.Random, n: int) -> list[bytes]:
    topic = f"fz/{rng.randrange(100)}"
    choices = [
        lambda: P.Publish(topic, rng.randbytes(rng.randrange(200)), 0),
        lambda: P.Publish(topic, b"q", 1, rng.random() < 0.3, packet_id=rng.randrange(1, 65536)),
        lambda: P.Publish(topic, b"q", 2, packet_id=rng.randrange(1, 65536)),
        lambda: P.Subscribe(rng.randrange(1, 65536), [P.SubscriptionRequest(
            rng.choice(["fz/#", "#", "+/+", "$SYS/#", topic]), rng.randrange(3))]),
        lambda: P.Unsubscribe(rng.randrange(1, 65536), ["fz/#"]),
        lambda: P.PubAck(rng.randrange(1, 65536)),
        lambda: P.PubRec(rng.randrange(1, 65536)),
        lambda: P.PubRel(rng.randrange(1, 65536)),
        lambda: P.PubComp(rng.randrange(1, 65536)),
        lambda: P.PingReq(),
    ]
    return [encode(rng.choice(choices)()) for _ in range(n)]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(5)
        if kind == 0 and data:  # flip a byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1 and data:  # cut
            del data[rng.randrange(len(data)):]
        elif kind == 2:  # insert garbage
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 20))
        elif kind == 3:  # a remaining length that promises a lot
            data += bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F])
        else:  # repeat a slice
            a = rng.randrange(len(data) + 1)
            data += data[a:a + rng.randrange(1, 50)]
    return bytes(data)


def _fuzz_connection(broker, rng: random.Random) -> None:
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    try:
        strategy = rng.randrange(4)
        connect = encode(P.Connect(client_id=f"fz{rng.randrange(10 ** 9)}",
                                   clean_session=rng.random() < 0.8, keep_alive=rng.randrange(60)))
        if strategy == 0:
            payload = rng.randbytes(rng.randrange(1, 3000))
        elif strategy == 1:
            payload = _mutate(rng, connect) + b"".join(_valid_packets(rng, 5))
        elif strategy == 2:
            payload = connect + b"".join(_mutate(rng, p) if rng.random() < 0.3 else p
                                         for p in _valid_packets(rng, rng.randrange(1, 40)))
        else:
            payload = connect + b"".join(_valid_packets(rng, rng.randrange(1, 40)))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the broker closes once it sees the end
        while sock.recv(65536):
            pass
    except OSError:
        pass  # closed by the broker mid-send: a fine answer to garbage
    finally:
        sock.close()


def test_live_fuzz(tmp_path):
    """[MQTT-4.8.0-1] protocol errors close only the offending connection:
    after 800 hostile connections the broker serves, its memory is bounded,
    and a well-behaved subscriber got all 2000 messages, in order."""
    seed = random.randrange(1 << 30)
    count = 2000
    with running_broker(tmp_path, "--max-packet-size", "65536",
                        "--connect-timeout", "2") as broker:
        good = GoodSubscriber(broker, "good-sub", "good/#")
        good.start(count)
        baseline = rss_kib(broker.proc.pid)
        errors: list[BaseException] = []

        def fuzzer(n: int) -> None:
            rng = random.Random(seed + n)
            try:
                for _ in range(100):
                    _fuzz_connection(broker, rng)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=fuzzer, args=(n,), daemon=True) for n in range(8)]
        for t in threads:
            t.start()
        publish_all(broker, "good-pub", "good/news", count, 100)
        for t in threads:
            t.join(120)
        assert not errors, f"seed {seed}: {errors[0]!r}"
        assert good.wait() == list(range(count)), f"seed {seed}"
        still_serving(broker)
        grown = rss_kib(broker.proc.pid) - baseline
        assert grown < 64 * MIB, f"seed {seed}: RSS grew by {grown} KiB"


# -- slow consumers ----------------------------------------------------------------

def _stalled_subscriber(broker, qos: int) -> RawClient:
    """Subscribes, then never reads again (a tiny receive buffer fills fast)."""
    slow = RawClient(broker.host, broker.port, rcvbuf=4096)
    assert slow.connect("slow").return_code == 0
    assert slow.subscribe(("load/#", qos)) == [qos]
    return slow


@pytest.mark.parametrize("slow_qos", [0, 1])
def test_slow_consumer(tmp_path, slow_qos):
    """A subscriber that never reads while 60 MB are published to it: the
    broker's RSS grows by less than 32 MiB (QoS 0: the oldest are dropped;
    QoS 1: they spill to disk under DIR/spill), and another subscriber gets
    every message in order."""
    count, size = 60_000, 1000
    with running_broker(tmp_path) as broker:
        slow = _stalled_subscriber(broker, slow_qos)
        good = GoodSubscriber(broker, "good", "load/#")
        baseline = rss_kib(broker.proc.pid)
        good.start(count)
        publish_all(broker, "pub", "load/a", count, size)
        assert good.wait() == list(range(count))
        grown = rss_kib(broker.proc.pid) - baseline
        assert grown < 32 * MIB, f"RSS grew by {grown} KiB"
        still_serving(broker)
        slow.close()


def test_publisher_is_held_back_rather_than_losing_messages(tmp_path):
    """[MQTT-4.3.2-2] past the memory and disk quotas of a stalled QoS 1
    subscriber, the publisher's PUBACKs wait (nothing acknowledged is
    dropped) while its PINGREQs are still answered; when the stalled client
    goes away, the PUBACKs follow, and another subscriber got everything."""
    count = 90
    with running_broker(tmp_path, "--max-queued-messages", "10",
                        "--max-spill-bytes", "20000") as broker:
        slow = _stalled_subscriber(broker, 1)
        good = GoodSubscriber(broker, "good", "load/#")
        good.start(count)
        pub = RawClient(broker.host, broker.port)
        pub.connect("pub")
        pub.send(*[P.Publish("load/a", b"%08d" % i + b"x" * 500, 1, packet_id=i + 1)
                   for i in range(count)], P.PingReq())
        acked = 0
        while (packet := pub.read()).type != "PINGRESP":
            acked += packet.type == "PUBACK"
        # 20 in flight + 10 in memory + about 36 on disk, then held back.
        assert acked < count
        slow.close()  # the stalled subscriber leaves (clean session)
        while acked < count:
            assert pub.read().type == "PUBACK"
            acked += 1
        assert good.wait() == list(range(count))
