"""paho-mqtt clients (3.1.1 unless asked for 3.1) for end-to-end tests, with a bound on every wait.

paho runs its network loop on a thread; its callbacks only fill queues and
set events here, and the test thread waits on those with a timeout, so a
missing packet fails the test instead of hanging it or sleeping.
"""

from __future__ import annotations

import queue
import socket
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt

#: Seconds any single wait may take before the test fails.
TIMEOUT = 10.0


@dataclass(frozen=True)
class Received:
    """One PUBLISH as the client saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool


class PahoClient:
    """One paho client on its own loop thread; never reconnects by itself,
    so a connection the broker closes stays closed."""

    def __init__(self, host: str, port: int, client_id: str = "",
                 clean_session: bool = True, will: tuple | None = None,
                 protocol: int = mqtt.MQTTv311) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
            clean_session=clean_session, protocol=protocol,
            reconnect_on_failure=False,
        )
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.return_code: int | None = None
        self._subacks: dict[int, list[int]] = {}
        self._suback_arrived = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- paho callbacks (network thread) -------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.session_present = flags.session_present
        self.return_code = reason_code.value
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._suback_arrived:
            self._subacks[mid] = [code.value for code in reason_codes]
            self._suback_arrived.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        self.messages.put(Received(message.topic, message.payload, message.qos,
                                   bool(message.retain), bool(message.dup)))

    # -- test side -------------------------------------------------------

    def connect(self) -> PahoClient:
        """Connect and wait for an accepting CONNACK."""
        self.client.connect(self.host, self.port, keepalive=60)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), f"{self.client_id}: no CONNACK"
        assert self.return_code == 0, f"{self.client_id}: CONNACK {self.return_code}"
        return self

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        """Subscribe and return the SUBACK's codes, once it has arrived."""
        result, mid = self.client.subscribe(list(filters))
        assert result == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(result)
        with self._suback_arrived:
            arrived = self._suback_arrived.wait_for(lambda: mid in self._subacks, TIMEOUT)
            assert arrived, f"{self.client_id}: no SUBACK for {filters}"
            return self._subacks.pop(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False):
        """Queue a PUBLISH; returns paho's MessageInfo (see `published`)."""
        info = self.client.publish(topic, payload, qos, retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        return info

    def publish_and_wait(self, topic: str, payload: bytes, qos: int = 0,
                         retain: bool = False) -> None:
        """PUBLISH and wait until its handshake with the broker is complete."""
        published(self.publish(topic, payload, qos, retain))

    def next(self) -> Received:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {TIMEOUT} s") from None

    def take(self, count: int) -> list[Received]:
        return [self.next() for _ in range(count)]

    def until(self, topic: str, payload: bytes) -> list[Received]:
        """Everything received before the marker (topic, payload), which is
        consumed. The broker handles one connection's packets in order, so
        a marker published after X proves that X was delivered or not."""
        before = []
        while True:
            message = self.next()
            if message.topic == topic and message.payload == payload:
                return before
            before.append(message)

    def assert_nothing_pending(self) -> None:
        assert self.messages.empty(), f"unexpected: {list(self.messages.queue)}"

    def disconnect(self) -> None:
        """Send DISCONNECT and wait for paho to close the connection."""
        self.client.disconnect()
        assert self.disconnected.wait(TIMEOUT), f"{self.client_id}: disconnect did not finish"
        self.client.loop_stop()

    def kill(self) -> None:
        """Drop the TCP connection without a DISCONNECT, as a crash would.

        ``shutdown`` (not ``close``) is safe while paho's thread is in
        ``select`` on the socket: the thread wakes up, reads end of file and
        reports the connection lost.
        """
        self.client.socket().shutdown(socket.SHUT_RDWR)
        assert self.disconnected.wait(TIMEOUT), f"{self.client_id}: loss not noticed"
        self.client.loop_stop()

    def close(self) -> None:
        """End the client whatever state it is in (test clean-up)."""
        if self.connected.is_set() and not self.disconnected.is_set():
            self.client.disconnect()
            self.disconnected.wait(TIMEOUT)
        self.client.loop_stop()


def published(info) -> None:
    """Wait for paho to finish a PUBLISH's handshake (PUBACK, or PUBREC and
    PUBCOMP); QoS 0 is done once written."""
    info.wait_for_publish(TIMEOUT)
    assert info.is_published(), f"message {info.mid} not acknowledged within {TIMEOUT} s"
