"""The listen backlog: large enough by default for a fleet that reconnects
at once, for every listener (MQTT, HTTP, plugins), unless an endpoint sets
its own."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from reactorapp.config import Config
from reactorapp.service import makeHubService, with_backlog


def test_backlog_is_added_where_the_endpoint_type_takes_one():
    assert with_backlog("tcp:1883", 1024) == "tcp:1883:backlog=1024"
    assert with_backlog("ssl:8883:privateKey=k.pem", 64) == "ssl:8883:privateKey=k.pem:backlog=64"
    assert with_backlog("unix:/run/x.sock", 1024) == "unix:/run/x.sock:backlog=1024"


def test_an_endpoint_that_sets_its_backlog_keeps_it():
    assert with_backlog("tcp:1883:backlog=10", 1024) == "tcp:1883:backlog=10"


def test_endpoint_types_without_a_backlog_are_left_alone():
    assert with_backlog("systemd:domain=INET:index=0", 1024) == "systemd:domain=INET:index=0"


def listening(tmp_path, **settings):
    reactor = MemoryReactorClock()
    service = makeHubService(Config(data=str(tmp_path / "data"), **settings), reactor)
    service.privilegedStartService()
    try:
        return {port: backlog for port, _factory, backlog, _interface in reactor.tcpServers}
    finally:
        service.stopService()


def test_every_listener_gets_the_default_backlog(tmp_path):
    ports = listening(tmp_path, mqtt=("tcp:18830", "tcp:18831:backlog=7"),
                      http=("tcp:18880",), listen=("line:tcp:18870",))
    assert ports == {18830: 4096, 18831: 7, 18880: 4096, 18870: 4096}


def test_the_backlog_is_a_setting(tmp_path):
    ports = listening(tmp_path, mqtt=("tcp:18830",), http=(), listen_backlog=4096)
    assert ports == {18830: 4096}
