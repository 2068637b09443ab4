"""A fleet reconnecting at once, against ``twistd -n reactorapp``: every
client is answered. (How fast is for bench/run.py's storm scenario.)"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import struct
import time

from tests.brokerproc import running_broker

CLIENTS = 5000


def connect_packet(client_id: str) -> bytes:
    name = client_id.encode()
    body = (b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(name)) + name)
    return bytes((0x10, len(body))) + body


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def storm(host: str, port: int, count: int, deadline: float) -> int:
    """Open ``count`` connections at once, each sending CONNECT as soon as
    it is up; return how many got CONNACK 0 before ``deadline``."""
    selector = selectors.DefaultSelector()
    sockets = []
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((host, port))
            assert code in (0, errno.EINPROGRESS), errno.errorcode.get(code, code)
            sockets.append(sock)
            selector.register(sock, selectors.EVENT_WRITE, [f"storm-{i}", b""])
        answered = 0
        while selector.get_map() and time.monotonic() < deadline:
            for key, events in selector.select(max(0.0, deadline - time.monotonic())):
                sock, state = key.fileobj, key.data
                if events & selectors.EVENT_WRITE:
                    sock.send(connect_packet(state[0]))
                    selector.modify(sock, selectors.EVENT_READ, state)
                    continue
                data = sock.recv(16)
                state[1] += data
                if not data or len(state[1]) >= 4:
                    selector.unregister(sock)
                    answered += state[1][:4] == b"\x20\x02\x00\x00"
        return answered
    finally:
        selector.close()
        for sock in sockets:
            sock.close()


def test_five_thousand_clients_connecting_at_once_all_get_their_connack(tmp_path):
    raise_fd_limit(3 * CLIENTS)  # the broker inherits it
    with running_broker(tmp_path, "--store", "memory") as broker:
        answered = storm(broker.host, broker.port, CLIENTS, time.monotonic() + 120)
        assert answered == CLIENTS
