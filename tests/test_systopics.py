"""[§4.7.2] $SYS/broker/... status topics, published like Mosquitto's."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.logger import Logger

from reactorapp.hub.systopics import (
    LOAD_TOPICS, LOAD_WINDOWS, SYS_TOPICS, LoadAverages, SysTopicsService, process_memory,
)

LOADS = {f"$SYS/broker/load/{name}/{suffix}" for name in LOAD_TOPICS for _, suffix in LOAD_WINDOWS}
HEAP = {"$SYS/broker/heap/current", "$SYS/broker/heap/maximum"}


class FakeHub:
    """The counters SysTopicsService reads, and a record of what it publishes."""

    def __init__(self, clock):
        self.stats = SimpleNamespace(
            clients_connected=0, clients_maximum=0, messages_received=0,
            messages_sent=0, publish_received=0, publish_sent=0, publish_dropped=0,
            bytes_received=0, bytes_sent=0, started_at=clock.seconds(),
            connections=0, sessions_expired=0, messages_expired=0,
        )
        self.subscription_count = 0
        self.retained_count = 0
        self.session_count = 0
        self.published = []
        self.error = None

    def publish(self, message):
        """None when placed; a failed Deferred when ``error`` is set."""
        self.published.append(message)
        return None if self.error is None else fail(self.error)

    def take(self) -> dict[str, bytes]:
        """Topic -> payload of what was published since the last take."""
        taken = {m.topic: m.payload for m in self.published}
        self.published.clear()
        return taken


def started(interval=10.0, seconds=0.0, memory=lambda: (1000, 2000)):
    clock = Clock()
    clock.advance(seconds)
    hub = FakeHub(clock)
    service = SysTopicsService(hub, clock, interval, "1.2.3", memory)
    service.startService()
    return clock, hub, service


def test_first_round_publishes_every_topic_retained():
    clock, hub, service = started()
    messages = list(hub.published)
    topics = {m.topic for m in messages}
    assert topics == {"$SYS/broker/version", "$SYS/broker/uptime", *SYS_TOPICS, *LOADS, *HEAP}
    assert all(m.retain and m.qos == 0 for m in messages)
    payloads = hub.take()
    assert payloads["$SYS/broker/version"] == b"reactorapp version 1.2.3"
    assert payloads["$SYS/broker/uptime"] == b"0 seconds"
    assert payloads["$SYS/broker/retained messages/count"] == b"0"
    assert payloads["$SYS/broker/load/messages/received/1min"] == b"0.00"
    assert payloads["$SYS/broker/heap/current"] == b"1000"


def test_mosquitto_topic_names():
    for topic in [
        "$SYS/broker/clients/connected", "$SYS/broker/clients/maximum",
        "$SYS/broker/clients/total", "$SYS/broker/clients/disconnected",
        "$SYS/broker/messages/received", "$SYS/broker/messages/sent",
        "$SYS/broker/publish/messages/received", "$SYS/broker/publish/messages/sent",
        "$SYS/broker/publish/messages/dropped", "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent", "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count", "$SYS/broker/clients/active",
        "$SYS/broker/clients/inactive", "$SYS/broker/clients/expired",
    ]:
        assert topic in SYS_TOPICS
    for name in ["messages/received", "messages/sent", "publish/received", "publish/sent",
                 "publish/dropped", "bytes/received", "bytes/sent", "connections"]:
        for window in ["1min", "5min", "15min"]:
            assert f"$SYS/broker/load/{name}/{window}" in LOADS


def test_only_uptime_when_nothing_changed():
    clock, hub, service = started(interval=10, seconds=100)
    hub.take()
    clock.advance(10)
    assert hub.take() == {"$SYS/broker/uptime": b"10 seconds"}
    clock.advance(9)
    assert hub.take() == {}


def test_changed_values_are_published_as_decimal_text():
    clock, hub, service = started()
    hub.take()
    hub.stats.clients_connected = 3
    hub.stats.bytes_received = 123456
    hub.session_count = 5
    hub.retained_count = 7
    clock.advance(10)
    # 123456 bytes in 10 s is 740736 a minute; each average has moved
    # 1 - exp(-10 / window) of the way there.
    assert hub.take() == {
        "$SYS/broker/uptime": b"10 seconds",
        "$SYS/broker/clients/connected": b"3",
        "$SYS/broker/clients/active": b"3",
        "$SYS/broker/clients/total": b"5",
        "$SYS/broker/clients/disconnected": b"2",
        "$SYS/broker/clients/inactive": b"2",
        "$SYS/broker/bytes/received": b"123456",
        "$SYS/broker/retained messages/count": b"7",
        "$SYS/broker/load/bytes/received/1min": b"113716.51",
        "$SYS/broker/load/bytes/received/5min": b"24284.21",
        "$SYS/broker/load/bytes/received/15min": b"8184.84",
    }


def test_expired_sessions_are_counted_as_mosquitto_does():
    """--session-expiry's removals are $SYS/broker/clients/expired."""
    clock, hub, service = started()
    hub.take()
    hub.stats.sessions_expired = 2
    clock.advance(10)
    assert hub.take()["$SYS/broker/clients/expired"] == b"2"


def test_zero_interval_publishes_nothing():
    clock, hub, service = started(interval=0)
    clock.advance(3600)
    assert hub.published == []
    service.stopService()


def test_stop_ends_the_updates():
    clock, hub, service = started(interval=5)
    service.stopService()
    hub.take()
    clock.advance(60)
    assert hub.published == []
    assert clock.getDelayedCalls() == []


def test_a_failed_publish_is_logged_and_updates_go_on():
    clock, hub, service = started()
    events = []
    service.log = Logger(observer=events.append)
    hub.error = RuntimeError("store is down")
    hub.stats.messages_sent = 1
    clock.advance(10)
    # The uptime, messages/sent and its three load averages.
    assert [e["log_format"] for e in events] == ["Cannot publish {topic}"] * 5
    assert events[0]["log_failure"].check(RuntimeError)
    hub.error = None
    hub.take()
    clock.advance(10)
    again = hub.take()
    assert again.pop("$SYS/broker/uptime") == b"20 seconds"
    assert set(again) <= LOADS  # the averages go on falling back to 0


def test_load_averages_follow_mosquittos_formula():
    """A steady 120 messages a minute: the 1-minute average gets there
    first, and all three approach it without passing it."""
    load = LoadAverages(0.0, {"m": 0})
    for second in range(10, 3601, 10):
        load.update(float(second), {"m": second * 2})
    one, five, fifteen = (load.averages["m", window] for window, _ in LOAD_WINDOWS)
    assert 119.99 < one <= 120 and 119.99 < five <= 120 and 112 < fifteen < 120
    load.update(3600.0, {"m": 7200})  # no time passed: nothing to average
    assert load.averages["m", 60.0] == one
    for second in range(3610, 3611 + 600, 10):
        load.update(float(second), {"m": 7200})  # quiet for ten minutes
    assert load.averages["m", 60.0] < 0.01 < load.averages["m", 900.0]


def test_no_heap_topics_where_memory_is_not_known():
    clock, hub, service = started(memory=lambda: None)
    assert not HEAP & set(hub.take())


def test_process_memory_is_plausible():
    memory = process_memory()
    if memory is None:
        pytest.skip("no /proc on this system")
    current, peak = memory
    assert 10 * 2 ** 20 < current <= peak  # a Python process with Twisted loaded


def test_a_real_client_sees_the_topics(tmp_path):
    """End to end: twistd with --sys-interval, a paho-mqtt subscriber to $SYS/#."""
    import paho.mqtt.client as mqtt  # a broken install fails here, it is not skipped
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.brokerproc import running_broker

    received = {}
    uptimes = []
    connection_rates = []  # the reader's own connection shows in the next round
    enough = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe("$SYS/#", 0)

    def on_message(client, userdata, message):
        received[message.topic] = (message.payload, message.retain)
        if message.topic == "$SYS/broker/uptime":
            uptimes.append(message.payload)
        if message.topic == "$SYS/broker/load/connections/1min" and message.payload != b"0.00":
            connection_rates.append(message.payload)
        if (len(received) == len(SYS_TOPICS) + len(LOADS) + 4 and len(uptimes) >= 2
                and connection_rates):
            enough.set()

    with running_broker(tmp_path, "--sys-interval", "0.2") as broker:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sys-reader",
                             protocol=mqtt.MQTTv311)
        client.on_connect = on_connect
        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            assert enough.wait(15), received
        finally:
            client.disconnect()
            client.loop_stop()
    payload, retained = received["$SYS/broker/version"]
    assert payload.startswith(b"reactorapp version ") and retained
    assert all(p.endswith(b" seconds") for p in uptimes)
    assert received["$SYS/broker/subscriptions/count"][0].isdigit()
    assert float(connection_rates[0]) > 0
    assert int(received["$SYS/broker/heap/current"][0]) > 0
