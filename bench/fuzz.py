"""Fuzz a running ``twistd -n reactorapp`` over many connections.

Seeded, so a run can be repeated: each connection sends a CONNECT (sometimes
damaged, sometimes missing) and then a burst of packets, a good share of
them malformed (bytes flipped, cut short, garbage inserted, a Remaining
Length promising up to 256 MB) or truncated, then closes its side and reads
until the broker closes. One connection in eight goes to the ``line``
protocol plugin with random lines and bytes instead. Meanwhile a
well-behaved publisher sends numbered QoS 1 messages to a well-behaved
subscriber.

At the end it checks and prints: the broker is still running and answers a
new client, its resident memory (sampled while the fuzz runs, from
/proc/PID/status) stayed under a bound, and the subscriber received every
message, in order::

    python bench/fuzz.py --packets 100000 --seed 1

Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reactorapp.mqtt import packets as P  # noqa: E402
from reactorapp.mqtt.codec import encode  # noqa: E402
from tests.brokerproc import running_broker  # noqa: E402
from tests.rawmqtt import RawClient, rss_kib  # noqa: E402

LOCAL = "tcp:0:interface=127.0.0.1"


def valid_packets(rng: random.Random, n: int) -> list[bytes]:
    topic = f"fz/{rng.randrange(100)}"
    makers = [
        lambda: P.Publish(topic, rng.randbytes(rng.randrange(200)), 0, rng.random() < 0.1),
        lambda: P.Publish(topic, b"q", 1, rng.random() < 0.3, packet_id=rng.randrange(1, 65536)),
        lambda: P.Publish(topic, b"q", 2, packet_id=rng.randrange(1, 65536)),
        lambda: P.Subscribe(rng.randrange(1, 65536), [P.SubscriptionRequest(
            rng.choice(["fz/#", "#", "+/+", "$SYS/#", topic, "a/#/b"]), rng.randrange(3))]),
        lambda: P.Unsubscribe(rng.randrange(1, 65536), ["fz/#"]),
        lambda: P.PubAck(rng.randrange(1, 65536)),
        lambda: P.PubRec(rng.randrange(1, 65536)),
        lambda: P.PubRel(rng.randrange(1, 65536)),
        lambda: P.PubComp(rng.randrange(1, 65536)),
        lambda: P.PingReq(),
    ]
    return [encode(rng.choice(makers)()) for _ in range(n)]


def damage(rng: random.Random, data: bytes) -> bytes:
    """One malformed or truncated form of ``data``."""
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and data:  # a byte flipped
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1 and len(data) > 1:  # truncated
        del data[rng.randrange(1, len(data)):]
    elif kind == 2:  # garbage inserted
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 20))
    elif kind == 3:  # a Remaining Length that promises a lot
        data[1:] = bytes([0xFF, 0xFF, 0xFF, 0x7F]) + data[2:]
    elif kind == 4 and data:  # reserved or server-only packet type
        data[0] = rng.choice([0x00, 0x20, 0x90, 0xB0, 0xD0, 0xF0]) | (data[0] & 0x0F)
    else:  # flags broken
        data[0] = data[0] & 0xF0 | rng.randrange(16)
    return bytes(data)


def mqtt_payload(rng: random.Random, count: int) -> bytes:
    # Persistent sessions are kept, with their queues (up to
    # --max-queued-bytes each), until their client cleans them: MQTT 3.1.1
    # has no expiry. They come from a pool of 5 ids, so that what is
    # measured is what the fuzz makes the broker hold, not what it asked
    # to be kept (5 x 4 MiB at most).
    clean = rng.random() < 0.8
    client_id = f"fz{rng.randrange(10 ** 9)}" if clean else f"fz-kept-{rng.randrange(5)}"
    connect = encode(P.Connect(client_id=client_id, clean_session=clean,
                               keep_alive=rng.randrange(60)))
    packets = valid_packets(rng, count)
    share = rng.choice([0.1, 0.5, 1.0])
    body = b"".join(damage(rng, p) if rng.random() < share else p for p in packets)
    start = rng.randrange(4)
    if start == 0:
        return damage(rng, connect) + body  # a damaged CONNECT
    if start == 1:
        return body  # no CONNECT at all
    return connect + body


def line_payload(rng: random.Random, count: int) -> bytes:
    words = [b"SUB fz/#", b"SUB #", b"PUB fz/1 x", b"PING", b"UNSUB fz/#", b"LOGIN a b",
             b"SUB a/#/b", b"PUB $SYS/x y", b"BOGUS"]
    lines = [rng.choice(words) if rng.random() < 0.7 else rng.randbytes(rng.randrange(1, 80))
             for _ in range(count)]
    return b"\n".join(lines) + b"\n"


def one_connection(port: int, payload: bytes) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass  # closed by the broker mid-way: a fine answer to garbage
    finally:
        sock.close()


class Subscriber(threading.Thread):
    def __init__(self, host: str, port: int, expected: int) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(host, port)
        assert self.client.connect("fuzz-good-sub").return_code == 0
        assert self.client.subscribe(("good/#", 1)) == [1]
        self.expected = expected
        self.received: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while len(self.received) < self.expected:
                packet = self.client.read(timeout=120)
                if packet.type == "PUBLISH":
                    self.received.append(int(packet.payload))
                    self.client.send(P.PubAck(packet.packet_id))
        except BaseException as e:  # reported at the end
            self.error = e


def publish(host: str, port: int, count: int, stop: threading.Event) -> None:
    pub = RawClient(host, port)
    assert pub.connect("fuzz-good-pub").return_code == 0
    pending = 0
    for i in range(count):
        pub.send(P.Publish("good/n", b"%08d" % i, 1, packet_id=i % 65535 + 1))
        pending += 1
        while pending >= 20:
            pending -= pub.read(timeout=120).type == "PUBACK"
    while pending:
        pending -= pub.read(timeout=120).type == "PUBACK"
    pub.close()
    stop.set()


def run(packets: int, seed: int, threads: int = 4, messages: int = 2000, rss_bound_mib: int = 64) -> dict:
    per_connection = 50
    with tempfile.TemporaryDirectory() as directory, running_broker(
            directory, "--listen", f"line:{LOCAL}", "--http", "none", "--sys-interval", "0",
            "--connect-timeout", "2") as broker:
        line_port = int(broker.wait_for(r"line listening on 127\.0\.0\.1:(\d+)")[1])
        pid = broker.proc.pid
        baseline = rss_kib(pid)
        subscriber = Subscriber(broker.host, broker.port, messages)
        subscriber.start()
        done = threading.Event()
        publisher = threading.Thread(target=publish, args=(broker.host, broker.port, messages,
                                                           done), daemon=True)
        sent = [0] * threads
        opened = [0] * threads
        peak = [baseline]

        def fuzzer(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while sent[n] < packets / threads:
                count = rng.randrange(1, 2 * per_connection)
                opened[n] += 1
                if rng.random() < 0.125:
                    one_connection(line_port, line_payload(rng, count))
                else:
                    one_connection(broker.port, mqtt_payload(rng, count))
                sent[n] += count

        started = time.monotonic()
        workers = [threading.Thread(target=fuzzer, args=(n,), daemon=True) for n in range(threads)]
        for worker in [publisher, *workers]:
            worker.start()
        while any(w.is_alive() for w in workers):
            peak[0] = max(peak[0], rss_kib(pid))
            workers[0].join(0.5)
        for worker in workers:
            worker.join()
        publisher.join(300)
        subscriber.join(300)
        elapsed = time.monotonic() - started
        final = rss_kib(pid)
        alive = broker.proc.poll() is None
        probe = RawClient(broker.host, broker.port)
        answers = probe.connect("fuzz-probe").return_code == 0
        probe.close()
        broker.stop()
        traceback = "Traceback" in broker.log or "Unhandled" in broker.log
    result = {
        "seed": seed, "packets": sum(sent), "connections": sum(opened),
        "seconds": round(elapsed, 1), "rss_baseline_mib": round(baseline / 1024, 1),
        "rss_peak_mib": round(peak[0] / 1024, 1), "rss_final_mib": round(final / 1024, 1),
        "messages": messages, "received_in_order": subscriber.received == list(range(messages)),
        "broker_alive": alive and answers, "tracebacks_in_log": traceback,
        "subscriber_error": repr(subscriber.error) if subscriber.error else None,
    }
    result["ok"] = (result["received_in_order"] and result["broker_alive"]
                    and not traceback and peak[0] - baseline < rss_bound_mib * 1024)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rss-bound-mib", type=int, default=64,
                        help="fail if the broker's RSS grows by more than this")
    args = parser.parse_args()
    result = run(args.packets, args.seed, threads=args.threads, messages=args.messages,
                 rss_bound_mib=args.rss_bound_mib)
    for key, value in result.items():
        print(f"{key:20} {value}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
