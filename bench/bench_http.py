"""HTTP publish rates of one ``twistd -n reactorapp``: /healthz, a single
message per request, and bulk publish (NDJSON), in one run.

    python bench/bench_http.py [--rounds 3] [--seconds 1] [--connections 16] [--batch 1000]

Starts its own broker (fresh data directory, SQLite store, free ports,
``--sys-interval 0``) and measures it in turns from one load process: each
of ``--connections`` keep-alive connections sends a request, reads the whole
answer, and sends the next. The three figures are measured in turn,
``--rounds`` times, for ``--seconds`` each after a warm-up of 0.3 s; each
is the median of its rounds: messages (requests) per second, and the
broker's CPU time per message, which moves less than rates on a shared
machine.

- healthz: ``GET /healthz``, the cheapest answer the site gives;
- publish: ``POST /api/v1/publish`` with one small JSON message (QoS 0);
- bulk: ``POST /api/v1/publish`` with ``--batch`` NDJSON lines (QoS 0);
- bulk qos1: the same at QoS 1, with a persistent MQTT session subscribed
  (offline), so every message is written to the store before the answer.

The broker runs on CPU 0 and the load on CPU 1 when the machine has two or
more (``os.sched_setaffinity``); the load process sets the pace only if
its CPU use nears 100%, which is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.brokerproc import BrokerProcess, HTTP_LISTENING, LISTENING  # noqa: E402

HEADER_END = b"\r\n\r\n"
LENGTH = re.compile(rb"content-length:\s*(\d+)", re.I)


def request(method: str, path: str, body: bytes = b"", content_type: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + body


class Connection:
    """One keep-alive connection sending the same request again and again."""

    def __init__(self, host: str, port: int, payload: bytes) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.payload = payload
        self.buffer = b""
        self.answers = 0
        self.failures = 0

    def send(self) -> None:
        self.sock.sendall(self.payload)

    def received(self) -> int:
        """Read what is there; return how many whole answers it completed."""
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the broker closed the connection")
        self.buffer += data
        done = 0
        while True:
            end = self.buffer.find(HEADER_END)
            if end < 0:
                return done
            head = self.buffer[:end]
            match = LENGTH.search(head)
            if match:
                total = end + 4 + int(match[1])
                if len(self.buffer) < total:
                    return done
            else:  # chunked: up to the last chunk
                last = self.buffer.find(b"\r\n0\r\n\r\n", end)
                if last < 0:
                    return done
                total = last + 7
            if not head.startswith(b"HTTP/1.1 200"):
                self.failures += 1
            self.buffer = self.buffer[total:]
            self.answers += 1
            done += 1


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(host: str, port: int, payload: bytes, connections: int, seconds: float,
             warmup: float = 1.0, pid: int | None = None) -> tuple[float, int, float, float]:
    """(answers per second, failed answers, load CPU share, broker CPU
    seconds per answer) over ``seconds``."""
    selector = selectors.DefaultSelector()
    conns = [Connection(host, port, payload) for _ in range(connections)]
    for c in conns:
        selector.register(c.sock, selectors.EVENT_READ, c)
        c.send()
    start = time.monotonic()
    measured_from = start + warmup
    stop = measured_from + seconds
    counted = 0
    cpu_start = None
    broker_start = 0.0
    while True:
        now = time.monotonic()
        if now >= stop:
            break
        if cpu_start is None and now >= measured_from:
            cpu_start = time.process_time()
            broker_start = cpu_seconds(pid) if pid else 0.0
            counted = 0
        for key, _ in selector.select(0.5):
            c = key.data
            done = c.received()
            if done:
                counted += done
                c.send()
    cpu = (time.process_time() - cpu_start) / seconds if cpu_start is not None else 0.0
    broker = (cpu_seconds(pid) - broker_start) / max(counted, 1) if pid else 0.0
    failures = sum(c.failures for c in conns)
    for c in conns:
        c.sock.close()
    return counted / seconds, failures, cpu, broker


def ndjson(count: int, qos: int) -> bytes:
    return "\n".join(json.dumps({"topic": f"bench/{i % 16}", "payload": f"m{i}", "qos": qos})
                     for i in range(count)).encode()


def subscribe_offline(host: str, port: int) -> None:
    """A persistent session subscribed to bench/# at QoS 1, then gone."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-offline",
                         protocol=mqtt.MQTTv311, clean_session=False)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    client.subscribe("bench/#", 1)
    if not subscribed.wait(10):
        raise SystemExit("no SUBACK from the broker")
    client.disconnect()
    client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per round and figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--no-qos1", action="store_true", help="skip the QoS 1 bulk run")
    args = parser.parse_args()

    pin = len(os.sched_getaffinity(0)) >= 2
    with tempfile.TemporaryDirectory() as tmp:
        broker = BrokerProcess(
            ["-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1", "--data",
             str(Path(tmp) / "data"), "--sys-interval", "0",
             "--max-body-size", str(64 << 20)], cwd=tmp)
        try:
            match = broker.wait_for(LISTENING)
            host, mqtt_port = match["host"], int(match["port"])
            http_port = int(broker.wait_for(HTTP_LISTENING)["port"])
            if pin:
                os.sched_setaffinity(broker.proc.pid, {0})
                os.sched_setaffinity(0, {1})
            single = json.dumps({"topic": "bench/one", "payload": "21.5"}).encode()
            runs = [
                ("healthz", request("GET", "/healthz"), 1),
                ("publish", request("POST", "/api/v1/publish", single, "application/json"), 1),
                ("bulk", request("POST", "/api/v1/publish", ndjson(args.batch, 0),
                                 "application/x-ndjson"), args.batch),
            ]
            pid = broker.proc.pid
            results: dict[str, list] = {name: [] for name, _, _ in runs}
            # Interleaved rounds: each figure sees the same machine, and the
            # medians are compared.
            for _ in range(args.rounds):
                for name, payload, per_request in runs:
                    rate, failures, cpu, broker_cpu = run_load(
                        host, http_port, payload, args.connections, args.seconds, 0.3, pid)
                    if failures:
                        raise SystemExit(f"{name}: {failures} answers were not 200")
                    results[name].append((rate * per_request, broker_cpu / per_request, cpu))
            summary = {}
            for name, _, per_request in runs:
                rate, broker_cpu, cpu = summary[name] = tuple(
                    median([r[i] for r in results[name]]) for i in range(3))
                print(f"{name:10} {rate:12,.0f} msg/s  broker CPU {broker_cpu * 1e6:7.1f} µs/msg"
                      f"  load cpu {cpu:.0%}", flush=True)
            if not args.no_qos1:
                subscribe_offline(host, mqtt_port)
                payload = request("POST", "/api/v1/publish", ndjson(args.batch, 1),
                                  "application/x-ndjson")
                rate, failures, cpu, broker_cpu = run_load(
                    host, http_port, payload, args.connections, args.seconds, 0.3, pid)
                print(f"{'bulk qos1':10} {rate * args.batch:12,.0f} msg/s  broker CPU"
                      f" {broker_cpu / args.batch * 1e6:7.1f} µs/msg  load cpu {cpu:.0%}"
                      "  (stored for an offline session)", flush=True)
            healthz, publish = summary["healthz"], summary["publish"]
            print(f"publish / healthz: {publish[0] / healthz[0]:.2f} by rate,"
                  f" {healthz[1] / publish[1]:.2f} by broker CPU")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
