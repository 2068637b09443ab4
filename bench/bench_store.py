"""QoS 1 throughput to a persistent subscriber: reactorapp with the SQLite
store, with the memory store, and Mosquitto with ``persistence true``, on
this machine, in one run.

Scenarios (each broker gets a fresh data directory):

- ``online``: a persistent subscriber (Clean Session 0, QoS 1) is connected;
  ``--publishers`` publishers each keep ``--window`` QoS 1 messages without
  PUBACK; the run ends when the subscriber has every message and every
  publisher every PUBACK.
- ``offline``: the subscriber is away; the publishers' rate into its queue
  (every message must be stored before its PUBACK), then the subscriber
  reconnects and drains the queue.

Clients are raw sockets in their own processes, with packets encoded before
the clock starts. All brokers run at once and are measured in turns, so a
machine that slows down mid-run slows each of them. Each figure is the median
of ``--repeat`` runs, in messages per second, next to the broker's CPU (all
threads) per message while ingesting. ``--compare-tree DIR`` adds both
reactorapp stores from another checkout, to measure a change in one run.

Usage: ``python bench/bench_store.py [--messages 20000] [--repeat 3]``
(needs ``mosquitto`` on PATH for the third column; see bench/README.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOPIC = "bench/store"
PAYLOAD = b"x" * 64
TIMEOUT = 60.0
#: Not a rate: the broker's CPU (all threads) per message while ingesting.
INGEST_CPU = "ingest CPU (µs/msg)"


# -- packets ---------------------------------------------------------------------

def _packet(first: int, body: bytes) -> bytes:
    length, header = len(body), bytearray((first,))
    while True:
        byte, length = length & 0x7F, length >> 7
        header.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(header) + body


def _str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, clean: bool) -> bytes:
    flags = 0x02 if clean else 0
    return _packet(0x10, _str("MQTT") + bytes((4, flags)) + struct.pack("!H", 300) + _str(client_id))


def publish_packet(packet_id: int, tag: bytes) -> bytes:
    """A QoS 1 PUBLISH whose payload starts with ``tag`` (run, publisher,
    number), so that a subscriber counts each message once."""
    payload = tag + PAYLOAD[len(tag):]
    return _packet(0x32, _str(TOPIC) + struct.pack("!H", packet_id) + payload)


def frames(buffer: bytearray):
    """Yield (first byte, body) of each whole packet; return the bytes used."""
    end, size = 0, len(buffer)
    while end < size:
        at, length, shift = end + 1, 0, 0
        while True:
            if at >= size:
                return end
            byte = buffer[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if at + length > size:
            return end
        yield buffer[end], bytes(buffer[at:at + length])
        end = at + length
    return end


def read_packets(sock, buffer: bytearray):
    """Receive once; return the whole packets and keep the rest in ``buffer``."""
    data = sock.recv(1 << 20)
    if not data:
        raise ConnectionError("the broker closed the connection")
    buffer += data
    packets = []
    walker = frames(buffer)
    while True:
        try:
            packets.append(next(walker))
        except StopIteration as stop:
            del buffer[:stop.value]
            return packets


def open_client(port: int, client_id: str, clean: bool):
    """Connect; return the socket, its buffer, and packets that came with CONNACK."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, clean))
    buffer = bytearray()
    while True:
        packets = read_packets(sock, buffer)
        for at, (first, body) in enumerate(packets):
            if first == 0x20:
                if body[1] != 0:
                    raise ConnectionError(f"CONNACK {body[1]}")
                return sock, buffer, packets[at + 1:]


def leave(sock) -> None:
    """DISCONNECT, then read to the end: closing with unread data would reset
    the connection, and the broker could lose the last acknowledgements."""
    sock.sendall(b"\xe0\x00")
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(1 << 20):
        pass
    sock.close()


def subscribe(sock, buffer, qos: int = 1) -> None:
    sock.sendall(_packet(0x82, struct.pack("!H", 1) + _str("bench/#") + bytes((qos,))))
    while not any(first == 0x90 for first, _ in read_packets(sock, buffer)):
        pass


# -- the subscriber (its own process) -------------------------------------------

def subscriber(port: int, count: int, run: bytes, leave_first: bool, pipe) -> None:
    """Receive the ``count`` messages of ``run``, acknowledging every PUBLISH
    (duplicates, and leftovers of earlier runs, too); report when done."""
    sock, buffer, _ = open_client(port, "bench-sub", False)
    subscribe(sock, buffer)
    early = []
    if leave_first:
        leave(sock)
        pipe.send("away")
        pipe.recv()  # come back when told
        sock, buffer, early = open_client(port, "bench-sub", False)
    pipe.send("ready")
    got: set[bytes] = set()
    skip = 2 + len(TOPIC)  # topic length and topic, all PUBLISHes alike
    while len(got) < count:
        acks = []
        packets, early = early or read_packets(sock, buffer), []
        for first, body in packets:
            if first & 0xF0 == 0x30:
                acks.append(b"\x40\x02" + body[skip:skip + 2])
                if body[skip + 2:skip + 6] == run:
                    got.add(body[skip + 6:skip + 12])
        if acks:
            sock.sendall(b"".join(acks))
    pipe.send(time.monotonic())
    leave(sock)


def publisher(port: int, number: int, count: int, run: bytes, window: int, pipe) -> None:
    """Publish ``count`` QoS 1 messages when told, at most ``window`` without
    PUBACK; report when the last PUBACK arrived."""
    packets = [publish_packet(i % 65535 + 1, run + struct.pack("!HI", number, i))
               for i in range(count)]
    name = f"bench-pub-{number}"
    sock, buffer, _ = open_client(port, name, True)
    pipe.send("ready")
    pipe.recv()
    sent = acked = 0
    while acked < count:
        room = min(window - (sent - acked), count - sent)
        if room > 0:
            sock.sendall(b"".join(packets[sent:sent + room]))
            sent += room
        acked += sum(1 for first, _ in read_packets(sock, buffer) if first == 0x40)
    pipe.send(time.monotonic())
    leave(sock)


class Team:
    """Client processes that connect first and start together."""

    def __init__(self) -> None:
        self.pipes, self.processes = [], []

    def add(self, target, *args):
        parent, child = multiprocessing.Pipe()
        process = multiprocessing.Process(target=target, args=(*args, child), daemon=True)
        process.start()
        self.pipes.append(parent)
        self.processes.append(process)
        return parent

    @staticmethod
    def expect(pipe, what: str):
        if not pipe.poll(TIMEOUT):
            raise TimeoutError(f"no {what} within {TIMEOUT} s")
        return pipe.recv()

    def join(self) -> None:
        for process in self.processes:
            process.join(TIMEOUT)


def publish(port: int, count: int, run: bytes, args, team: Team) -> tuple[float, float]:
    """Run ``args.publishers`` publishers for ``count`` messages in all;
    return (start, end) of the run."""
    pipes = [team.add(publisher, port, i, count // args.publishers, run, args.window)
             for i in range(args.publishers)]
    for pipe in pipes:
        team.expect(pipe, "publisher connection")
    start = time.monotonic()
    for pipe in pipes:
        pipe.send("go")
    return start, max(team.expect(pipe, "PUBACKs") for pipe in pipes)


def run_online(port: int, count: int, args) -> dict:
    count -= count % args.publishers
    team = Team()
    try:
        run = os.urandom(4)
        sub = team.add(subscriber, port, count, run, False)
        team.expect(sub, "subscriber connection")
        start, published = publish(port, count, run, args, team)
        received = team.expect(sub, "delivery of every message")
    finally:
        team.join()
    return {"online": count / (max(published, received) - start)}


def run_offline(port: int, count: int, args, cpu=None) -> dict:
    """Ingest and drain rates; with ``cpu`` (the broker's CPU seconds so
    far), also the broker's CPU per message while ingesting."""
    count -= count % args.publishers
    team = Team()
    try:
        run = os.urandom(4)
        sub = team.add(subscriber, port, count, run, True)
        team.expect(sub, "subscriber connection")
        before = cpu() if cpu else None
        start, stored = publish(port, count, run, args, team)
        after = cpu() if cpu else None
        sub.send("back")
        team.expect(sub, "subscriber reconnection")
        back = time.monotonic()
        drained = team.expect(sub, "delivery of every message")
    finally:
        team.join()
    result = {"offline ingest": count / (stored - start), "offline drain": count / (drained - back)}
    if before is not None and after is not None:
        result[INGEST_CPU] = (after - before) / count * 1e6
    return result


# -- brokers --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    name = ""

    def __init__(self, directory: Path, max_inflight: int) -> None:
        self.directory = directory
        self.max_inflight = max_inflight
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = directory / "broker.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.environment())
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)  # polling a child's port; not in a test
        raise TimeoutError(f"{self.name} did not listen on {self.port}")

    def environment(self) -> dict:
        return dict(os.environ)

    def cpu(self) -> float | None:
        """CPU seconds the broker used so far (Linux), or None."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Reactorapp(Broker):
    def __init__(self, directory: Path, max_inflight: int, store: str, extra=(),
                 tree: Path = REPO) -> None:
        super().__init__(directory, max_inflight)
        self.store = store
        self.extra = list(extra)
        self.tree = tree
        where = "" if tree == REPO else f" ({tree})"
        self.name = f"reactorapp{where} --store {store}"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--pidfile", "", "-n", "reactorapp",
                "--mqtt", f"tcp:{self.port}:interface=127.0.0.1", "--http", "none",
                "--sys-interval", "0", "--data", str(self.directory / "data"),
                "--store", self.store, "--max-inflight", str(self.max_inflight),
                "--max-queued-messages", "1000000", *self.extra]

    def environment(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.tree), env.get("PYTHONPATH")]))
        return env


class Mosquitto(Broker):
    name = "mosquitto persistence true"

    def command(self) -> list[str]:
        config = self.directory / "mosquitto.conf"
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        config.write_text("".join([
            f"listener {self.port} 127.0.0.1\n",
            "allow_anonymous true\n",
            # Started as root, mosquitto becomes user "mosquitto", who could
            # not write this data directory; stay root instead.
            "user root\n" if os.geteuid() == 0 else "",
            "persistence true\n",
            f"persistence_location {self.directory / 'data'}/\n",
            f"max_inflight_messages {self.max_inflight}\n",
            "max_queued_messages 1000000\n",
            "max_queued_bytes 0\n",
        ]))
        return [shutil.which("mosquitto"), "-c", str(config)]


def mosquitto_version() -> str | None:
    path = shutil.which("mosquitto")
    if path is None:
        return None
    out = subprocess.run([path, "-h"], capture_output=True, text=True).stdout
    match = re.search(r"mosquitto version (\S+)", out)
    return match[1] if match else "unknown"


# -- the run --------------------------------------------------------------------

def measure(brokers: list[Broker], args) -> dict[str, dict[str, float]]:
    """Run every broker at once (idle but for the one measured) and measure
    them in turns, so that a machine that slows down mid-run slows all."""
    runs: dict[str, list[dict]] = {broker.name: [] for broker in brokers}
    try:
        for broker in brokers:
            broker.start()
            run_online(broker.port, min(2000, args.messages), args)  # warm up
        for _ in range(args.repeat):
            for broker in brokers:
                result = run_online(broker.port, args.messages, args)
                result.update(run_offline(broker.port, args.messages, args, broker.cpu))
                runs[broker.name].append(result)
    finally:
        for broker in brokers:
            broker.stop()
    return {name: {key: statistics.median(run[key] for run in results) for key in results[0]}
            for name, results in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=100,
                        help="QoS 1 messages each publisher keeps without PUBACK")
    parser.add_argument("--max-inflight", type=int, default=20,
                        help="each broker's window towards the subscriber")
    parser.add_argument("--no-mosquitto", action="store_true")
    parser.add_argument("--reactorapp-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for reactorapp (repeat; e.g. --max-pending-acks=500)")
    parser.add_argument("--compare-tree", type=Path, default=None, metavar="DIR",
                        help="also run both stores from another checkout (e.g. before a change)")
    parser.add_argument("--tmp", default=None, metavar="DIR",
                        help="where the brokers' data directories go [default: the system's]")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.tmp) as tmp:
        root = Path(tmp)
        trees = [REPO] + ([args.compare_tree.resolve()] if args.compare_tree else [])
        brokers: list[Broker] = [
            Reactorapp(root / f"{store}-{i}", args.max_inflight, store, args.reactorapp_arg, tree)
            for i, tree in enumerate(trees) for store in ("sqlite", "memory")]
        version = mosquitto_version()
        if version and not args.no_mosquitto:
            brokers.append(Mosquitto(root / "mosquitto", args.max_inflight))
        results = measure(brokers, args)

    print(f"\n{args.messages} QoS 1 messages of {len(PAYLOAD)} bytes from {args.publishers}"
          f" publishers (window {args.window} each) to one persistent subscriber"
          f" (max inflight {args.max_inflight}), median of {args.repeat};"
          f" {os.cpu_count()} CPUs; mosquitto {version or 'not installed'}\n")
    keys = [key for key in next(iter(results.values())) if key != INGEST_CPU]
    print("| broker | " + " | ".join(f"{k} (msg/s)" for k in keys) + f" | {INGEST_CPU} |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for name, figures in results.items():
        cpu = figures.get(INGEST_CPU)
        print(f"| {name} | " + " | ".join(f"{figures[k]:,.0f}" for k in keys)
              + f" | {'' if cpu is None else f'{cpu:.1f}'} |")
    for tree in trees:
        where = "" if tree == REPO else f" ({tree})"
        sqlite = results[f"reactorapp{where} --store sqlite"]
        memory = results[f"reactorapp{where} --store memory"]
        print(f"\nsqlite / memory{where}: "
              + ", ".join(f"{k} {sqlite[k] / memory[k]:.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
