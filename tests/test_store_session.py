"""The broker with a store: when acknowledgements wait, what is written, and
what a restart brings back. In memory, with a store whose durability the test
controls; each test names the statements it covers."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from reactorapp.hub.hub import Hub
from reactorapp.hub.message import Message
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings, restore_sessions
from reactorapp.hub.commit import Commit
from reactorapp.store.memory import MemoryStore
from tests.mqtt_harness import Broker


class ManualStore(MemoryStore):
    """A memory store whose writes become durable when the test says so."""

    def __init__(self, tables=None) -> None:
        super().__init__(tables)
        self.durable_writes = 0
        self.waiting: Commit | None = None
        self.syncs = 0

    def pending_commit(self):
        self.syncs += 1
        if self.writes == self.durable_writes:
            return None
        if self.waiting is None:
            self.waiting = Commit()
        return self.waiting

    def sync(self):
        commit = self.pending_commit()
        return None if commit is None else commit.deferred()

    def commit(self) -> None:
        self.durable_writes = self.writes
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.fire()

    def fail(self, error: Exception) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.fire(Failure(error))


class StoredBroker(Broker):
    """The harness broker, with a store behind its hub."""

    def __init__(self, store, **settings):
        self.clock = Clock()
        self.store = store
        self.settings = MQTTSettings(**settings)
        self.hub = Hub(self.clock, store=store)
        self.factory = MQTTFactory(self.hub, self.clock, self.settings)

    def restart(self) -> "StoredBroker":
        """A new process on the same data."""
        again = StoredBroker(ManualStore(self.store.tables), **vars(self.settings))
        state = again.store.load()
        again.hub.restore_retained(state.retained)
        restore_sessions(again.hub, state.sessions, again.settings)
        return again


def offline_subscriber(broker, client_id="sub", topic="t/#", qos=1):
    sub = broker.connect(client_id, clean=False)
    sub.subscribe((topic, qos))
    sub.send(P.Disconnect())
    broker.store.commit()
    return sub


def types(packets):
    return [(p.type, p.packet_id) for p in packets]


# -- when acknowledgements wait ---------------------------------------------


def test_puback_waits_until_a_persistent_session_has_the_message_durably():
    """[MQTT-4.3.2-2] PUBACK once the server owns the message; for an offline
    persistent subscriber that means written to the store [MQTT-3.1.2-5]."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    pub = broker.connect("pub")
    pub.publish("t/1", b"x", qos=1)
    assert pub.take() == []
    broker.store.commit()
    assert types(pub.take()) == [("PUBACK", 1)]


def test_pubrec_waits_too_and_the_incoming_id_is_written_with_the_message():
    """[MQTT-4.3.3-2] PUBREC once owned; the id awaiting PUBREL is in the same
    write, so a re-sent PUBLISH after a restart is not forwarded twice."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker, qos=2)
    pub = broker.connect("pub", clean=False)
    broker.store.commit()
    pub.publish("t/1", b"x", qos=2)
    assert pub.take() == []
    stored = {s.client_id: s for s in broker.store.load().sessions}
    assert stored["pub"].awaiting_pubrel == {1}
    assert broker.store.waiting  # message and id become durable together
    broker.store.commit()
    assert types(pub.take()) == [("PUBREC", 1)]


def test_nothing_is_written_for_qos0_or_for_messages_nobody_durable_wants():
    """The hot path stays off the store: no write, no Deferred, PUBACK at once."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    live = broker.connect("live")  # a clean session: nothing to keep
    live.subscribe(("other/#", 1))
    pub = broker.connect("pub")
    writes, syncs = broker.store.writes, broker.store.syncs
    pub.publish("t/1", b"qos0", qos=0)
    pub.publish("other/1", b"live only", qos=1)
    pub.publish("nobody/1", b"", qos=1)
    assert (broker.store.writes, broker.store.syncs) == (writes, syncs)
    assert types(pub.take()) == [("PUBACK", 1), ("PUBACK", 2)]
    assert [p.payload for p in live.take()] == [b"live only"]


def test_acks_keep_their_order_when_only_some_wait():
    """[MQTT-4.6.0-2] [MQTT-4.6.0-3] in arrival order, waiting or not."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    pub = broker.connect("pub")
    pub.publish("t/1", b"durable", qos=1)
    pub.publish("nobody", b"not stored", qos=1)
    pub.publish("nobody", b"not stored", qos=2)
    assert pub.take() == []
    broker.store.commit()
    assert types(pub.take()) == [("PUBACK", 1), ("PUBACK", 2), ("PUBREC", 3)]


def test_a_batch_of_acks_waits_for_one_commit_and_keeps_its_order():
    """[MQTT-4.6.0-2] Hundreds of PUBLISHes in one batch: no PUBACK before
    the commit, then all of them, in order; and a publish after the commit
    waits for the next one."""
    broker = StoredBroker(ManualStore(), max_pending_acks=1000)
    offline_subscriber(broker)
    pub = broker.connect("pub")
    for _ in range(300):
        pub.publish("t/1", b"x", qos=1)
    assert pub.take() == []
    broker.store.commit()
    assert types(pub.take()) == [("PUBACK", i) for i in range(1, 301)]
    pub.publish("t/1", b"y", qos=1)
    assert pub.take() == []
    broker.store.commit()
    assert types(pub.take()) == [("PUBACK", 301)]


def test_retained_messages_are_written_qos0_ones_without_waiting():
    """[MQTT-3.3.1-5] the retained store is durable; only QoS 1/2 wait."""
    broker = StoredBroker(ManualStore())
    pub = broker.connect("pub")
    pub.publish("r/0", b"zero", qos=0, retain=True)
    assert broker.store.syncs == 0
    pub.publish("r/1", b"one", qos=1, retain=True)
    assert pub.take() == []
    broker.store.commit()
    assert types(pub.take()) == [("PUBACK", 1)]
    pub.publish("r/0", b"", qos=1, retain=True)  # [MQTT-3.3.1-10] clearing is written too
    broker.store.commit()
    assert sorted(m.topic for m in broker.store.load().retained) == ["r/1"]


def test_pubcomp_waits_until_the_released_id_is_durable():
    """[MQTT-4.3.3-2] after PUBCOMP the id is free; a persistent session must
    not come back from a crash still holding it, or the client's next
    message with that id would be taken for a re-send and dropped."""
    broker = StoredBroker(ManualStore())
    pub = broker.connect("pub", clean=False)
    pub.publish("nobody", b"x", qos=2, packet_id=5)
    assert types(pub.take()) == [("PUBREC", 5)]
    broker.store.commit()
    pub.send(P.PubRel(5))
    assert pub.take() == []
    broker.store.commit()
    assert types(pub.take()) == [("PUBCOMP", 5)]
    pub.send(P.PubRel(5))  # an id no longer held: answered at once
    assert types(pub.take()) == [("PUBCOMP", 5)]
    clean = broker.connect("clean")
    clean.publish("nobody", b"x", qos=2, packet_id=6)
    clean.send(P.PubRel(6))
    assert types(clean.take()) == [("PUBREC", 6), ("PUBCOMP", 6)]


def test_sys_topics_are_not_written():
    broker = StoredBroker(ManualStore())
    broker.hub.publish(Message("$SYS/broker/uptime", b"1 seconds", 0, True))
    assert broker.store.writes == 0


def test_a_message_that_cannot_be_stored_is_never_acknowledged():
    """The connection is dropped without PUBACK; the client will re-send."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    pub = broker.connect("pub")
    pub.publish("t/1", b"x", qos=1)
    broker.store.fail(OSError("disk full"))
    assert pub.take() == []
    assert pub.closed


# -- what a persistent session writes -----------------------------------------


def test_subscriptions_and_acknowledged_messages_are_kept_up_to_date():
    """[MQTT-3.1.2-4] subscriptions stored; [MQTT-4.3.2-1] a message stays
    until PUBACK; [MQTT-3.10.4-1] unsubscribing removes it."""
    broker = StoredBroker(ManualStore())
    sub = broker.connect("sub", clean=False)
    sub.subscribe(("a", 1), ("b", 1))
    sub.send(P.Unsubscribe(sub.packet_id(), ["b"]))
    pub = broker.connect("pub")
    pub.publish("a", b"1", qos=1)
    (stored,) = broker.store.load().sessions
    assert stored.subscriptions == {"a": 1}
    assert [m.message.payload for m in stored.messages] == [b"1"]
    (publish,) = [p for p in sub.take() if p.type == "PUBLISH"]
    sub.send(P.PubAck(publish.packet_id))
    assert broker.store.load().sessions[0].messages == []


def test_a_clean_session_removes_the_stored_one():
    """[MQTT-3.1.2-6]"""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    assert [s.client_id for s in broker.store.load().sessions] == ["sub"]
    broker.connect("sub", clean=True).send(P.Disconnect())
    assert broker.store.load().sessions == []


def test_qos2_publish_leaves_only_once_its_packet_id_is_durable():
    """[MQTT-4.3.3-1] [MQTT-4.6.0-6]: a QoS 2 PUBLISH to a persistent session
    is held until its id is stored; a QoS 1 message behind it keeps its place."""
    broker = StoredBroker(ManualStore())
    sub = broker.connect("sub", clean=False)
    sub.subscribe(("t", 2))
    pub = broker.connect("pub")
    pub.publish("t", b"two", qos=2)
    pub.publish("t", b"one", qos=1)
    assert sub.take() == []
    broker.store.commit()
    sent = sub.take()
    assert [(p.payload, p.qos, p.dup) for p in sent] == [(b"two", 2, False), (b"one", 1, False)]
    stored = broker.store.load().sessions[0].messages
    assert [(m.packet_id, m.state) for m in stored] == [(sent[0].packet_id, 2), (None, None)]


# -- restart ------------------------------------------------------------------


def test_a_restart_brings_back_sessions_subscriptions_queues_and_retained():
    """[MQTT-3.2.2-2] Session Present; [MQTT-3.1.2-5] queued messages in
    order [MQTT-4.6.0-6]; retained messages still there [MQTT-3.3.1-6]."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker)
    pub = broker.connect("pub")
    pub.publish("keep", b"retained", qos=1, retain=True)
    for i in range(5):
        pub.publish("t/x", str(i).encode(), qos=1)
    broker.store.commit()

    broker = broker.restart()
    sub = broker.connect("sub", clean=False)
    assert sub.connack.session_present
    assert [p.payload for p in sub.take()] == [b"0", b"1", b"2", b"3", b"4"]
    pub = broker.connect("pub")
    pub.publish("t/y", b"after", qos=1)  # the subscription came back too
    assert [p.payload for p in sub.take()] == [b"after"]
    late = broker.connect("late")
    _, retained = late.subscribe(("keep", 1))
    assert [(p.payload, p.retain) for p in retained] == [(b"retained", True)]


def test_a_restart_resends_unacknowledged_qos2_with_the_same_ids():
    """[MQTT-4.4.0-1] PUBLISH with DUP=1 and its original id, PUBREL for
    those past PUBREC, in the original order [MQTT-4.6.0-1]."""
    broker = StoredBroker(ManualStore())
    sub = broker.connect("sub", clean=False)
    sub.subscribe(("t", 2))
    pub = broker.connect("pub")
    for i in range(3):
        pub.publish("t", str(i).encode(), qos=2)
    broker.store.commit()
    first, second, third = sub.take()
    sub.send(P.PubRec(first.packet_id))
    assert types(sub.take()) == [("PUBREL", first.packet_id)]
    sub.drop()

    broker = broker.restart()
    sub = broker.connect("sub", clean=False)
    assert [(p.type, p.packet_id, getattr(p, "dup", None)) for p in sub.backlog] == [
        ("PUBREL", first.packet_id, None),
        ("PUBLISH", second.packet_id, True),
        ("PUBLISH", third.packet_id, True),
    ]


def test_qos1_messages_in_flight_at_a_crash_come_back_before_newer_ones():
    """[MQTT-4.6.0-1] a QoS 1 message sent before a QoS 2 one is re-sent first."""
    broker = StoredBroker(ManualStore())
    sub = broker.connect("sub", clean=False)
    sub.subscribe(("t", 2))
    pub = broker.connect("pub")
    pub.publish("t", b"one", qos=1)
    pub.publish("t", b"two", qos=2)
    pub.publish("t", b"three", qos=1)
    broker.store.commit()
    assert [p.payload for p in sub.take()] == [b"one", b"two", b"three"]
    sub.drop()

    broker = broker.restart()
    sub = broker.connect("sub", clean=False)
    assert [(p.payload, p.dup) for p in sub.backlog] == [
        (b"one", True), (b"two", True), (b"three", False)]
    assert len({p.packet_id for p in sub.backlog}) == 3


def test_a_restart_remembers_incoming_qos2_ids():
    """[MQTT-4.3.3-2] a PUBLISH re-sent after the restart gets PUBREC and is
    not forwarded again; PUBREL gets PUBCOMP."""
    broker = StoredBroker(ManualStore())
    offline_subscriber(broker, qos=2)
    pub = broker.connect("pub", clean=False)
    pub.publish("t/1", b"once", qos=2, packet_id=9)
    broker.store.commit()
    assert types(pub.take()) == [("PUBREC", 9)]

    broker = broker.restart()
    pub = broker.connect("pub", clean=False)
    pub.send(P.Publish("t/1", b"once", 2, dup=True, packet_id=9))
    assert types(pub.take()) == [("PUBREC", 9)]
    pub.send(P.PubRel(9))
    broker.store.commit()
    assert types(pub.take()) == [("PUBCOMP", 9)]
    sub = broker.connect("sub", clean=False)
    assert sub.take() == []  # its packet id is not durable yet
    broker.store.commit()
    assert [p.payload for p in sub.take()] == [b"once"]


def test_retained_messages_for_a_subscribe_are_written_without_asking_for_a_commit():
    """Only live traffic waits for a persistent session's write: the retained
    messages a SUBSCRIBE sends are kept, and ride along with a later batch
    (no prompt commit, no fsync of their own)."""
    broker = StoredBroker(ManualStore())
    pub = broker.connect("pub")
    pub.publish("t/r", b"kept", qos=1, retain=True)
    broker.store.commit()
    sub = broker.connect("sub", clean=False)
    writes, syncs = broker.store.writes, broker.store.syncs
    _, retained = sub.subscribe(("t/#", 1))
    assert broker.store.writes > writes and broker.store.syncs == syncs
    assert [p.payload for p in retained] == [b"kept"]
