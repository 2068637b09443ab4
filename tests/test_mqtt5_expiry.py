"""MQTT 5 Message Expiry Interval: a message whose interval has passed is
never delivered, wherever it waited (a session's queue in memory, its spill
file, the retained store, the store across a restart), on the hub's clock.

In memory, with a `Clock`: messages are published into the hub with the
property set, as a 5.0 publisher's PUBLISH is (`test_mqtt5_publish.py` has
the same over the wire); the subscribers here speak 3.1.1, which cannot see
the interval but must not get what expired either.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from reactorapp.hub.message import Message
from reactorapp.mqtt import packets as P
from tests.test_store import Stores, durable
from tests.test_store_session import ManualStore, StoredBroker, offline_subscriber


def expiring(broker, topic, payload, interval, qos=1, retain=False):
    """Publish into the hub as a 5.0 client's PUBLISH with a Message
    Expiry Interval is: stamped with the hub's clock."""
    message = Message(topic, payload, qos, retain,
                      {"message_expiry_interval": interval}, sender="pub",
                      timestamp=broker.clock.seconds())
    broker.hub.publish(message)
    return message


def payloads(packets):
    return [p.payload for p in packets if p.type == "PUBLISH"]


def test_time_left_is_rounded_up_and_expired_at_the_deadline():
    """[MQTT-3.3.2-6]: the interval sent on is what was received minus the
    time the message waited; [MQTT-3.3.2-5]: at the deadline it is gone."""
    message = Message("t", b"x", properties={"message_expiry_interval": 10}, timestamp=100.0)
    assert message.expires == 110.0
    assert message.time_left(100.0) == 10
    assert message.time_left(100.5) == 10
    assert message.time_left(103.0) == 7
    assert not message.expired(109.9)
    assert message.expired(110.0)
    assert Message("t").expires is None and not Message("t").expired(1e12)


def test_a_queued_message_that_expired_is_not_sent_when_the_client_returns():
    """[MQTT-3.3.2-5]: queued for an offline persistent session, the expired
    message is dropped (and forgotten by the store), the others arrive."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    expiring(broker, "t/a", b"short", 5)
    expiring(broker, "t/b", b"long", 60)
    broker.hub.publish(Message("t/c", b"never", 1))
    broker.store.commit()
    broker.clock.advance(10)
    sub = broker.connect("sub", clean=False)
    assert payloads(sub.take()) == [b"long", b"never"]
    assert broker.hub.stats.messages_expired == 1
    broker.store.commit()
    stored = broker.store.load().sessions[0].messages
    assert b"short" not in [m.message.payload for m in stored]


def test_expired_messages_make_room_in_a_full_queue_of_an_absent_client():
    """[MQTT-3.3.2-5] Expired messages are gone, so they do not take the room
    of messages still to come: a queue of an absent client that is full of
    expired messages takes a new one instead of refusing it; a queue full of
    live ones still refuses."""
    broker = StoredBroker(ManualStore(), max_queued_messages=3)
    offline_subscriber(broker)
    for i in range(3):
        expiring(broker, "t/old", b"old %d" % i, 5)
    broker.hub.publish(Message("t/refused", b"refused", 1))
    assert broker.hub.stats.queue_refused == 1
    broker.clock.advance(10)
    for i in range(3):
        broker.hub.publish(Message("t/new", b"new %d" % i, 1))
    broker.hub.publish(Message("t/full", b"full", 1))
    assert broker.hub.stats.queue_refused == 2
    assert broker.hub.stats.messages_expired == 3
    broker.store.commit()
    sub = broker.connect("sub", clean=False)
    assert payloads(sub.take()) == [b"new 0", b"new 1", b"new 2"]
    stored = [m.message.payload for m in broker.store.load().sessions[0].messages]
    assert not [p for p in stored if p.startswith(b"old")]


def test_a_message_that_expired_while_waiting_for_the_window_is_dropped():
    """The in-flight window is full: what waits behind it and expires meanwhile
    is never sent, even to a connected client."""
    from tests.mqtt_harness import Broker

    broker = Broker(max_inflight=1)
    sub = broker.connect("sub")
    sub.subscribe(("t", 1))
    expiring(broker, "t", b"first", 100)
    expiring(broker, "t", b"second", 5)
    expiring(broker, "t", b"third", 100)
    (first,) = sub.take()
    assert first.payload == b"first"
    broker.clock.advance(6)
    sub.send(P.PubAck(first.packet_id))
    assert payloads(sub.take()) == [b"third"]


def test_spilled_messages_that_expired_are_not_sent(tmp_path):
    """A message spilled to disk keeps its deadline: read back after it
    passed, it is dropped."""
    broker = StoredBroker(ManualStore(), max_queued_messages=2,
                          spill_directory=str(tmp_path))
    offline_subscriber(broker)
    for i in range(6):
        expiring(broker, "t", b"m%d" % i, 5 if i % 2 else 60)
    broker.store.commit()
    assert broker.hub.stats.queue_spilled > 0
    broker.clock.advance(10)
    sub = broker.connect("sub", clean=False)
    assert payloads(sub.take()) == [b"m0", b"m2", b"m4"]
    assert broker.hub.stats.messages_expired == 3


def test_an_expired_retained_message_is_not_sent_and_is_removed():
    """[MQTT-3.3.2-5]: a retained message past its interval is not sent to
    a new subscriber, and it is gone from the hub and the store."""
    broker = StoredBroker(ManualStore())
    expiring(broker, "r/short", b"s", 5, retain=True)
    expiring(broker, "r/long", b"l", 60, retain=True)
    broker.store.commit()
    assert broker.hub.retained_count == 2
    broker.clock.advance(5)
    sub = broker.connect("sub")
    codes, retained = sub.subscribe(("r/#", 1))
    assert payloads(retained) == [b"l"]
    assert broker.hub.retained_count == 1
    assert [m.topic for m in broker.hub.retained("#")] == ["r/long"]
    assert list(broker.store.tables.retained) == ["r/long"]
    assert broker.hub.stats.messages_expired == 1


def test_after_a_restart_what_expired_meanwhile_is_gone():
    """The store keeps the interval and the time of publication: after a
    restart, retained and queued messages that expired while the broker was
    down are not delivered, and the store forgets them."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    expiring(broker, "t/r", b"retained", 5, retain=True)
    expiring(broker, "t/q", b"queued", 5)
    expiring(broker, "t/k", b"kept", 600)
    broker.store.commit()
    later = StoredBroker(ManualStore(broker.store.tables))
    later.clock.advance(30)  # the hub's clock after the restart
    state = later.store.load()
    later.hub.restore_retained(state.retained)
    from reactorapp.mqtt.session import restore_sessions

    restore_sessions(later.hub, state.sessions, later.settings)
    assert later.hub.retained_count == 0
    assert "t/r" not in later.store.tables.retained
    sub = later.connect("sub", clean=False)
    assert payloads(sub.take()) == [b"kept"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest_twisted.ensureDeferred
async def test_stores_give_back_the_properties_and_the_deadline(kind, tmp_path):
    """Properties travel through the store unchanged, retained and queued;
    the deadline is derived from them and the time of publication."""
    stores = Stores(kind, tmp_path)
    store, _ = await stores.open()
    properties = {"message_expiry_interval": 30, "content_type": "text/plain",
                  "payload_format_indicator": 1, "response_topic": "re/1",
                  "correlation_data": b"\x00\x01", "user_property": [("a", "1"), ("a", "2")]}
    retained = Message("r", b"x", 1, True, dict(properties), "c", 1000.0)
    queued = Message("q", b"y", 1, False, dict(properties), "c", 1000.0)
    store.set_retained(retained)
    store.add_session("s")
    store.enqueue("s", 1, queued, 1, False)
    await durable(store)
    _, state = await stores.reopen()
    try:
        (back,) = state.retained
        (session,) = state.sessions
        (stored,) = session.messages
        for message in (back, stored.message):
            assert message.properties == properties
            assert message.expires == 1030.0
    finally:
        await stores.close()


def test_a_delivered_message_carries_the_time_it_has_left():
    """[MQTT-3.3.2-6]: a 5.0 subscriber gets the interval the message came
    with minus the time it waited here: in full when it goes out at once,
    less after waiting in the queue of an offline session."""
    from tests.mqtt5_harness import connect5

    broker = StoredBroker(ManualStore())
    live = connect5(broker, "live")
    live.subscribe(("t/#", 1))
    later = connect5(broker, "later", clean=False, session_expiry_interval=3600)
    later.subscribe(("t/#", 1))
    later.send(P.Disconnect())
    pub = connect5(broker, "pub")
    pub.publish("t/x", b"x", 1, message_expiry_interval=60)
    broker.store.commit()
    (now,) = [p for p in live.take() if isinstance(p, P.Publish)]
    assert now.properties == {"message_expiry_interval": 60}
    broker.clock.advance(7.5)
    back = connect5(broker, "later", clean=False, session_expiry_interval=3600)
    (waited,) = [p for p in back.take() if isinstance(p, P.Publish)]
    assert waited.properties == {"message_expiry_interval": 53}  # 52.5, rounded up
    broker.clock.advance(60)
    pub.publish("t/y", b"y", 1, retain=True, message_expiry_interval=30)
    broker.clock.advance(10)
    fresh = connect5(broker, "fresh")
    _, (retained,) = fresh.subscribe(("t/y", 1))
    assert retained.properties == {"message_expiry_interval": 20}


def test_a_retained_message_is_removed_when_it_expires_without_a_subscriber():
    """The retained store does not wait for someone to ask: at its deadline
    the message is gone (count, store); a replaced one is not removed by
    its predecessor's deadline."""
    broker = StoredBroker(ManualStore())
    expiring(broker, "r/a", b"a", 5, retain=True)
    expiring(broker, "r/b", b"old", 5, retain=True)
    broker.clock.advance(1)
    expiring(broker, "r/b", b"new", 60, retain=True)
    broker.clock.advance(4)
    assert broker.hub.retained_count == 1
    assert list(broker.store.tables.retained) == ["r/b"]
    assert broker.hub.stats.messages_expired == 1
    broker.clock.advance(56)
    assert broker.hub.retained_count == 0 and broker.store.tables.retained == {}


def test_retained_deadlines_stay_bounded_when_replaced_quickly():
    """A publisher replacing one retained topic again and again leaves at
    most a bounded number of waiting deadlines behind."""
    broker = StoredBroker(ManualStore())
    for i in range(10_000):
        expiring(broker, "r/busy", b"%d" % i, 3600, retain=True)
    assert len(broker.hub._deadlines) <= 130
    broker.clock.advance(3600)
    assert broker.hub.retained_count == 0
