"""A peer that has not logged in, or does not read, against a real
``twistd -n reactorapp``: what it makes the broker hold stays small.

Memory is read from /proc/PID/status (VmRSS); the bounds are generous,
far below what the broker held before these limits (tens to hundreds of MB).
"""

from __future__ import annotations

import socket

from reactorapp.mqtt import packets as P
from tests.brokerproc import running_broker
from tests.rawmqtt import RawClient, rss_kib

MIB = 1024
LOCAL = "tcp:0:interface=127.0.0.1"


def _closed_at_once(sock: socket.socket) -> bool:
    """True once the broker has closed: EOF or a reset, within the timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _send_until_refused(sock: socket.socket, data: bytes, total: int) -> int:
    sent = 0
    try:
        while sent < total:
            sent += sock.send(data)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    return sent


def test_a_large_first_packet_is_refused_before_it_is_buffered(tmp_path):
    """[MQTT-3.1.0-1] 20 connections each announce a 200 MB PUBLISH before
    any CONNECT and send 4 MB of it, with a connect timeout of a minute:
    each is closed at its first byte and the broker's memory does not grow
    with what they send. A large CONNECT header is refused the same way."""
    with running_broker(tmp_path, "--connect-timeout", "60", "--http", "none") as broker:
        baseline = rss_kib(broker.proc.pid)
        for n in range(20):
            sock = socket.create_connection((broker.host, broker.port), timeout=10)
            first = b"\x30\x80\xda\xc4\x5f" if n % 2 else b"\x10\xff\xff\xff\x7f"
            _send_until_refused(sock, first + b"x" * 65536, 4 * 1024 * 1024)
            assert _closed_at_once(sock)
            sock.close()
        grown = rss_kib(broker.proc.pid) - baseline
        assert grown < 16 * MIB, f"RSS grew by {grown} KiB"
        probe = RawClient(broker.host, broker.port)
        assert probe.connect("probe").return_code == 0
        probe.close()
        broker.stop()
    assert "Traceback" not in broker.log


def port_of(broker, name: str) -> int:
    return int(broker.wait_for(rf"{name} listening on 127\.0\.0\.1:(\d+)")[1])


def _read_lines_until(sock: socket.socket, buffer: bytes, count: int, marker: bytes):
    """Read until ``marker`` has been seen ``count`` times; the lines read."""
    lines: list[bytes] = []
    seen = 0
    while seen < count:
        data = sock.recv(65536)
        assert data, "closed by the broker"
        buffer += data
        *complete, buffer = buffer.split(b"\r\n")
        for line in complete:
            lines.append(line)
            seen += line == marker
    return lines, buffer


def test_a_line_client_that_never_reads_holds_little(tmp_path):
    """The issue's case: 500 retained 1 KB messages, a `line` client that
    sends SUB 2,000 times and does not read. The broker's RSS grows by a few
    MB, not hundreds; another line user is answered meanwhile; and once the
    slow client reads, it gets every retained message of each SUB in turn."""
    with running_broker(tmp_path, "--listen", f"line:{LOCAL}", "--http", "none") as broker:
        port = port_of(broker, "line")
        publisher = RawClient(broker.host, broker.port)
        assert publisher.connect("retainer").return_code == 0
        for n in range(500):
            publisher.send(P.Publish(f"r/{n}", b"%04d" % n + b"x" * 1020, 1, True,
                                     packet_id=n + 1))
        for _ in range(500):
            assert publisher.read().type == "PUBACK"
        baseline = rss_kib(broker.proc.pid)

        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(30)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"SUB r/#\n" * 2000)

        other = socket.create_connection(("127.0.0.1", port), timeout=30)
        other.sendall(b"PING\n")
        assert other.recv(100) == b"PONG\r\n"
        grown = rss_kib(broker.proc.pid) - baseline
        assert grown < 32 * MIB, f"RSS grew by {grown} KiB"

        lines, _ = _read_lines_until(slow, b"", 3, b"OK SUB r/#")
        first, second = lines.index(b"OK SUB r/#"), len(lines) - 1
        between = lines[first + 1:second]
        between = between[:between.index(b"OK SUB r/#")]
        assert len(between) == 500 and all(line.startswith(b"MSG r/") for line in between)
        slow.close()
        other.close()
        publisher.close()
        broker.stop()
    assert "Traceback" not in broker.log
