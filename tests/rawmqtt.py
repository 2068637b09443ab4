"""A blocking raw-socket MQTT client for end-to-end tests that need to
misbehave: stop reading, send garbage, hold a connection open, speak TLS.

Client packets are encoded with the codec; what the broker sends is read
with the independent reader in tests/wire.py. Every wait has a timeout.
"""

from __future__ import annotations

import socket
import time

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.wire import Out, read_packets

TIMEOUT = 10.0


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def _frame_length(buffer: bytes) -> int | None:
    """Length of the first whole packet in ``buffer``, or None if incomplete."""
    length = shift = 0
    for i in range(1, min(len(buffer), 5)):
        byte = buffer[i]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            total = i + 1 + length
            return total if len(buffer) >= total else None
    return None


class RawClient:
    def __init__(self, host: str, port: int, *, sock: socket.socket | None = None,
                 rcvbuf: int | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(TIMEOUT)
            sock.connect((host, port))
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self._buffer = b""
        self._next_id = 0

    def close(self) -> None:
        self.sock.close()

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def send(self, *packets) -> None:
        self.sock.sendall(b"".join(encode(p) for p in packets))

    def read(self, timeout: float = TIMEOUT) -> Out:
        """The next packet; AssertionError if none within ``timeout`` or if
        the broker closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            size = _frame_length(self._buffer)
            if size is not None:
                packet, self._buffer = self._buffer[:size], self._buffer[size:]
                return read_packets(packet)[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no packet within {timeout} s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"no packet within {timeout} s") from None
            if not data:
                raise ConnectionError("the broker closed the connection")
            self._buffer += data

    def connect(self, client_id: str = "", **kw) -> Out:
        self.send(P.Connect(client_id=client_id, **kw))
        connack = self.read()
        assert connack.type == "CONNACK", connack
        return connack

    def subscribe(self, *filters_qos) -> list[int]:
        pid = self.packet_id()
        self.send(P.Subscribe(pid, [P.SubscriptionRequest(f, q) for f, q in filters_qos]))
        while True:
            packet = self.read()
            if packet.type == "SUBACK" and packet.packet_id == pid:
                return packet.return_codes

    def closed_by_broker(self, timeout: float = TIMEOUT) -> bool:
        """Wait for the broker to close the connection (ignoring packets)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionError:
                return True
            if not data:
                return True
        return False
