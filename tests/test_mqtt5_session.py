"""MQTT 5 session lifetime, in memory on a Clock: Session Expiry Interval,
Clean Start and Session Present, a DISCONNECT that changes the expiry, and
the Will Delay Interval. Statement ids are the MQTT 5.0 specification's."""

from __future__ import annotations

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.session import restore_sessions
from reactorapp.store.memory import MemoryStore
from tests.conn5_harness import Broker5

R = P.ReasonCode
EXPIRY = "session_expiry_interval"


def will(delay: int = 0) -> P.Will:
    return P.Will("wills/dev", b"gone", properties={"will_delay_interval": delay} if delay else {})


def watching(broker: Broker5):
    watcher = broker.connect("watcher")
    watcher.subscribe(("wills/#", 0))
    return watcher


def wills(watcher) -> list[bytes]:
    return [p.payload for p in watcher.take() if type(p) is P.Publish]


# -- Session Expiry Interval, Clean Start, Session Present ------------------------------


def test_without_session_expiry_the_session_ends_with_the_connection():
    """[MQTT-3.1.2-23]: absent or 0, even with Clean Start 0."""
    broker = Broker5()
    client = broker.connect("dev", clean=False)
    client.subscribe(("t", 1))
    client.send(P.Disconnect())
    assert broker.hub.get_session("dev") is None
    assert broker.connect("dev", clean=False).connack.session_present is False


def test_a_session_with_an_expiry_is_resumed_with_clean_start_0():
    """[MQTT-3.1.2-5] [MQTT-3.2.2-3] [MQTT-3.1.2-23]: what was queued meanwhile
    is delivered."""
    broker = Broker5()
    client = broker.connect("dev", clean=False, properties={EXPIRY: 60})
    client.subscribe(("t", 1))
    client.drop()
    broker.connect("pub").publish("t", b"while away", qos=1)
    broker.clock.advance(59)
    back = broker.connect("dev", clean=False, properties={EXPIRY: 60})
    assert back.connack.session_present is True
    assert [p.payload for p in back.take()] == [b"while away"]


def test_clean_start_1_discards_the_old_session():
    """[MQTT-3.1.2-4] [MQTT-3.2.2-2]"""
    broker = Broker5()
    broker.connect("dev", clean=False, properties={EXPIRY: 60}).subscribe(("t", 1))
    fresh = broker.connect("dev", clean=True, properties={EXPIRY: 60})
    assert fresh.connack.session_present is False
    assert broker.hub.get_session("dev").subscriptions == {}


def test_an_expired_session_is_gone_from_memory_and_the_store():
    """[MQTT-3.1.2-23]: kept for the interval, then removed with its queue."""
    store = MemoryStore()
    broker = Broker5(store=store)
    client = broker.connect("dev", clean=False, properties={EXPIRY: 30})
    client.subscribe(("t", 1))
    client.send(P.Disconnect())
    broker.connect("pub").publish("t", b"queued", qos=1)
    assert [s.client_id for s in store.load().sessions] == ["dev"]
    broker.clock.advance(29.9)
    assert broker.hub.get_session("dev") is not None
    broker.clock.advance(0.1)
    assert broker.hub.get_session("dev") is None
    assert store.load().sessions == []
    assert broker.hub.stats.sessions_expired == 1
    assert broker.connect("dev", clean=False, properties={EXPIRY: 30}).connack.session_present is False


def test_ffffffff_never_expires_unless_session_expiry_caps_it():
    """0xFFFFFFFF: never [§3.1.2.11.2]; --session-expiry is the most a
    client gets, and CONNACK says so."""
    broker = Broker5()
    client = broker.connect("forever", clean=False, properties={EXPIRY: 0xFFFFFFFF})
    assert EXPIRY not in client.connack.properties
    client.send(P.Disconnect())
    broker.clock.advance(10 * 365 * 24 * 3600)
    assert broker.hub.get_session("forever") is not None

    capped = Broker5(session_expiry=3600)
    client = capped.connect("dev", clean=False, properties={EXPIRY: 0xFFFFFFFF})
    assert client.connack.properties[EXPIRY] == 3600
    client.send(P.Disconnect())
    capped.clock.advance(3600)
    assert capped.hub.get_session("dev") is None
    assert EXPIRY not in capped.connect("short", properties={EXPIRY: 60}).connack.properties


def test_disconnect_may_change_the_expiry():
    """[§3.14.2.2.2]: from 60 to 0 the session ends with the connection;
    from 60 to 5 it ends 5 s later."""
    broker = Broker5()
    client = broker.connect("dev", clean=False, properties={EXPIRY: 60})
    client.send(P.Disconnect(R.SUCCESS, {EXPIRY: 0}))
    assert broker.hub.get_session("dev") is None
    client = broker.connect("dev", clean=False, properties={EXPIRY: 60})
    client.send(P.Disconnect(R.SUCCESS, {EXPIRY: 5}))
    broker.clock.advance(4.9)
    assert broker.hub.get_session("dev") is not None
    broker.clock.advance(0.1)
    assert broker.hub.get_session("dev") is None


def test_disconnect_may_not_turn_an_expiry_of_0_into_one():
    """[MQTT-3.14.2-2] context: a Protocol Error, DISCONNECT 0x82; the will
    goes out since this was no normal disconnection."""
    broker = Broker5()
    watcher = watching(broker)
    client = broker.connect("dev", will=will())
    client.send(P.Disconnect(R.SUCCESS, {EXPIRY: 60}))
    packets = client.take()
    assert [(type(p), p.reason_code) for p in packets] == [(P.Disconnect, R.PROTOCOL_ERROR)]
    assert client.closed
    assert wills(watcher) == [b"gone"]
    assert broker.hub.get_session("dev") is None


# -- Will Delay Interval ---------------------------------------------------------------


def test_a_delayed_will_goes_out_when_the_delay_ends():
    """[MQTT-3.1.2-8]"""
    broker = Broker5()
    watcher = watching(broker)
    client = broker.connect("dev", clean=False, will=will(30), properties={EXPIRY: 3600})
    client.drop()
    broker.clock.advance(29.9)
    assert wills(watcher) == []
    broker.clock.advance(0.1)
    assert wills(watcher) == [b"gone"]
    assert broker.hub.get_session("dev") is not None


def test_a_delayed_will_goes_out_when_the_session_ends_first():
    """[MQTT-3.1.2-8]: the session ends (expiry 10 s) before the delay (60 s)."""
    broker = Broker5()
    watcher = watching(broker)
    client = broker.connect("dev", clean=False, will=will(60), properties={EXPIRY: 10})
    client.drop()
    broker.clock.advance(9.9)
    assert wills(watcher) == []
    broker.clock.advance(0.1)
    assert wills(watcher) == [b"gone"]
    broker.clock.advance(60)
    assert wills(watcher) == []


def test_a_will_delay_with_no_session_expiry_goes_out_at_once():
    """[MQTT-3.1.2-8]: expiry 0, the session ends with the connection."""
    broker = Broker5()
    watcher = watching(broker)
    broker.connect("dev", will=will(60)).drop()
    assert wills(watcher) == [b"gone"]


def test_coming_back_within_the_delay_cancels_the_will():
    """[MQTT-3.1.3-9]"""
    broker = Broker5()
    watcher = watching(broker)
    client = broker.connect("dev", clean=False, will=will(30), properties={EXPIRY: 3600})
    client.drop()
    broker.clock.advance(20)
    broker.connect("dev", clean=False, properties={EXPIRY: 3600})
    broker.clock.advance(3600)
    assert wills(watcher) == []


def restarted(store: MemoryStore) -> Broker5:
    """A new broker on the same store, its sessions read back as at start-up."""
    broker = Broker5(store=store)
    restore_sessions(broker.hub, store.load().sessions, broker.factory.settings)
    return broker


def test_a_delayed_will_survives_a_restart():
    """[§4.1] the will and its delay are session state: kept by the store, the
    delay counting again from start-up; then the store forgets it."""
    store = MemoryStore()
    broker = Broker5(store=store)
    broker.connect("watcher", clean=False, properties={EXPIRY: 3600}).subscribe(("wills/#", 1))
    broker.connect("dev", clean=False, will=will(30), properties={EXPIRY: 3600}).drop()
    broker = restarted(store)
    broker.clock.advance(29.9)
    watcher = broker.connect("watcher", clean=False, properties={EXPIRY: 3600})
    assert wills(watcher) == []
    broker.clock.advance(0.1)
    assert wills(watcher) == [b"gone"]
    assert {s.client_id: s.will for s in store.load().sessions} == {"watcher": None, "dev": None}


def test_coming_back_after_a_restart_within_the_delay_cancels_the_will():
    """[MQTT-3.1.3-9] also for a will read back from the store."""
    store = MemoryStore()
    broker = Broker5(store=store)
    broker.connect("dev", clean=False, will=will(30), properties={EXPIRY: 3600}).drop()
    assert store.load().sessions[0].will[1] == 30
    broker = restarted(store)
    watcher = watching(broker)
    broker.connect("dev", clean=False, properties={EXPIRY: 3600})
    broker.clock.advance(3600)
    assert wills(watcher) == []
    assert store.load().sessions[0].will is None


def test_a_takeover_that_resumes_the_session_cancels_a_delayed_will():
    """[MQTT-3.1.4-3] [MQTT-3.1.3-9]: the new connection is within the delay."""
    broker = Broker5()
    watcher = watching(broker)
    broker.connect("dev", clean=False, will=will(30), properties={EXPIRY: 3600})
    broker.connect("dev", clean=False, properties={EXPIRY: 3600})
    broker.clock.advance(60)
    assert wills(watcher) == []


def test_a_takeover_with_clean_start_ends_the_session_and_sends_the_will():
    """[MQTT-3.1.2-4] [MQTT-3.1.2-8]: the old session ends now."""
    broker = Broker5()
    watcher = watching(broker)
    broker.connect("dev", clean=False, will=will(30), properties={EXPIRY: 3600})
    broker.connect("dev", clean=True)
    assert wills(watcher) == [b"gone"]


def test_disconnect_0x04_sends_the_will_and_0x00_discards_it():
    """[MQTT-3.14.4-3]"""
    broker = Broker5()
    watcher = watching(broker)
    broker.connect("a", will=will()).send(P.Disconnect(R.DISCONNECT_WITH_WILL))
    assert wills(watcher) == [b"gone"]
    broker.connect("b", will=will()).send(P.Disconnect(R.SUCCESS))
    assert wills(watcher) == []


def test_disconnect_0x04_with_a_delay_waits_for_it():
    broker = Broker5()
    watcher = watching(broker)
    client = broker.connect("dev", clean=False, will=will(10), properties={EXPIRY: 60})
    client.send(P.Disconnect(R.DISCONNECT_WITH_WILL))
    assert wills(watcher) == []
    broker.clock.advance(10)
    assert wills(watcher) == [b"gone"]


def test_a_3_1_1_will_ignores_the_5_0_rules():
    """Clean Session 0 and a dropped connection: the will at once."""
    broker = Broker5()
    watcher = watching(broker)
    old = broker.connect311("old", clean=False, will=P.Will("wills/old", b"bye"))
    old.drop()
    assert wills(watcher) == [b"bye"]
    assert broker.hub.get_session("old") is not None


def test_re_sends_on_reconnect_keep_to_the_new_receive_maximum():
    """[MQTT-4.4.0-1] [MQTT-3.3.4-9]: the client comes back with a Receive
    Maximum of 2 and 5 messages unacknowledged: 2 are re-sent (DUP), the
    others as acknowledgements make room, in their order."""
    broker = Broker5()
    client = broker.connect("dev", clean=False, properties={EXPIRY: 60})
    client.subscribe(("t", 1))
    publisher = broker.connect("pub")
    for n in range(5):
        publisher.publish("t", b"%d" % n, qos=1)
    assert len(client.take()) == 5
    client.drop()
    back = broker.connect("dev", clean=False, properties={EXPIRY: 60, "receive_maximum": 2})
    first = back.take()
    assert [(p.payload, p.dup) for p in first] == [(b"0", True), (b"1", True)]
    back.send(P.PubAck(first[0].packet_id))
    (third,) = back.take()
    assert (third.payload, third.dup) == (b"2", True)
    back.send(P.PubAck(first[1].packet_id), P.PubAck(third.packet_id))
    assert [p.payload for p in back.take()] == [b"3", b"4"]
