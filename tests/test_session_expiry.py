"""Persistent sessions that never come back: --session-expiry removes them
from memory and the store, and an administrator can remove one over HTTP."""

from __future__ import annotations

import http.client
import json
import math

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.session import restore_sessions
from reactorapp.store.memory import MemoryStore
from tests.brokerproc import running_broker
from tests.mqtt5_harness import connect5
from tests.mqtt_harness import Broker
from tests.paho_client import TIMEOUT, PahoClient

HOUR = 3600.0


def stored_broker(**settings) -> tuple[Broker, MemoryStore]:
    broker = Broker(**settings)
    store = broker.hub.store = MemoryStore()
    return broker, store


def away(broker, client_id: str) -> None:
    client = broker.connect(client_id, clean=False)
    client.subscribe(("t/#", 1))
    client.send(P.Disconnect())


def test_an_absent_clients_session_expires_from_memory_and_the_store():
    broker, store = stored_broker(session_expiry=HOUR)
    away(broker, "gone")
    broker.clock.advance(HOUR - 60)
    assert broker.hub.get_session("gone") is not None
    broker.clock.advance(60)
    assert broker.hub.get_session("gone") is None
    assert store.load().sessions == []
    assert broker.hub.stats.sessions_expired == 1
    # Nothing is queued for it any more.
    publisher = broker.connect("pub")
    publisher.publish("t/1", b"x", qos=1)
    assert [p.type for p in publisher.take()] == ["PUBACK"]
    assert store.load().sessions == []
    assert not broker.clock.getDelayedCalls()


def test_a_connected_client_or_one_that_came_back_keeps_its_session():
    broker, _ = stored_broker(session_expiry=HOUR)
    broker.connect("here", clean=False)
    away(broker, "back")
    broker.clock.advance(HOUR - 1)
    broker.connect("back", clean=False)  # the clock starts again when it leaves
    broker.clock.advance(10 * HOUR)
    assert {"here", "back"} <= set(broker.hub.sessions())
    assert broker.hub.stats.sessions_expired == 0


def test_without_session_expiry_a_persistent_session_stays():
    broker, _ = stored_broker()
    away(broker, "kept")
    broker.clock.advance(1000 * HOUR)
    assert broker.hub.get_session("kept") is not None
    assert not broker.clock.getDelayedCalls()


def test_a_restored_session_counts_from_start_up():
    """The store keeps no time: a session read back at start-up has its
    whole expiry ahead of it."""
    broker, store = stored_broker(session_expiry=HOUR)
    away(broker, "old")
    restarted = Broker(session_expiry=HOUR)
    restarted.clock.advance(10 * HOUR)
    restarted.hub.store = store
    restore_sessions(restarted.hub, store.load().sessions, restarted.factory.settings)
    restarted.clock.advance(HOUR - 1)
    assert restarted.hub.get_session("old") is not None
    restarted.clock.advance(1)
    assert restarted.hub.get_session("old") is None


def restart(store, **settings) -> Broker:
    restarted = Broker(**settings)
    restarted.hub.store = store
    restore_sessions(restarted.hub, store.load().sessions, restarted.factory.settings)
    return restarted


def test_a_restart_keeps_the_session_expiry_an_mqtt_5_client_chose():
    """[MQTT-3.1.2-23] [MQTT-4.1.0-2] kept for the interval the client chose
    (here less than --session-expiry), also after a restart: it ends then
    and is gone from the store. The time counts again from start-up."""
    broker, store = stored_broker(session_expiry=HOUR)
    client = connect5(broker, "five", clean=False, session_expiry_interval=60)
    client.send(P.Disconnect())
    restarted = restart(store, session_expiry=HOUR)
    restarted.clock.advance(59)
    assert restarted.hub.get_session("five").expiry == 60
    restarted.clock.advance(1)
    assert restarted.hub.get_session("five") is None
    assert store.load().sessions == []


def test_a_restart_keeps_an_expiry_changed_at_disconnect_and_caps_it():
    """[§3.14.2.2.2] A DISCONNECT may change the interval: the new one is
    kept. A lower --session-expiry at the next start caps it; a 3.1.1
    session, which chose nothing, follows --session-expiry as it is then."""
    broker, store = stored_broker(session_expiry=HOUR)
    client = connect5(broker, "five", clean=False, session_expiry_interval=60)
    client.send(P.Disconnect(properties={"session_expiry_interval": 600}))
    away(broker, "three")
    restarted = restart(store, session_expiry=HOUR)
    assert restarted.hub.get_session("five").expiry == 600
    assert restarted.hub.get_session("three").expiry == HOUR
    capped = restart(store, session_expiry=300)
    assert capped.hub.get_session("five").expiry == 300
    assert capped.hub.get_session("three").expiry == 300
    forever = restart(store)
    assert forever.hub.get_session("five").expiry == 600
    assert forever.hub.get_session("three").expiry == math.inf


# -- through twistd --------------------------------------------------------------


def delete(broker, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
    try:
        connection.request("DELETE", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, (json.loads(body) if body else {})
    finally:
        connection.close()


def test_delete_removes_an_offline_session_and_refuses_a_connected_one(tmp_path):
    with running_broker(tmp_path) as broker:
        old = PahoClient(broker.host, broker.port, "old-device", clean_session=False).connect()
        old.subscribe(("cmd/#", 1))
        old.disconnect()
        here = PahoClient(broker.host, broker.port, "here", clean_session=False).connect()

        status, body = delete(broker, "/api/v1/sessions/here")
        assert (status, body["error"]) == (409, "connected")
        status, body = delete(broker, "/api/v1/sessions/nobody")
        assert (status, body["error"]) == (404, "not found")
        assert delete(broker, "/api/v1/sessions/old-device") == (204, {})
        here.disconnect()
        assert broker.stop() < 0

    with running_broker(tmp_path) as broker:
        assert "1 persistent sessions" in broker.log  # "here" only
        back = PahoClient(broker.host, broker.port, "old-device", clean_session=False).connect()
        assert back.session_present is False
        back.disconnect()


def test_session_expiry_flag(tmp_path):
    with running_broker(tmp_path, "--session-expiry", "0.5") as broker:
        device = PahoClient(broker.host, broker.port, "gone", clean_session=False).connect()
        device.subscribe(("cmd/#", 1))
        device.disconnect()
        broker.wait_for(r"Session gone expired")
        back = PahoClient(broker.host, broker.port, "gone", clean_session=False).connect()
        assert back.session_present is False
        back.disconnect()
