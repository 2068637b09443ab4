"""End to end: paho-mqtt against ``twistd -n reactorapp`` in a child process.

One broker serves the whole module; each test uses its own topics and
client ids. ``--max-inflight 4`` is below the message counts the tests send,
so a delivery only completes if the client's acknowledgements really free
the window; the queue behind it is made big enough that a burst from a fast
publisher is never dropped. ``--sys-interval 0.2`` makes ``$SYS`` updates
arrive quickly.
"""

from __future__ import annotations

import signal
import socket
import struct

import paho.mqtt.client as mqtt
import pytest

from tests.brokerproc import running_broker
from tests.paho_client import TIMEOUT, PahoClient, Received, published
from tests.wire import read_packets

# twistd shuts down cleanly on SIGTERM, then ends itself with that signal.
STOPPED = -signal.SIGTERM
MAX_INFLIGHT = 4
BURST = 2000


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e")
    with running_broker(path, "--sys-interval", "0.2",
                        "--max-inflight", str(MAX_INFLIGHT),
                        "--max-queued-messages", str(2 * BURST)) as broker:
        yield broker
        assert broker.stop() == STOPPED
    assert "Traceback" not in broker.log, broker.log


@pytest.fixture
def clients(broker):
    """Make connected paho clients; all are closed when the test ends."""
    made = []

    def connect(client_id: str, clean_session: bool = True, will=None,
                protocol: int = mqtt.MQTTv311) -> PahoClient:
        client = PahoClient(broker.host, broker.port, client_id, clean_session, will, protocol)
        made.append(client)
        return client.connect()

    yield connect
    for client in made:
        client.close()


# -- a raw socket client, for what paho will not send ----------------------

def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([first]) + bytes(encoded) + body


def connect_packet(client_id: bytes, clean: bool = True, will=None) -> bytes:
    flags = 0x02 if clean else 0
    payload = _string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += _string(topic) + _string(message)
    return _packet(0x10, _string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 0) + payload)


def publish0_packet(topic: bytes, payload: bytes) -> bytes:
    return _packet(0x30, _string(topic) + payload)


DISCONNECT = b"\xe0\x00"


class RawClient:
    def __init__(self, broker) -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, client_id: bytes, clean: bool = True, will=None):
        """CONNECT and return the CONNACK the broker answers with."""
        self.send(connect_packet(client_id, clean, will))
        data = b""
        while len(data) < 4:
            chunk = self.sock.recv(4 - len(data))
            assert chunk, f"closed after {data!r}, before a whole CONNACK"
            data += chunk
        [connack] = read_packets(data)
        assert connack.type == "CONNACK"
        return connack

    def read_until_closed(self) -> bytes:
        """Everything the broker sends until it closes the connection; a
        connection still open after TIMEOUT raises socket.timeout."""
        data = b""
        try:
            while chunk := self.sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass  # an abort: closed all the same
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(broker):
    made = []

    def connect() -> RawClient:
        client = RawClient(broker)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


# -- QoS -----------------------------------------------------------------------

@pytest.mark.parametrize("sub_qos", [0, 1, 2])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_publish_at_each_qos_to_a_subscriber_at_each_qos(clients, pub_qos, sub_qos):
    """[MQTT-7.1.1-1] (over TCP) [MQTT-3.3.4-1] [MQTT-4.3.2-1] [MQTT-4.3.2-2] [MQTT-4.3.3-1]
    [MQTT-4.3.3-2] [MQTT-3.8.4-6] [MQTT-3.3.1-3] [MQTT-4.3.1-1] [MQTT-4.6.0-6] [MQTT-3.8.4-5]:
    the publisher's handshake completes, the subscriber gets every message
    in order at min(published, granted) QoS with DUP=0. More messages than
    the broker's in-flight window go out, so the subscriber's PUBACK or
    PUBREC/PUBCOMP must reach the broker for the rest to follow."""
    topic = f"e2e/qos/{pub_qos}/{sub_qos}"
    subscriber = clients(f"e2e-qos-sub-{pub_qos}{sub_qos}")
    assert subscriber.subscribe((topic, sub_qos)) == [sub_qos]
    publisher = clients(f"e2e-qos-pub-{pub_qos}{sub_qos}")

    count = 3 * MAX_INFLIGHT
    infos = [publisher.publish(topic, b"%d" % i, pub_qos) for i in range(count)]
    for info in infos:
        published(info)

    received = subscriber.take(count)
    assert [m.payload for m in received] == [b"%d" % i for i in range(count)]
    assert {(m.topic, m.qos, m.retain, m.dup) for m in received} == {
        (topic, min(pub_qos, sub_qos), False, False)}
    publisher.publish_and_wait(topic, b"end", 1)
    assert subscriber.next().payload == b"end"
    subscriber.assert_nothing_pending()


def test_many_messages_in_order_without_loss(clients):
    """[MQTT-4.6.0-6] [MQTT-4.6.0-2] [MQTT-4.3.2-1]: 2,000 QoS 1 messages on
    one topic arrive once each, in the order they were published."""
    topic = "e2e/order"
    subscriber = clients("e2e-order-sub")
    assert subscriber.subscribe((topic, 1)) == [1]
    publisher = clients("e2e-order-pub")

    count = BURST
    infos = [publisher.publish(topic, b"%d" % i, 1) for i in range(count)]
    for info in infos:
        published(info)

    received = subscriber.take(count)
    assert [m.payload for m in received] == [b"%d" % i for i in range(count)]
    assert {m.qos for m in received} == {1}
    publisher.publish_and_wait(topic, b"end", 1)
    assert subscriber.until(topic, b"end") == []


# -- retained ---------------------------------------------------------------------

def test_retained_message_set_delivered_and_cleared(clients):
    """[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8] [MQTT-3.3.1-9]
    [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.3.1-12] [MQTT-3.8.4-6]
    [MQTT-3.1.2-7]: a retained message reaches a later subscriber (through a
    wildcard) flagged RETAIN=1 at min(stored, granted) QoS, live ones carry
    RETAIN=0, RETAIN=0 does not replace it, and an empty retained payload
    is delivered and then clears it."""
    topic, marker = "e2e/retained/lamp", "e2e/retained/marker"
    publisher = clients("e2e-retained-pub")
    publisher.publish_and_wait(topic, b"on", 2, retain=True)
    publisher.disconnect()  # retained messages outlive their publisher

    early = clients("e2e-retained-early")
    assert early.subscribe(("e2e/retained/#", 1)) == [1]
    assert early.next() == Received(topic, b"on", 1, True, False)

    publisher = clients("e2e-retained-pub2")
    publisher.publish_and_wait(topic, b"not kept", 1, retain=False)
    publisher.publish_and_wait(topic, b"off", 1, retain=True)
    assert [(m.payload, m.retain) for m in early.take(2)] == [(b"not kept", False), (b"off", False)]

    later = clients("e2e-retained-later")
    assert later.subscribe((topic, 2)) == [2]
    assert later.next() == Received(topic, b"off", 1, True, False)

    publisher.publish_and_wait(topic, b"", 1, retain=True)
    assert early.next() == Received(topic, b"", 1, False, False)
    assert later.next() == Received(topic, b"", 1, False, False)

    last = clients("e2e-retained-last")
    assert last.subscribe(("e2e/retained/#", 1)) == [1]
    publisher.publish_and_wait(marker, b"end", 1)
    assert last.until(marker, b"end") == []


# -- wildcards and $SYS --------------------------------------------------------------

def test_single_and_multi_level_wildcards(clients):
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-3.3.2-3] [§4.7.1.1]: `+` fills one
    level (an empty one too), `#` matches the parent and everything below,
    and messages carry the topic they were published to."""
    plus = clients("e2e-wild-plus")
    assert plus.subscribe(("e2e/wild/+/temp", 0)) == [0]
    hash_ = clients("e2e-wild-hash")
    assert hash_.subscribe(("e2e/wild/#", 0)) == [0]
    publisher = clients("e2e-wild-pub")

    topics = ["e2e/wild/a/temp", "e2e/wild/a/b/temp", "e2e/wild/a/humidity",
              "e2e/wild", "e2e/wild//temp", "e2e/wild/", "e2e/wildcard/a/temp",
              "E2E/wild/a/temp"]
    for topic in topics:
        publisher.publish_and_wait(topic, b"x", 1)
    marker = "e2e/wild/end/temp"
    publisher.publish_and_wait(marker, b"end", 1)

    assert [m.topic for m in plus.until(marker, b"end")] == ["e2e/wild/a/temp", "e2e/wild//temp"]
    assert [m.topic for m in hash_.until(marker, b"end")] == [
        "e2e/wild/a/temp", "e2e/wild/a/b/temp", "e2e/wild/a/humidity",
        "e2e/wild", "e2e/wild//temp", "e2e/wild/"]


def test_sys_topics_seen_by_sys_filter_not_by_leading_wildcards(clients):
    """[MQTT-4.7.2-1] [§4.7.2] [MQTT-3.3.1-6] [MQTT-3.3.1-8]: `$SYS/#`
    receives the broker's retained status topics and their updates; `#` and
    `+/broker/uptime` see none of them, even while updates are flowing."""
    everything = clients("e2e-sys-everything")
    assert everything.subscribe(("#", 0), ("+/broker/uptime", 0)) == [0, 0]

    sys = clients("e2e-sys-watcher")
    assert sys.subscribe(("$SYS/#", 0)) == [0]
    retained = {}
    while True:
        message = sys.next()
        if not message.retain:
            break  # a live update, published after `everything` subscribed
        retained[message.topic] = message.payload
    assert message.topic.startswith("$SYS/broker/")
    assert retained["$SYS/broker/version"].startswith(b"reactorapp version ")
    assert retained["$SYS/broker/uptime"].endswith(b" seconds")
    for name in ["clients/connected", "messages/received", "messages/sent",
                 "subscriptions/count"]:
        assert int(retained[f"$SYS/broker/{name}"]) >= 0

    sys.publish_and_wait("e2e/sys/marker", b"end", 1)
    before = everything.until("e2e/sys/marker", b"end")
    assert [m.topic for m in before if m.topic.startswith("$")] == []


# -- wills ---------------------------------------------------------------------------

def test_will_published_when_a_client_drops_its_connection(clients):
    """[MQTT-3.1.2-8] [MQTT-3.1.2-9] [MQTT-3.1.2-16] [MQTT-3.1.2-17]
    [MQTT-3.8.4-6]: a connection lost without DISCONNECT publishes the will
    at its QoS, retained if asked (RETAIN=0 to current subscribers, RETAIN=1
    to later ones)."""
    topic = "e2e/will/dropped"
    watcher = clients("e2e-will-watcher")
    assert watcher.subscribe((topic, 2)) == [2]
    dying = clients("e2e-will-dying", will=(topic, b"gone", 1, True))

    dying.kill()

    assert watcher.next() == Received(topic, b"gone", 1, False, False)
    later = clients("e2e-will-later")
    assert later.subscribe((topic, 2)) == [2]
    assert later.next() == Received(topic, b"gone", 1, True, False)
    later.publish_and_wait(topic, b"", 1, retain=True)  # leave no retained will behind


def test_no_will_after_disconnect(clients, raw):
    """[MQTT-3.14.4-3] [MQTT-3.1.2-10]: after DISCONNECT the will is dropped.

    A raw socket sends the DISCONNECT, because it can then wait for the
    broker to close its end: the broker publishes a will in the same step
    as it closes, so the marker, published after that, proves the absence.
    """
    topic = "e2e/will/clean"
    watcher = clients("e2e-clean-watcher")
    assert watcher.subscribe((topic, 1)) == [1]

    leaving = raw()
    assert leaving.connect(b"e2e-clean-leaving", will=(topic.encode(), b"gone", 1, False)).return_code == 0
    leaving.send(DISCONNECT)
    assert leaving.read_until_closed() == b""

    watcher.publish_and_wait(topic, b"marker", 1)
    assert watcher.until(topic, b"marker") == []


# -- sessions --------------------------------------------------------------------------

def test_persistent_session_gets_what_was_published_while_away(clients):
    """[MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-4.5.0-1] [MQTT-3.2.2-2]
    [MQTT-3.2.2-3] [MQTT-3.1.3-2] [MQTT-4.6.0-6] [MQTT-3.8.4-6]: QoS 1 and 2
    messages published while a Clean Session 0 client is away arrive, in
    order and at the granted QoS, when it comes back with Session Present
    set and without subscribing again."""
    topic, client_id = "e2e/persist", "e2e-persist-sub"
    subscriber = clients(client_id, clean_session=False)
    assert subscriber.session_present is False
    assert subscriber.subscribe((topic, 1)) == [1]
    subscriber.disconnect()

    publisher = clients("e2e-persist-pub")
    count = 50
    for i in range(count):
        publisher.publish_and_wait(topic, b"%d" % i, 1 + i % 2)
    publisher.publish_and_wait(topic, b"qos 0 is not queued", 0)

    back = clients(client_id, clean_session=False)
    assert back.session_present is True
    received = back.take(count)
    assert [m.payload for m in received] == [b"%d" % i for i in range(count)]
    assert {(m.qos, m.retain) for m in received} == {(1, False)}
    publisher.publish_and_wait(topic, b"end", 1)
    assert back.until(topic, b"end") == []
    back.disconnect()

    clean = clients(client_id, clean_session=True)
    assert clean.session_present is False  # [MQTT-3.2.2-1] [MQTT-3.1.2-6]


def test_takeover_closes_the_first_connection_and_publishes_its_will(clients):
    """[MQTT-3.1.4-2] [MQTT-3.1.2-8]: a second connection with the same client
    id closes the first, whose will goes out; the second one works."""
    topic, client_id = "e2e/takeover", "e2e-takeover"
    watcher = clients("e2e-takeover-watcher")
    assert watcher.subscribe((topic, 1), ("e2e/takeover/after", 1)) == [1, 1]
    first = clients(client_id, will=(topic, b"first gone", 1, False))

    second = clients(client_id)

    assert first.disconnected.wait(TIMEOUT), "the first connection was not closed"
    assert watcher.next() == Received(topic, b"first gone", 1, False, False)
    second.publish_and_wait("e2e/takeover/after", b"second works", 1)
    assert watcher.next().payload == b"second works"
    assert not second.disconnected.is_set()


# -- misbehaving clients ------------------------------------------------------------------

def test_protocol_violations_close_only_the_offending_connection(clients, raw):
    """[MQTT-3.3.2-2] [MQTT-4.7.1-1] [MQTT-4.8.0-1] [MQTT-3.1.0-1] [§2.2.1]
    [MQTT-3.1.2-8]: a PUBLISH to a wildcard topic and bytes that are not
    MQTT each close their connection (the first one's will goes out, nothing
    is routed); a client connected all along carries on."""
    topic = "e2e/misbehave"
    bystander = clients("e2e-misbehave-bystander")
    assert bystander.subscribe((f"{topic}/#", 1)) == [1]

    wildcard = raw()
    assert wildcard.connect(b"e2e-misbehave-wildcard",
                            will=(f"{topic}/will".encode(), b"violated", 0, False)).return_code == 0
    wildcard.send(publish0_packet(f"{topic}/+".encode(), b"bad"))
    assert wildcard.read_until_closed() == b""
    assert bystander.next() == Received(f"{topic}/will", b"violated", 0, False, False)

    garbage = raw()
    garbage.send(b"\x00\x00\xff\xff\xff\xff\xff")
    assert garbage.read_until_closed() == b""  # no CONNACK either

    bystander.publish_and_wait(f"{topic}/ok", b"still here", 1)
    assert bystander.next() == Received(f"{topic}/ok", b"still here", 1, False, False)
    assert not bystander.disconnected.is_set()


def test_empty_client_id_without_clean_session_is_refused(raw):
    """[MQTT-3.1.3-8] [MQTT-3.1.3-9] [MQTT-3.2.2-4] [MQTT-3.2.2-5]: CONNACK
    return code 2 with Session Present 0, then the broker closes."""
    client = raw()
    connack = client.connect(b"", clean=False)
    assert (connack.session_present, connack.return_code) == (False, 2)
    assert client.read_until_closed() == b""


def test_empty_client_id_with_clean_session_is_accepted(clients):
    """[MQTT-3.1.3-6]: the broker makes up an id and the client works."""
    anonymous = clients("")
    assert anonymous.subscribe(("e2e/anonymous", 1)) == [1]
    anonymous.publish_and_wait("e2e/anonymous", b"hello", 1)
    assert anonymous.next().payload == b"hello"


# -- the process ------------------------------------------------------------------------

def test_mqtt_3_1_clients_are_served_like_3_1_1(clients):
    """paho's MQTTv31 ("MQIsdp", level 3) connects, subscribes, publishes at
    QoS 1 and 2, and talks with 3.1.1 clients; its empty client id becomes a
    22-character one, within 3.1's limit of 23."""
    old = clients("", protocol=mqtt.MQTTv31)
    new = clients("v311-next-to-v31")
    assert old.session_present is False
    assert old.subscribe(("v31/#", 2)) == [2]
    assert new.subscribe(("v31/#", 1)) == [1]
    published(old.publish("v31/a", b"from 3.1", qos=1))
    published(new.publish("v31/b", b"from 3.1.1", qos=2))
    assert [(m.topic, m.payload) for m in old.take(2)] == [
        ("v31/a", b"from 3.1"), ("v31/b", b"from 3.1.1")]
    assert [(m.topic, m.payload) for m in new.take(2)] == [
        ("v31/a", b"from 3.1"), ("v31/b", b"from 3.1.1")]


def test_mqtt_3_1_client_id_over_23_characters_is_rejected(broker):
    """MQTT 3.1 allows 1 to 23 characters: CONNACK 2 (identifier rejected)."""
    client = PahoClient(broker.host, broker.port, "x" * 24, protocol=mqtt.MQTTv31)
    try:
        client.client.connect(broker.host, broker.port)
        client.client.loop_start()
        assert client.connected.wait(TIMEOUT), "no CONNACK"
        # paho reports CONNACK 2 as its MQTT 5 equivalent, 0x85.
        assert client.return_code == 0x85, client.return_code
        assert client.disconnected.wait(TIMEOUT)
    finally:
        client.close()


def test_sigterm_stops_the_broker_cleanly_and_it_starts_again(tmp_path):
    """No spec id (process management): SIGTERM with a client connected ends
    twistd cleanly (the client sees its connection end), and a new broker on
    the same data directory serves clients again."""
    for run in range(2):
        with running_broker(tmp_path) as broker:
            client = PahoClient(broker.host, broker.port, "e2e-restart", clean_session=False)
            try:
                client.connect()
                assert client.subscribe(("e2e/restart", 1)) == [1]
                client.publish_and_wait("e2e/restart", b"run %d" % run, 1)
                assert client.next().payload == b"run %d" % run
                assert broker.stop() == STOPPED
                assert client.disconnected.wait(TIMEOUT)
            finally:
                client.close()
        assert "Server Shut Down." in broker.log
        assert "Traceback" not in broker.log, broker.log
        assert not (tmp_path / "twistd.pid").exists()

