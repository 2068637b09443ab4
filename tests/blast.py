"""Unpaced publishers and counting subscribers over raw sockets, for the
overload tests against ``twistd -n reactorapp``.

Every PUBLISH of a run has the same length (topic, one byte naming its
publisher, a four-byte sequence number), so what a subscriber receives is
checked record by record with ``struct`` instead of a packet parser: the
test process keeps up with the broker on the other core.
"""

from __future__ import annotations

import selectors
import struct
import threading
import time

from tests.rawmqtt import RawClient

TOPIC = b"blast"
# PUBLISH: fixed header, topic length, topic, [packet id], publisher, sequence.
QOS0 = struct.Struct(f">BBH{len(TOPIC)}sBI")
QOS1 = struct.Struct(f">BBH{len(TOPIC)}sHBI")


def publishes(publisher: int, count: int, qos: int = 0) -> bytes:
    """``count`` PUBLISHes from ``publisher`` numbered 0..count-1, as one blob."""
    if qos == 0:
        record = QOS0
        return b"".join(record.pack(0x30, record.size - 2, len(TOPIC), TOPIC, publisher, seq)
                        for seq in range(count))
    record = QOS1
    return b"".join(record.pack(0x32, record.size - 2, len(TOPIC), TOPIC, seq % 65535 + 1,
                                publisher, seq) for seq in range(count))


class Counter:
    """What one subscriber received: per publisher, the next sequence number
    expected, and how many arrived out of order or twice."""

    def __init__(self, publishers: int) -> None:
        self.next = [0] * publishers
        self.out_of_order = 0

    @property
    def received(self) -> int:
        return sum(self.next)

    def take(self, publisher: int, seq: int) -> None:
        if seq != self.next[publisher]:
            self.out_of_order += 1
        self.next[publisher] = seq + 1


def receive(client: RawClient, counter: Counter, expected: int, qos: int = 0,
            idle: float = 10.0) -> Counter:
    """Read PUBLISHes (acknowledging QoS 1 ones) until ``expected`` arrived
    or nothing came for ``idle`` seconds."""
    return receive_all([client], [counter], expected, qos, idle)[0]


def receive_all(clients: list[RawClient], counters: list[Counter], expected: int,
                qos: int = 0, idle: float = 10.0) -> list[Counter]:
    """`receive` for several subscribers at once, each reading as it can."""
    record = QOS0 if qos == 0 else QOS1
    size = record.size
    selector = selectors.DefaultSelector()
    for client, counter in zip(clients, counters):
        client.sock.setblocking(False)
        selector.register(client.sock, selectors.EVENT_READ, [client, counter, client._buffer])
    try:
        while selector.get_map():
            events = selector.select(idle)
            if not events:
                break
            for key, _ in events:
                client, counter, buffer = state = key.data
                data = client.sock.recv(1 << 20)
                if not data:
                    selector.unregister(client.sock)
                    continue
                buffer += data
                whole = len(buffer) - len(buffer) % size
                acks = []
                for fields in record.iter_unpack(memoryview(buffer)[:whole]):
                    assert fields[0] >> 4 == 3, f"not a PUBLISH: {fields}"
                    counter.take(fields[-2], fields[-1])
                    if qos:
                        acks.append(b"\x40\x02" + fields[4].to_bytes(2, "big"))
                state[2] = buffer[whole:]
                if acks:
                    client.sock.setblocking(True)
                    client.sock.sendall(b"".join(acks))
                    client.sock.setblocking(False)
                if counter.received >= expected:
                    selector.unregister(client.sock)
    finally:
        selector.close()
        for client in clients:
            client.sock.setblocking(True)
    return counters


class Publisher(threading.Thread):
    """Writes its blob as fast as TCP takes it; for QoS 1 it counts PUBACKs
    on a second thread, since a client that does not read is not read from."""

    def __init__(self, host: str, port: int, index: int, count: int, qos: int = 0) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(host, port)
        self.client.connect(f"blast-pub-{index}")
        self.blob = publishes(index, count, qos)
        self.qos = qos
        self.count = count
        self.acked = 0
        self.error: BaseException | None = None
        self._acks = threading.Thread(target=self._read_acks, daemon=True) if qos else None

    def run(self) -> None:
        if self._acks is not None:
            self._acks.start()
        try:
            self.client.sock.settimeout(60)
            self.client.sock.sendall(self.blob)
        except OSError as e:
            self.error = e

    def _read_acks(self) -> None:
        sock = self.client.sock
        pending = b""
        deadline = time.monotonic() + 120
        while self.acked < self.count and time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            pending += data
            whole = len(pending) - len(pending) % 4  # PUBACKs: 4 bytes each
            self.acked += pending[0:whole:4].count(0x40)
            pending = pending[whole:]

    def finish(self, timeout: float = 60.0) -> None:
        self.join(timeout)
        if self._acks is not None:
            self._acks.join(timeout)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.client.close()
