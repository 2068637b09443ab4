"""The seam between sessions (and the admin API) and a live MQTT connection:
`IConnection`, and one way of writing and counting peer addresses."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from zope.interface.verify import verifyObject

import reactorapp
from reactorapp.addresses import address_key, address_text
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.interfaces import IConnection
from tests.mqtt_harness import Broker


def test_an_mqtt_connection_provides_iconnection():
    broker = Broker()
    client = broker.connect("c1", keep_alive=30)
    assert verifyObject(IConnection, client.protocol)
    assert client.protocol.describe() == {
        "front_end": "mqtt", "keep_alive": 30, "protocol_version": "3.1.1",
        "peer": address_text(client.protocol.transport.getPeer())}


def test_disconnect_publishes_the_will_and_keeps_a_persistent_session():
    broker = Broker()
    watcher = broker.connect("w")
    watcher.subscribe(("will/#", 0))
    client = broker.connect("kept", clean=False, will=P.Will("will/kept", b"gone"))
    client.protocol.disconnect()
    client.advance(0)  # the reactor's connectionLost
    assert client.closed
    assert [p.payload for p in watcher.take()] == [b"gone"]
    assert broker.hub.get_session("kept") is not None


def _attributes_used(path: Path, name: str) -> set[str]:
    """Every ``NAME.attr`` and ``x.NAME.attr`` read in ``path``."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            base = node.value
            if ((isinstance(base, ast.Name) and base.id == name)
                    or (isinstance(base, ast.Attribute) and base.attr == name)):
                used.add(node.attr)
    return used


def test_the_admin_api_and_sessions_use_a_connection_only_through_iconnection():
    root = Path(reactorapp.__file__).resolve().parent
    declared = set(IConnection.names())
    assert _attributes_used(root / "web" / "api.py", "connection") <= declared
    assert _attributes_used(root / "mqtt" / "session.py", "connection") <= declared


def test_peers_are_written_one_way():
    assert address_text(IPv4Address("TCP", "192.0.2.7", 5000)) == "192.0.2.7:5000"
    assert address_text(IPv6Address("TCP", "::1", 5)) == "[::1]:5"
    assert address_text(UNIXAddress("/run/x.sock")) == "/run/x.sock"
    assert address_text(UNIXAddress(None)) == "local"
    assert address_text(None) == "local"


def test_connections_are_counted_by_host_and_other_peers_share_one_key():
    assert address_key(IPv4Address("TCP", "192.0.2.7", 5000)) == "192.0.2.7"
    assert address_key(IPv4Address("TCP", "192.0.2.7", 6000)) == "192.0.2.7"
    assert address_key(UNIXAddress("/run/a.sock")) == address_key(UNIXAddress(None)) == "local"


def test_each_mqtt_factory_has_a_guard_of_its_own():
    """A limit set on one listener's guard must not leak into another's."""
    from twisted.internet.task import Clock

    from reactorapp.hub.hub import Hub
    from reactorapp.mqtt.protocol import MQTTFactory

    hub = Hub(Clock())
    one, two = MQTTFactory(hub, hub.clock), MQTTFactory(hub, hub.clock)
    assert one.guard is not two.guard
    one.guard.limiter.max_total = 1
    assert two.guard.limiter.max_total == 0
