"""kill -9 in the middle of a stream loses nothing the broker acknowledged.

A real broker under twistd with the SQLite store; a persistent subscriber is
offline while a publisher streams thousands of messages and records every
acknowledgement; the broker gets SIGKILL once a quarter are acknowledged (the
rest still in flight), is restarted on the same data directory, and the
subscriber comes back for its messages. Clients are raw sockets, so the test
sees every packet and no client library retries behind its back.
"""

from __future__ import annotations

import socket
import threading
import time

from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.brokerproc import running_broker
from tests.wire import complete_frames, read_packets

#: Seconds any single wait may take.
TIMEOUT = 20.0
#: Messages per run: packet ids 1..N, payload = id, all in flight at once.
N = 4000
#: The offline queue must hold them all; its bound is another matter.
BROKER_ARGS = ("--max-queued-messages", "100000", "--max-inflight", "100")


class WireClient:
    """A blocking MQTT 3.1.1 client. A reader thread parses what the broker
    sends and calls `handle` with the lock held; tests wait on `changed`."""

    def __init__(self, port: int, client_id: str, clean: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.settimeout(None)
        self.changed = threading.Condition()
        self.eof = False
        self.connack = None
        self._sending = threading.Lock()
        self.send(P.Connect(client_id=client_id, clean_session=clean))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait(lambda: self.connack is not None, "CONNACK")

    def send(self, *packets) -> None:
        data = b"".join(encode(p) for p in packets)
        with self._sending:
            self.sock.sendall(data)

    def handle(self, packet) -> list:
        """Answer one packet from the broker; returns packets to send back."""
        return []

    def _read(self) -> None:
        buffer = bytearray()
        try:
            while chunk := self.sock.recv(1 << 16):
                buffer += chunk
                whole = complete_frames(buffer)
                packets = read_packets(bytes(buffer[:whole]))
                del buffer[:whole]
                replies = []
                with self.changed:
                    for packet in packets:
                        if packet.type == "CONNACK":
                            self.connack = packet
                        else:
                            replies += self.handle(packet)
                    self.changed.notify_all()
                if replies:
                    self.send(*replies)
        except OSError:
            pass  # the broker was killed
        finally:
            with self.changed:
                self.eof = True
                self.changed.notify_all()

    def wait(self, predicate, what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    why = "the connection closed" if self.eof else f"{timeout} s passed"
                    raise AssertionError(f"waiting for {what}: {why}")
                self.changed.wait(remaining)

    def closed(self) -> None:
        """Wait until the broker's end is gone."""
        self.wait(lambda: self.eof, "the connection to close")
        self.sock.close()

    def disconnect(self) -> None:
        self.send(P.Disconnect())
        self.closed()


class Subscriber(WireClient):
    """Records every PUBLISH payload and completes QoS 1 and 2 handshakes."""

    def __init__(self, *args) -> None:
        self.received: list[int] = []
        super().__init__(*args)

    def handle(self, packet) -> list:
        if packet.type == "PUBLISH":
            self.received.append(int(packet.payload))
            if packet.qos == 1:
                return [P.PubAck(packet.packet_id)]
            if packet.qos == 2:
                return [P.PubRec(packet.packet_id)]
        elif packet.type == "PUBREL":
            return [P.PubComp(packet.packet_id)]
        return []


class Publisher(WireClient):
    """Records PUBACK and PUBREC (the broker's promise) and PUBCOMP."""

    def __init__(self, *args) -> None:
        self.acked: set[int] = set()
        self.completed: set[int] = set()
        super().__init__(*args)

    def handle(self, packet) -> list:
        if packet.type in ("PUBACK", "PUBREC"):
            self.acked.add(packet.packet_id)
            if packet.type == "PUBREC":
                return [P.PubRel(packet.packet_id)]
        elif packet.type == "PUBCOMP":
            self.completed.add(packet.packet_id)
        return []

    def stream(self, qos: int, ids, dup: bool = False) -> threading.Thread:
        """Send the PUBLISHes from a thread, as fast as the socket takes them."""
        def run():
            chunk = []
            try:
                for packet_id in ids:
                    chunk.append(P.Publish("crash/stream", str(packet_id).encode(), qos,
                                           dup=dup, packet_id=packet_id))
                    if len(chunk) == 200:
                        self.send(*chunk)
                        chunk = []
                if chunk:
                    self.send(*chunk)
            except OSError:
                pass  # the broker was killed mid-stream
        sender = threading.Thread(target=run, daemon=True)
        sender.start()
        return sender


def subscribe_and_leave(port: int, qos: int) -> None:
    sub = Subscriber(port, "durable-sub", False)
    sub.send(P.Subscribe(1, [P.SubscriptionRequest("crash/#", qos)]))
    sub.disconnect()  # the SUBACK came first: the broker handles packets in order


def kill_mid_stream(broker, publisher: Publisher, qos: int) -> None:
    sender = publisher.stream(qos, range(1, N + 1))
    publisher.wait(lambda: len(publisher.acked) >= N // 4, "a quarter of the acknowledgements")
    broker.kill()
    publisher.closed()
    sender.join(TIMEOUT)
    assert not sender.is_alive()


def collect(port: int, until) -> Subscriber:
    sub = Subscriber(port, "durable-sub", False)
    assert sub.connack.session_present
    sub.wait(lambda: until(sub.received), "every acknowledged message")
    return sub


def test_qos1_every_acknowledged_message_survives_a_kill(tmp_path):
    """[MQTT-4.3.2-2] a PUBACK is a promise, even across kill -9;
    [MQTT-3.1.2-4] [MQTT-3.1.2-5] the session and its queue survive.
    Duplicates are allowed at QoS 1."""
    with running_broker(tmp_path, *BROKER_ARGS) as broker:
        subscribe_and_leave(broker.port, 1)
        publisher = Publisher(broker.port, "pub-1", True)
        kill_mid_stream(broker, publisher, 1)
    acked = set(publisher.acked)

    with running_broker(tmp_path, *BROKER_ARGS) as broker:
        sub = collect(broker.port, lambda got: acked <= set(got))
        sub.disconnect()
    assert acked <= set(sub.received)


def test_qos2_nothing_lost_and_nothing_twice_across_a_kill(tmp_path):
    """[MQTT-4.3.3-2] PUBREC is a promise across kill -9; the persistent
    publisher re-sends after the restart [MQTT-4.4.0-1] (PUBLISH with DUP=1
    for ids without PUBREC, PUBREL for the others), and ids awaiting PUBREL
    survived, so the subscriber gets every message exactly once."""
    with running_broker(tmp_path, *BROKER_ARGS) as broker:
        subscribe_and_leave(broker.port, 2)
        publisher = Publisher(broker.port, "pub-2", False)
        kill_mid_stream(broker, publisher, 2)
    acked = set(publisher.acked)

    with running_broker(tmp_path, *BROKER_ARGS) as broker:
        sub = collect(broker.port, lambda got: acked <= set(got))
        again = Publisher(broker.port, "pub-2", False)
        assert again.connack.session_present
        again.acked |= acked
        again.send(*[P.PubRel(i) for i in sorted(acked)])
        again.stream(2, [i for i in range(1, N + 1) if i not in acked], dup=True).join(TIMEOUT)
        again.wait(lambda: len(again.completed) == N, "PUBCOMP for every message")
        sub.wait(lambda: len(set(sub.received)) == N, "every message")
        again.disconnect()
        sub.disconnect()
    assert sorted(sub.received) == list(range(1, N + 1))
