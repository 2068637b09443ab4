"""The HTTP listener's connection limit: unit (a Site on a MemoryReactor)
and against `twistd -n reactorapp`."""

from __future__ import annotations

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from reactorapp.auth.limits import ConnectionLimiter
from reactorapp.web.site import WebSite
from tests.brokerproc import running_broker
from tests.test_web_e2e import RawWebSocket


def site(**limits) -> WebSite:
    return WebSite(Resource(), max_body_size=1024, reactor=MemoryReactorClock(),
                   limiter=ConnectionLimiter(**limits))


def peer(host="192.0.2.1", port=40000):
    return IPv4Address("TCP", host, port)


def test_connections_over_the_total_are_refused_until_one_closes():
    web = site(max_total=2)
    first = web.buildProtocol(peer(port=1))
    first.makeConnection(StringTransport())
    assert web.buildProtocol(peer(port=2)) is not None
    assert web.buildProtocol(peer(port=3)) is None
    assert web.refused == 1
    first.connectionLost(Failure(ConnectionDone()))
    assert web.buildProtocol(peer(port=4)) is not None


def test_connections_per_address():
    web = site(max_per_address=1)
    assert web.buildProtocol(peer("192.0.2.1", 1)) is not None
    assert web.buildProtocol(peer("192.0.2.1", 2)) is None
    assert web.buildProtocol(peer("192.0.2.2", 3)) is not None


def test_a_slot_is_given_back_once():
    web = site(max_total=1)
    protocol = web.buildProtocol(peer())
    protocol.makeConnection(StringTransport())
    protocol.releaseSlot()  # handed over to a WebSocket
    protocol.connectionLost(Failure(ConnectionDone()))
    assert web.limiter.total == 0


def _healthz(sock) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return sock.recv(12)


def test_the_http_listener_closes_connections_over_its_limit(tmp_path):
    """End to end: with --max-http-connections 2, a WebSocket upgraded to
    MQTT no longer counts (it has its 101 once its slot is given back), two
    more connections are served, and a third is closed at once."""
    with running_broker(tmp_path, "--max-http-connections", "2", "--sys-interval", "0") as broker:
        websocket = RawWebSocket(broker)
        assert websocket.status == 101
        address = (broker.host, broker.http_port)
        served = [socket.create_connection(address, timeout=10) for _ in range(2)]
        third = socket.create_connection(address, timeout=10)
        try:
            third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert third.recv(1) == b""
        except ConnectionResetError:
            pass  # closed before our request arrived: refused as well
        third.close()
        assert [_healthz(sock) for sock in served] == [b"HTTP/1.1 200"] * 2
        for sock in served:
            sock.close()
        websocket.close()
        broker.stop()
    assert "Traceback" not in broker.log
