"""A raw MQTT 3.1.1 load generator for comparing brokers on one machine.

It is built not to be the bottleneck: every packet it sends is encoded
before the clock starts and written in large blocks, and what it receives is
counted without decoding packet by packet. All packets of a run have the same
length, so a receive buffer is checked by stride (first byte and Remaining
Length of every packet, compared as whole byte strings) and counted in C;
QoS 1 acknowledgements are built the same way, by slice assignment into a
bytearray. Anything else (a SUBACK, a packet of another shape) goes through
a small ordinary parser.

Every result carries the generator's own CPU use over the measured window
(``load_cpu``): near 1.0 means the generator, not the broker, set the pace.
With ``--broker-pid`` it also reports the broker's CPU use and memory.

Scenarios (each bounded in time):

- ``fanin``   QoS 0 fan-in: 4 publishers -> 1 subscriber, 64-byte payloads;
- ``fanout``  QoS 0 fan-out: 1 publisher -> 16 subscribers;
- ``qos1``    QoS 1 end to end: 4 publishers -> 1 subscriber, each publisher
  keeps at most ``--window`` messages sent but not yet delivered;
- ``latency`` QoS 0, 1 publisher -> 1 subscriber at a fixed rate;
- ``idle``    open idle connections; connect rate and broker RSS per connection.

In those, publishers are held back by a window of messages sent but not yet
received, so a run measures the rate a broker sustains rather than how much
it can buffer. Every scenario reports sent against delivered; QoS 1 must
lose nothing.

The unpaced ("blast") scenarios are what publishers that wait for nothing
(sensors, a burst after an outage, a replay job) do to a broker: each
publisher writes ``--messages`` numbered QoS 0 PUBLISHes as fast as TCP
takes them, and every reading subscriber checks what it got against what
was sent (loss, order, duplicates):

- ``blast-fanin``  4 publishers -> 1 reading subscriber;
- ``blast-fanout`` 1 publisher -> 16 reading subscribers;
- ``blast-stuck``  as blast-fanin, plus a second subscriber to the same
  topics that never reads; the figures are the reading one's;
- ``storm``        ``--connections`` clients connect at once; connections per
  second, the slowest TCP connect and CONNECT-to-CONNACK, and whether every
  one got its CONNACK.

Usage: ``python bench/loadgen.py --port 1883 --scenario fanin --duration 5``
(prints one JSON object).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time

PAYLOAD_SIZE = 64
BLOCK = 1024  # packets per write
RECV_SIZE = 1 << 20
EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

SCENARIOS = ("fanin", "fanout", "qos1", "latency", "idle",
             "blast-fanin", "blast-fanout", "blast-stuck", "storm")


class BenchError(Exception):
    """The scenario could not run as designed (refused, stalled, lost messages)."""


# -- encoding ------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _str(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


#: The MQTT version spoken (``--mqtt-version``): its protocol level, and
#: for 5 what the broker's CONNACK said its Receive Maximum is.
PROTOCOL = {"level": 4, "receive_maximum": 65535}


def _props() -> bytes:
    """An empty MQTT 5 property block; nothing at 3.1.1."""
    return b"\x00" if PROTOCOL["level"] == 5 else b""


def encode_connect(client_id: str, keep_alive: int = 300) -> bytes:
    return _packet(0x10, _str("MQTT") + bytes((PROTOCOL["level"], 0x02))
                   + struct.pack(">H", keep_alive) + _props() + _str(client_id))


def encode_subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return _packet(0x82, struct.pack(">H", packet_id) + _props() + _str(topic_filter)
                   + bytes((qos,)))


def encode_publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _str(topic) + (struct.pack(">H", packet_id) if qos else b"") + _props() + payload
    return _packet(0x30 | qos << 1, body)


def _receive_maximum(body: bytes) -> int:
    """The Receive Maximum (property 0x21) of an MQTT 5 CONNACK body; 65535
    when absent."""
    length, shift, i = 0, 0, 2
    while True:
        byte = body[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            break
        shift += 7
    end = i + length
    sizes = {0x11: 4, 0x12: None, 0x13: 2, 0x15: None, 0x16: None, 0x1A: None, 0x1C: None,
             0x1F: None, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x26: None, 0x27: 4, 0x28: 1,
             0x29: 1, 0x2A: 1}
    while i < end:
        ident = body[i]
        i += 1
        if ident == 0x21:
            return body[i] << 8 | body[i + 1]
        size = sizes[ident]
        if size is None:  # a string or binary; a user property is two strings
            for _ in range(2 if ident == 0x26 else 1):
                i += 2 + (body[i] << 8 | body[i + 1])
        else:
            i += size
    return 65535


DISCONNECT = b"\xe0\x00"


RING = 65535  # packets per publisher ring: QoS 1 packet ids run 1..65535


def publish_ring(topic: str, qos: int) -> tuple[bytes, int]:
    """``RING`` PUBLISHes back to back, and the length of one.

    Payload bytes 0-3 hold the packet's place in the ring (its sequence
    number modulo ``RING``), so subscribers see at once which messages
    never came; QoS 1 packets carry ids 1..65535. Both are written by slice
    assignment, so building the ring is cheap.
    """
    one = encode_publish(topic, b"x" * PAYLOAD_SIZE, qos, 1)
    size = len(one)
    ring = bytearray(one * RING)
    seq_at = size - PAYLOAD_SIZE
    for shift, offset in ((24, 0), (16, 1), (8, 2), (0, 3)):
        ring[seq_at + offset::size] = bytes(i >> shift & 0xFF for i in range(RING))
    if qos:
        ids = range(1, RING + 1)
        id_at = seq_at - 2 - len(_props())  # MQTT 5: the property block comes between
        ring[id_at::size] = bytes(i >> 8 for i in ids)
        ring[id_at + 1::size] = bytes(i & 0xFF for i in ids)
    return bytes(ring), size


# -- reading -----------------------------------------------------------------------

def split_packet(data, pos: int):
    """(first byte, body start, end) of the packet at ``pos``, or None if incomplete."""
    n = len(data)
    if pos + 2 > n:
        return None
    length = shift = 0
    i = pos + 1
    while True:
        if i >= n:
            return None
        byte = data[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            break
        shift += 7
    end = i + length
    return (data[pos], i, end) if end <= n else None


class Reader:
    """Splits a byte stream into runs of same-shape packets and odd packets.

    ``on_run(data, k)`` gets ``k`` whole packets of ``size`` bytes whose first
    two bytes are ``head``; ``on_packet(first, body)`` gets anything else.
    """

    __slots__ = ("size", "first", "second", "on_run", "on_packet", "rest")

    def __init__(self, size: int, head: bytes, on_run, on_packet) -> None:
        self.size = size
        self.first, self.second = head[0], head[1:2]
        self.on_run = on_run
        self.on_packet = on_packet
        self.rest = b""

    def feed(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        n = len(data)
        size = self.size
        first = self.first
        pos = 0
        slow = False
        while pos < n:
            k = (n - pos) // size
            if k and not slow and data[pos] == first:
                end = pos + k * size
                run = data if pos == 0 and end == n else data[pos:end]
                if run[::size] == bytes((first,)) * k and run[1::size] == self.second * k:
                    self.on_run(run, k)
                    pos = end
                    continue
                slow = True  # walk the rest of this read packet by packet
            split = split_packet(data, pos)
            if split is None:
                break
            packet_first, start, end = split
            self.on_packet(packet_first, data[start:end])
            pos = end
        self.rest = data[pos:]


# -- connections ---------------------------------------------------------------------

class Client:
    """One non-blocking MQTT connection with its own Reader and output queue."""

    __slots__ = ("sock", "reader", "out", "name", "sent", "acked", "received")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.reader: Reader | None = None
        self.out: memoryview | None = None
        self.sent = 0
        self.acked = 0
        self.received = 0


def _recv_exactly_packet(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """Blocking read of one whole packet, for the set-up handshake."""
    sock.settimeout(timeout)
    data = b""
    while True:
        split = split_packet(data, 0)
        if split is not None:
            first, start, end = split
            if end != len(data):
                raise BenchError("the broker sent more than expected during set-up")
            return first, data[start:end]
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("the broker closed the connection during set-up")
        data += chunk


def connect(host: str, port: int, client_id: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode_connect(client_id))
    first, body = _recv_exactly_packet(sock, timeout)
    if first != 0x20 or body[1] != 0 or (len(body) != 2 and PROTOCOL["level"] != 5):
        raise BenchError(f"CONNECT of {client_id} refused: {first:#x} {body!r}")
    if PROTOCOL["level"] == 5:
        PROTOCOL["receive_maximum"] = _receive_maximum(body)
    return sock


def subscribe(sock: socket.socket, topic_filter: str, qos: int, timeout: float = 10.0) -> None:
    sock.sendall(encode_subscribe(1, topic_filter, qos))
    first, body = _recv_exactly_packet(sock, timeout)
    if first != 0x90 or body[2 + len(_props()):] != bytes((qos,)):
        raise BenchError(f"SUBSCRIBE {topic_filter} at QoS {qos} refused: {body!r}")


def close_all(clients) -> None:
    for client in clients:
        try:
            client.sock.setblocking(True)
            client.sock.settimeout(1.0)
            client.sock.sendall(DISCONNECT)
        except OSError:
            pass
        client.sock.close()


# -- measuring -----------------------------------------------------------------------

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds used so far by ``pid`` (user + system), from /proc."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _status_bytes(pid: int | None, field: str) -> int | None:
    """A size line of /proc/PID/status (``VmRSS``, ``VmHWM``) in bytes."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def process_rss(pid: int | None) -> int | None:
    """Resident set size of ``pid`` in bytes."""
    return _status_bytes(pid, "VmRSS")


def machine_busy() -> float | None:
    """CPU seconds all processes have used so far (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


class Window:
    """CPU and wall time of the generator and the broker over one interval,
    and how much CPU everything else on the machine took meanwhile."""

    def __init__(self, broker_pid: int | None) -> None:
        self.pid = broker_pid
        self.wall = time.perf_counter()
        self.cpu = cpu_seconds()
        self.broker = process_cpu(broker_pid)
        self.busy = machine_busy()

    def close(self) -> dict:
        wall = time.perf_counter() - self.wall
        load = cpu_seconds() - self.cpu
        result = {"seconds": round(wall, 3), "load_cpu": round(load / wall, 3)}
        broker = process_cpu(self.pid)
        if broker is not None and self.broker is not None:
            result["broker_cpu"] = round((broker - self.broker) / wall, 3)
            busy = machine_busy()
            if busy is not None and self.busy is not None:
                other = (busy - self.busy) - load - (broker - self.broker)
                result["other_cpu"] = round(max(0.0, other) / wall, 3)
        return result


# -- the streaming engine ------------------------------------------------------------

class Engine:
    """A selectors loop: reads feed each client's Reader, writes drain ``out``."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []

    def add(self, client: Client) -> None:
        client.sock.setblocking(False)
        self.clients.append(client)
        self.sel.register(client.sock, EVENT_READ, client)

    def write(self, client: Client, data) -> None:
        """Send now as far as the socket takes it; queue the rest."""
        if client.out is not None:
            client.out = memoryview(bytes(client.out) + bytes(data))
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            client.out = memoryview(data)[sent:]
            self.sel.modify(client.sock, EVENT_READ | EVENT_WRITE, client)

    def _flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except BlockingIOError:
            return
        if sent == len(client.out):
            client.out = None
            self.sel.modify(client.sock, EVENT_READ, client)
        else:
            client.out = client.out[sent:]

    def poll(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            client = key.data
            if mask & EVENT_READ:
                try:
                    data = client.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    data = None
                except OSError as e:
                    raise BenchError(f"{client.name}: {e}") from None
                if data == b"":
                    raise BenchError(f"the broker closed {client.name}")
                if data:
                    client.reader.feed(data)
            if mask & EVENT_WRITE and client.out is not None:
                self._flush(client)

    def close(self) -> None:
        self.sel.close()
        close_all(self.clients)


def _unexpected(client: Client):
    def on_packet(first: int, body: bytes) -> None:
        if first >> 4 not in (9, 13):  # a late SUBACK or a PINGRESP is harmless
            raise BenchError(f"{client.name} got unexpected packet type {first >> 4}")
    return on_packet


class Track:
    """What one subscriber received from each source: a count, and the
    sequence number of the latest message (so gaps show as soon as a later
    message arrives)."""

    __slots__ = ("received", "latest")

    def __init__(self, sources: int) -> None:
        self.received = [0] * sources
        self.latest = [-1] * sources

    def advance(self, source: int, ring_seq: int) -> None:
        """Move ``latest`` forward to the message numbered ``ring_seq`` modulo RING."""
        latest = self.latest[source]
        self.latest[source] = latest + (ring_seq - latest) % RING


_seq = struct.Struct(">I").unpack_from


def _subscriber_reader(client: Client, topic: str, qos: int, sources: str, engine: Engine,
                       track: Track) -> Reader:
    """A Reader for deliveries on topics like ``topic`` (the last character
    names the source); QoS 1 deliveries are acknowledged in bulk."""
    shape = encode_publish(topic, b"x" * PAYLOAD_SIZE, qos, 1)
    size = len(shape)
    seq_at = size - PAYLOAD_SIZE
    id_at = seq_at - 2 - len(_props())
    source_at = seq_at - len(_props()) - (2 if qos else 0) - 1
    source_bytes = [s.encode() for s in sources]
    index = {b: i for i, b in enumerate(source_bytes)}
    received = track.received

    def on_run(run: bytes, k: int) -> None:
        if qos:
            acks = bytearray(4 * k)
            acks[0::4] = b"\x40" * k
            acks[1::4] = b"\x02" * k
            acks[2::4] = run[id_at::size]
            acks[3::4] = run[id_at + 1::size]
            engine.write(client, acks)
        client.received += k
        if len(source_bytes) == 1:
            received[0] += k
            track.advance(0, _seq(run, (k - 1) * size + seq_at)[0])
            return
        column = run[source_at::size]
        for i, b in enumerate(source_bytes):
            n = column.count(b)
            if n:
                received[i] += n
                track.advance(i, _seq(run, column.rfind(b) * size + seq_at)[0])

    def on_packet(first: int, body: bytes) -> None:
        if first >> 4 != 3:
            return _unexpected(client)(first, body)
        pqos = first >> 1 & 3
        topic_len = body[0] << 8 | body[1]
        source = index.get(body[1 + topic_len:2 + topic_len])
        if pqos == 1:
            engine.write(client, b"\x40\x02" + body[2 + topic_len:4 + topic_len])
        elif pqos == 2:
            raise BenchError("QoS 2 delivery is not part of these scenarios")
        if source is None or len(body) < PAYLOAD_SIZE:
            raise BenchError(f"{client.name} got a message it did not expect")
        client.received += 1
        received[source] += 1
        track.advance(source, _seq(body, len(body) - PAYLOAD_SIZE)[0])

    return Reader(size, shape[:2], on_run, on_packet)


def _puback_reader(client: Client) -> Reader:
    def on_run(run: bytes, k: int) -> None:
        client.acked += k

    def on_packet(first: int, body: bytes) -> None:
        if first == 0x40:
            client.acked += 1
        else:
            _unexpected(client)(first, body)

    return Reader(4, b"\x40\x02", on_run, on_packet)


def streaming(host: str, port: int, *, publishers: int, subscribers: int, qos: int,
              duration: float, warmup: float, window: int, broker_pid: int | None,
              tag: str, sub_port: int | None = None) -> dict:
    """Publishers stream to one topic per publisher; subscribers take them all.

    Each publisher keeps at most ``window`` messages that some subscriber has
    neither received nor skipped: every payload carries a sequence number,
    so a message the broker dropped frees its place as soon as a later one
    arrives (a broker may drop QoS 0 under pressure; for QoS 1 any loss is a
    broker fault). If all of a publisher's last messages vanish, its window
    reopens after half a second without progress. ``lost`` counts what
    never came.
    """
    # One topic per publisher, same length, its last character the publisher's index.
    sources = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[:publishers]
    base = f"bench/{tag}/"
    topics = [base + s for s in sources]
    engine = Engine()
    subs: list[Client] = []
    pubs: list[Client] = []
    tracks: list[Track] = []
    try:
        for i in range(subscribers):
            sock = connect(host, sub_port or port, f"bench-{tag}-sub-{i}")
            subscribe(sock, base + ("+" if publishers > 1 else sources[0]), qos)
            client = Client(sock, f"subscriber {i}")
            track = Track(publishers)
            client.reader = _subscriber_reader(client, topics[0], qos, sources, engine, track)
            tracks.append(track)
            subs.append(client)
            engine.add(client)
        for i in range(publishers):
            client = Client(connect(host, port, f"bench-{tag}-pub-{i}"), f"publisher {i}")
            client.reader = _puback_reader(client) if qos else Reader(
                2, b"\xd0\x00", lambda run, k: None, _unexpected(client))
            pubs.append(client)
            engine.add(client)
        if qos:
            # MQTT 5: no more unacknowledged than the broker's Receive Maximum.
            window = min(window, PROTOCOL["receive_maximum"])
        rings = [publish_ring(topic, qos) for topic in topics]
        positions = [0] * publishers
        lost = [0] * publishers  # given up on after a stall

        def room(i: int) -> int:
            """How many more publisher ``i`` may send: its window less what
            some subscriber has neither received nor skipped."""
            pub = pubs[i]
            seen = min(t.latest[i] for t in tracks) + 1
            outstanding = pub.sent - max(seen, lost[i])
            if qos:
                outstanding = max(outstanding, pub.sent - pub.acked)
            return window - outstanding

        def top_up() -> bool:
            """Write what the windows allow; True if more could be written now."""
            more = False
            for i, pub in enumerate(pubs):
                if pub.out is not None:
                    continue
                k = min(room(i), BLOCK)
                if k < min(window // 4, 64):
                    continue
                ring, size = rings[i]
                start = positions[i]
                k = min(k, RING - start)
                engine.write(pub, memoryview(ring)[start * size:(start + k) * size])
                positions[i] = (start + k) % RING
                pub.sent += k
                more = more or pub.out is None
            return more

        def total_delivered() -> int:
            return sum(s.received for s in subs)

        started = time.perf_counter()
        measure_at = started + warmup
        stop_at = measure_at + duration
        window_stats = None
        before = 0
        progress = [(started, -1)] * publishers
        now = started
        while now < stop_at:
            more = top_up()
            engine.poll(0 if more else 0.05)
            now = time.perf_counter()
            if window_stats is None and now >= measure_at:
                window_stats = Window(broker_pid)
                before = total_delivered()
            for i in range(publishers):
                done = min(t.latest[i] for t in tracks)
                if done != progress[i][1]:
                    progress[i] = (now, done)
                elif now - progress[i][0] > 0.5:
                    # Nothing from this publisher for half a second: the last
                    # messages it sent were all lost; reopen its window.
                    lost[i] = pubs[i].sent
                    progress[i] = (now, done)
        result = window_stats.close()
        result["rate"] = round((total_delivered() - before) / result["seconds"])
        if result.get("broker_cpu") and result["rate"]:
            # CPU per message: steadier than the rate when the machine is shared.
            result["broker_us_per_msg"] = round(result["broker_cpu"] * 1e6 / result["rate"], 3)
        # Drain: wait, bounded, for what is still on its way.
        sent = sum(p.sent for p in pubs)
        expected = sent * subscribers
        quiet = 3.0 if qos else 1.0
        last = (time.perf_counter(), -1)
        while total_delivered() < expected or (qos and sum(p.acked for p in pubs) < sent):
            now = time.perf_counter()
            seen = total_delivered() + sum(p.acked for p in pubs)
            if seen != last[1]:
                last = (now, seen)
            elif now - last[0] > quiet:
                break  # nothing more is coming
            engine.poll(0.05)
        result.update(sent=sent, expected=expected, delivered=total_delivered(),
                      lost=expected - total_delivered())
        if qos:
            result["acked"] = sum(p.acked for p in pubs)
        if broker_pid is not None:
            result["broker_rss"] = process_rss(broker_pid)
        return result
    finally:
        engine.close()


def latency(host: str, port: int, *, rate: int, duration: float, warmup: float,
            broker_pid: int | None, sub_port: int | None = None) -> dict:
    """One publisher at a fixed rate, one subscriber; each payload carries its send time."""
    topic = "bench/latency/0"
    engine = Engine()
    samples: list[int] = []
    try:
        sub = Client(connect(host, sub_port or port, "bench-latency-sub"), "subscriber")
        subscribe(sub.sock, topic, 0)
        shape = encode_publish(topic, b"x" * PAYLOAD_SIZE)
        size = len(shape)
        stamp_at = size - PAYLOAD_SIZE
        unpack = struct.Struct(">Q").unpack_from
        clock = time.perf_counter_ns
        recording = [False]

        def on_run(run: bytes, k: int) -> None:
            now = clock()
            sub.received += k
            if recording[0]:
                for i in range(k):
                    samples.append(now - unpack(run, i * size + stamp_at)[0])

        def on_packet(first: int, body: bytes) -> None:
            if first == 0x30:
                sub.received += 1
                if recording[0]:
                    samples.append(clock() - unpack(body, len(body) - PAYLOAD_SIZE)[0])
            else:
                _unexpected(sub)(first, body)

        sub.reader = Reader(size, shape[:2], on_run, on_packet)
        engine.add(sub)
        pub = Client(connect(host, port, "bench-latency-pub"), "publisher")
        pub.reader = Reader(2, b"\xd0\x00", lambda run, k: None, _unexpected(pub))
        engine.add(pub)
        head = shape[:stamp_at]
        pad = b"x" * (PAYLOAD_SIZE - 8)
        pack = struct.Struct(">Q").pack
        interval = 1e9 / rate
        start = clock()
        measure_at = start + int(warmup * 1e9)
        stop_at = measure_at + int(duration * 1e9)
        window_stats = None
        next_at = start
        now = start
        while now < stop_at:
            if now >= next_at:
                now = clock()
                engine.write(pub, head + pack(now) + pad)
                pub.sent += 1
                next_at += interval
                if next_at < now:  # fell behind: do not burst to catch up
                    next_at = now + interval
            # epoll sleeps in whole milliseconds: sleep to within one of the
            # next send, then poll without sleeping (this spins the
            # generator's own CPU, not the broker's).
            wait = (next_at - clock()) / 1e9 - 0.001
            engine.poll(wait if wait > 0 else 0)
            now = clock()
            if window_stats is None and now >= measure_at:
                window_stats = Window(broker_pid)
                recording[0] = True
        result = window_stats.close()
        recording[0] = False
        drain_until = time.perf_counter() + 2.0
        while sub.received < pub.sent and time.perf_counter() < drain_until:
            engine.poll(0.05)
        samples.sort()
        if not samples:
            raise BenchError("no message came back")

        def pct(p: float) -> float:
            return round(samples[min(len(samples) - 1, int(p * len(samples)))] / 1000, 1)

        result.update(rate=rate, samples=len(samples), p50_us=pct(0.50), p99_us=pct(0.99),
                      max_us=round(samples[-1] / 1000, 1), sent=pub.sent,
                      delivered=sub.received, lost=pub.sent - sub.received)
        return result
    finally:
        engine.close()


def idle(host: str, port: int, *, connections: int, concurrency: int, time_limit: float,
         broker_pid: int | None) -> dict:
    """Open ``connections`` idle MQTT connections, ``concurrency`` at a time.

    Reports the connect rate (CONNACKs per second) and the broker's RSS growth
    divided by the connections held, measured after a second of quiet.
    """
    raise_fd_limit(connections + 100)
    sel = selectors.DefaultSelector()
    rss_before = process_rss(broker_pid)
    window = Window(broker_pid)
    started = time.perf_counter()
    deadline = started + time_limit
    opened = 0
    pending: dict[socket.socket, bytes] = {}  # socket -> bytes received so far
    held: list[socket.socket] = []
    failed = 0
    ids = itertools.count()
    connack = b"\x20\x02\x00\x00"
    try:
        while len(held) < connections and time.perf_counter() < deadline:
            while opened < connections and len(pending) < concurrency:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((host, port))
                sel.register(sock, EVENT_WRITE)
                pending[sock] = None
                opened += 1
            if not pending:
                break
            for key, mask in sel.select(0.5):
                sock = key.fileobj
                if pending[sock] is None:  # connected (or failed)
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        failed += 1
                        sel.unregister(sock)
                        del pending[sock]
                        sock.close()
                        continue
                    sock.send(encode_connect(f"bench-idle-{next(ids):05d}"))
                    pending[sock] = b""
                    sel.modify(sock, EVENT_READ)
                    continue
                try:
                    data = pending[sock] + sock.recv(64)
                except OSError:
                    data = b""
                if len(data) < 4 and data:
                    pending[sock] = data
                    continue
                sel.unregister(sock)
                del pending[sock]
                if data == connack:
                    held.append(sock)
                else:
                    failed += 1
                    sock.close()
        connected_at = time.perf_counter()
        result = window.close()
        seconds = connected_at - started
        result.update(connections=len(held), failed=failed, seconds=round(seconds, 3),
                      connect_rate=round(len(held) / seconds) if seconds else 0)
        # Settle, then check that every connection is still open and idle.
        time.sleep(1.0)
        rss_after = process_rss(broker_pid)
        for sock in held:
            sel.register(sock, EVENT_READ)
        closed = len(sel.select(0))
        result["closed_by_broker"] = closed
        if rss_before is not None and rss_after is not None:
            result.update(broker_rss_before=rss_before, broker_rss=rss_after,
                          rss_per_connection=round((rss_after - rss_before) / max(1, len(held))))
        return result
    finally:
        _reset_all(list(pending) + held, sel)


# -- unpaced scenarios -----------------------------------------------------------------

def numbered_publishes(topic: str, count: int) -> tuple[bytes, int]:
    """``count`` QoS 0 PUBLISHes back to back, payload bytes 0-3 numbering
    them 0..count-1 (big-endian), and the length of one.

    A subscriber of a broker that forwards in order receives slices of
    exactly these bytes, so a whole read is checked with one comparison.
    """
    one = encode_publish(topic, b"x" * PAYLOAD_SIZE)
    size = len(one)
    data = bytearray(one * count)
    numbers = struct.pack(f">{count}I", *range(count))
    seq_at = size - PAYLOAD_SIZE
    for offset in range(4):
        data[seq_at + offset::size] = numbers[offset::4]
    return bytes(data), size


class Ledger:
    """Which numbered messages one subscriber got from each publisher.

    A bitmap per publisher counts each message once; ``out_of_order``
    counts messages numbered below one already received from the same
    publisher, ``duplicates`` those received twice.
    """

    __slots__ = ("seen", "next", "distinct", "out_of_order", "duplicates", "count")

    def __init__(self, sources: int, count: int) -> None:
        self.count = count
        self.seen = [bytearray(count) for _ in range(sources)]
        self.next = [0] * sources
        self.distinct = 0
        self.out_of_order = 0
        self.duplicates = 0

    def add(self, source: int, first: int, n: int) -> None:
        """Messages ``first`` .. ``first + n - 1`` of ``source`` arrived, in that order."""
        if first < 0 or first + n > self.count:
            raise BenchError(f"message number {first} out of range")
        seen = self.seen[source]
        again = seen.count(1, first, first + n)
        seen[first:first + n] = b"\x01" * n
        self.distinct += n - again
        self.duplicates += again
        behind = self.next[source] - first
        if behind > 0:
            self.out_of_order += min(n, behind)
        self.next[source] = max(self.next[source], first + n)


def _blast_reader(client: Client, ledger: Ledger, streams: list[bytes], size: int,
                  source_bytes: list[bytes]) -> Reader:
    """A Reader that checks every delivery against what its publisher sent.

    A run of packets is cut where the publisher changes (the topic's last
    character); each piece whose bytes equal the publisher's own from the
    first message's number on is in order and complete, checked in C. Only
    a piece with a gap or a reordering is walked message by message.
    """
    seq_at = size - PAYLOAD_SIZE
    source_at = seq_at - 1
    index = {b[0]: i for i, b in enumerate(source_bytes)}
    others = {b[0]: [o for o in source_bytes if o != b] for b in source_bytes}
    count = ledger.count

    def piece(run: bytes, source: int, start: int, end: int) -> None:
        first = _seq(run, start * size + seq_at)[0]
        n = end - start
        if first + n <= count and (
                run[start * size:end * size] == streams[source][first * size:(first + n) * size]):
            ledger.add(source, first, n)
            return
        for j in range(start, end):
            at = j * size
            if run[at:at + seq_at] != streams[source][:seq_at]:
                raise BenchError(f"{client.name} got a message it did not expect")
            ledger.add(source, _seq(run, at + seq_at)[0], 1)

    def on_run(run: bytes, k: int) -> None:
        client.received += k
        column = run[source_at::size]
        pos = 0
        while pos < k:
            byte = column[pos]
            source = index.get(byte)
            if source is None:
                raise BenchError(f"{client.name} got a message on an unknown topic")
            end = k
            for other in others[byte]:
                at = column.find(other, pos, end)
                if at >= 0:
                    end = at
            piece(run, source, pos, end)
            pos = end

    def on_packet(first: int, body: bytes) -> None:
        if first != 0x30:
            return _unexpected(client)(first, body)
        packet = bytes((first,)) + _varint(len(body)) + body
        if len(packet) != size:
            raise BenchError(f"{client.name} got a message it did not expect")
        on_run(packet, 1)

    return Reader(size, streams[0][:2], on_run, on_packet)


def peak_rss(pid: int | None) -> int | None:
    """The most resident memory ``pid`` has used (VmHWM), in bytes."""
    return _status_bytes(pid, "VmHWM")


CHUNK = 1 << 18  # bytes per write of an unpaced publisher


def blast(host: str, port: int, *, publishers: int, subscribers: int, stuck: int,
          messages: int, quiet: float, time_limit: float, broker_pid: int | None,
          tag: str) -> dict:
    """Publishers write ``messages`` numbered QoS 0 PUBLISHes each as fast as
    TCP takes them; ``subscribers`` read everything, ``stuck`` more subscribe
    to the same topics and never read.

    Ends when every reading subscriber has every message, when nothing moved
    (no delivery, no byte taken from a publisher) for ``quiet`` seconds, or
    after ``time_limit``. The rate is deliveries to reading subscribers from
    the first write to the last delivery. The CPU shares (``broker_cpu``,
    ``load_cpu``) are over the time something moved, the quiet wait left
    out; ``broker_us_per_msg`` is all the broker's CPU over the whole run
    (the work of dropping messages included) per delivery.
    """
    sources = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[:publishers]
    base = f"bench/{tag}/"
    topic_filter = base + ("+" if publishers > 1 else sources[0])
    built = [numbered_publishes(base + s, messages) for s in sources]
    streams = [data for data, _ in built]
    size = built[0][1]
    per_write = max(1, CHUNK // size) * size
    engine = Engine()
    subs: list[Client] = []
    ledgers: list[Ledger] = []
    idle_socks: list[socket.socket] = []
    pubs: list[Client] = []
    source_bytes = [s.encode() for s in sources]
    try:
        for i in range(subscribers):
            sock = connect(host, port, f"bench-{tag}-sub-{i}")
            subscribe(sock, topic_filter, 0)
            client = Client(sock, f"subscriber {i}")
            ledger = Ledger(publishers, messages)
            client.reader = _blast_reader(client, ledger, streams, size, source_bytes)
            ledgers.append(ledger)
            subs.append(client)
            engine.add(client)
        for i in range(stuck):
            sock = connect(host, port, f"bench-{tag}-stuck-{i}")
            subscribe(sock, topic_filter, 0)
            idle_socks.append(sock)  # never read again
        for i in range(publishers):
            client = Client(connect(host, port, f"bench-{tag}-pub-{i}"), f"publisher {i}")
            client.reader = Reader(2, b"\xd0\x00", lambda run, k: None, _unexpected(client))
            pubs.append(client)
            engine.add(client)
        total = len(streams[0])
        offsets = [0] * publishers
        complete = publishers * messages

        def delivered() -> int:
            return sum(ledger.distinct for ledger in ledgers)

        window = Window(broker_pid)
        started = last_move = last_delivery = mark_at = time.perf_counter()
        deadline = started + time_limit
        moved = (0, 0)
        mark = None  # the CPU shares up to the latest movement (sampled: /proc costs)
        while True:
            writable = False
            for i, pub in enumerate(pubs):
                # A few writes per turn, so that reading keeps up with writing.
                for _ in range(4):
                    if pub.out is not None or offsets[i] >= total:
                        break
                    end = min(total, offsets[i] + per_write)
                    engine.write(pub, memoryview(streams[i])[offsets[i]:end])
                    offsets[i] = end
                writable = writable or (pub.out is None and offsets[i] < total)
            engine.poll(0 if writable else 0.05)
            now = time.perf_counter()
            got = delivered()
            taken = sum(offsets) - sum(len(p.out) for p in pubs if p.out is not None)
            if got != moved[0]:
                last_delivery = now
            if (got, taken) != moved:
                moved = (got, taken)
                last_move = now
                if mark is None or now - mark_at > 0.05:
                    mark, mark_at = window.close(), now
            if all(ledger.distinct == complete for ledger in ledgers):
                mark = None
                break
            if now - last_move > quiet or now > deadline:
                break
        whole = window.close()
        result = dict(mark or whole)
        seconds = last_delivery - started
        sent = [(offsets[i] - (len(p.out) if p.out is not None else 0)) // size
                for i, p in enumerate(pubs)]
        expected = sum(sent) * subscribers
        got = delivered()
        broker_cpu = whole.get("broker_cpu")
        result.update(
            scenario_seconds=whole["seconds"], seconds=round(seconds, 3),
            publishers=publishers, subscribers=subscribers, stuck=stuck,
            messages=messages, sent=sum(sent), unsent=publishers * messages - sum(sent),
            expected=expected, delivered=got, lost=expected - got,
            lost_pct=round(100 * (expected - got) / expected, 3) if expected else None,
            out_of_order=sum(ledger.out_of_order for ledger in ledgers),
            duplicates=sum(ledger.duplicates for ledger in ledgers),
            complete=sum(ledger.distinct == complete for ledger in ledgers),
            rate=round(got / seconds) if seconds > 0 else 0,
            timed_out=time.perf_counter() > deadline)
        if broker_cpu is not None:
            cpu_seconds_used = broker_cpu * whole["seconds"]
            result["broker_cpu_seconds"] = round(cpu_seconds_used, 3)
            if got:
                result["broker_us_per_msg"] = round(cpu_seconds_used * 1e6 / got, 3)
        if broker_pid is not None:
            result["broker_rss"] = process_rss(broker_pid)
            result["broker_peak_rss"] = peak_rss(broker_pid)
        return result
    finally:
        engine.close()
        for sock in idle_socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


def storm(host: str, port: int, *, connections: int, time_limit: float,
          broker_pid: int | None, concurrency: int = 0, batch: int = 200) -> dict:
    """Open ``connections`` MQTT connections at once and time each handshake.

    Non-blocking sockets in one loop: ``batch`` new connects, then whatever
    events are ready, until all are opened; each socket sends its CONNECT
    as soon as TCP says it is connected. Per client it times the TCP
    connect (connect() to writable), CONNECT to CONNACK, and the whole
    handshake (connect() to CONNACK). The rate is CONNACKs per second from
    the first connect() to the last CONNACK. ``concurrency`` > 0 keeps at
    most that many handshakes under way instead (a gentler fleet).
    """
    raise_fd_limit(connections + 100)
    sel = selectors.DefaultSelector()
    # socket -> [connect() time, connected time, bytes received or None]
    pending: dict[socket.socket, list] = {}
    done: list[socket.socket] = []
    tcp_times: list[float] = []
    connack_times: list[float] = []
    handshake_times: list[float] = []
    failed = 0
    connack = b"\x20\x02\x00\x00"
    clock = time.perf_counter
    window = Window(broker_pid)
    started = last = clock()
    deadline = started + time_limit
    opened = 0
    ids = itertools.count()
    try:
        while len(done) + failed < connections and clock() < deadline:
            room = connections - opened
            if concurrency:
                room = min(room, concurrency - len(pending))
            for _ in range(min(batch, room)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                pending[sock] = [clock(), None, None]
                sock.connect_ex((host, port))
                sel.register(sock, EVENT_WRITE)
                opened += 1
            for key, mask in sel.select(0 if room > batch else 0.1):
                sock = key.fileobj
                state = pending[sock]
                now = clock()
                if state[1] is None:  # connected, or failed
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        failed += 1
                        sel.unregister(sock)
                        del pending[sock]
                        sock.close()
                        continue
                    state[1] = now
                    sock.send(encode_connect(f"bench-storm-{next(ids):05d}"))
                    state[2] = b""
                    sel.modify(sock, EVENT_READ)
                    continue
                try:
                    data = state[2] + sock.recv(64)
                except OSError:
                    data = b""
                if data and len(data) < len(connack):
                    state[2] = data
                    continue
                sel.unregister(sock)
                del pending[sock]
                if data != connack:
                    failed += 1
                    sock.close()
                    continue
                done.append(sock)
                last = now
                tcp_times.append(state[1] - state[0])
                connack_times.append(now - state[1])
                handshake_times.append(now - state[0])
        result = window.close()
        seconds = last - started
        result.update(
            seconds=round(seconds, 3), connections=connections, connacked=len(done),
            failed=failed, unanswered=connections - len(done) - failed,
            connect_rate=round(len(done) / seconds) if seconds > 0 else 0)

        def ms(values: list[float], p: float) -> float | None:
            if not values:
                return None
            values = sorted(values)
            return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 2)

        result.update(
            tcp_max_ms=ms(tcp_times, 1.0), tcp_p99_ms=ms(tcp_times, 0.99),
            connack_max_ms=ms(connack_times, 1.0), connack_p99_ms=ms(connack_times, 0.99),
            handshake_max_ms=ms(handshake_times, 1.0),
            handshake_p99_ms=ms(handshake_times, 0.99),
            handshake_p50_ms=ms(handshake_times, 0.5))
        if broker_pid is not None:
            result["broker_peak_rss"] = peak_rss(broker_pid)
        return result
    finally:
        _reset_all(list(pending) + done, sel)


def _reset_all(sockets, selector) -> None:
    """Close with a reset (SO_LINGER 0): no TIME_WAIT pile-up between runs."""
    linger = struct.pack("ii", 1, 0)
    for sock in sockets:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        sock.close()
    selector.close()


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = max(wanted, soft)
    if hard != resource.RLIM_INFINITY and hard < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return
        except (ValueError, OSError):
            target = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


#: publishers, reading subscribers, subscribers that never read
BLASTS = {"blast-fanin": (4, 1, 0), "blast-fanout": (1, 16, 0), "blast-stuck": (4, 1, 1)}


def run(scenario: str, host: str, port: int, *, duration: float = 5.0, warmup: float = 1.0,
        broker_pid: int | None = None, window: int | None = None, rate: int = 2000,
        connections: int = 10_000, time_limit: float = 60.0, qos: int | None = None,
        messages: int = 200_000, quiet: float = 10.0, concurrency: int = 0,
        sub_port: int | None = None) -> dict:
    """Run one scenario and return its figures (a JSON-able dict)."""
    if scenario == "fanin":
        result = streaming(host, port, publishers=4, subscribers=1, qos=qos or 0,
                           duration=duration, warmup=warmup, window=window or 2000,
                           broker_pid=broker_pid, tag="fanin", sub_port=sub_port)
    elif scenario == "fanout":
        result = streaming(host, port, publishers=1, subscribers=16, qos=qos or 0,
                           duration=duration, warmup=warmup, window=window or 2000,
                           broker_pid=broker_pid, tag="fanout")
    elif scenario == "qos1":
        result = streaming(host, port, publishers=4, subscribers=1, qos=1 if qos is None else qos,
                           duration=duration, warmup=warmup, window=window or 100,
                           broker_pid=broker_pid, tag="qos1", sub_port=sub_port)
    elif scenario == "latency":
        result = latency(host, port, rate=rate, duration=duration, warmup=warmup,
                         broker_pid=broker_pid, sub_port=sub_port)
    elif scenario == "idle":
        result = idle(host, port, connections=connections, concurrency=32,
                      time_limit=time_limit, broker_pid=broker_pid)
    elif scenario in BLASTS:
        publishers, subscribers, stuck = BLASTS[scenario]
        result = blast(host, port, publishers=publishers, subscribers=subscribers, stuck=stuck,
                       messages=messages, quiet=quiet, time_limit=time_limit,
                       broker_pid=broker_pid, tag=scenario)
    elif scenario == "storm":
        result = storm(host, port, connections=connections, time_limit=time_limit,
                       broker_pid=broker_pid, concurrency=concurrency)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    result["scenario"] = scenario
    result["mqtt_version"] = "5" if PROTOCOL["level"] == 5 else "3.1.1"
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--qos", type=int, choices=(0, 1), help="override the scenario's QoS")
    parser.add_argument("--window", type=int, help="messages in flight per publisher")
    parser.add_argument("--rate", type=int, default=2000, help="latency: messages per second")
    parser.add_argument("--connections", type=int, default=10_000,
                        help="idle, storm: how many")
    parser.add_argument("--time-limit", type=float, default=60.0,
                        help="idle, storm, blast-*: give up after")
    parser.add_argument("--messages", type=int, default=200_000,
                        help="blast-*: messages per publisher")
    parser.add_argument("--quiet", type=float, default=10.0,
                        help="blast-*: stop after this long with nothing moving (longer than"
                             " the broker's time to give up on a stuck subscriber)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="storm: at most this many handshakes under way (0: all at once)")
    parser.add_argument("--broker-pid", type=int, help="report this process's CPU and RSS")
    parser.add_argument("--sub-port", type=int,
                        help="fanin, qos1, latency: subscribers connect here (another"
                             " node of a cluster) instead of --port")
    parser.add_argument("--cpu", type=int, help="pin the generator to this CPU")
    parser.add_argument("--mqtt-version", choices=("3.1.1", "5"), default="3.1.1",
                        help="the clients' MQTT version (5: fanin, fanout, qos1, latency"
                             " and blast-*)")
    args = parser.parse_args(argv)
    if args.mqtt_version == "5":
        if args.scenario in ("idle", "storm"):
            parser.error("--mqtt-version 5 is for the message scenarios, not idle or storm")
        PROTOCOL["level"] = 5
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        result = run(args.scenario, args.host, args.port, duration=args.duration,
                     warmup=args.warmup, broker_pid=args.broker_pid, window=args.window,
                     rate=args.rate, connections=args.connections,
                     time_limit=args.time_limit, qos=args.qos, messages=args.messages,
                     quiet=args.quiet, concurrency=args.concurrency,
                     sub_port=args.sub_port)
    except (BenchError, OSError) as e:
        json.dump({"scenario": args.scenario, "error": str(e)}, sys.stdout)
        print()
        return 1
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
