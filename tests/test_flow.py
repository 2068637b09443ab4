"""Flow control: a congested subscriber holds its publishers back instead
of dropping; a stuck one is told apart after the slow subscriber timeout.

Twisted pauses a connection's producer when its buffer passes
--send-buffer; the tests do the same by calling ``pauseProducing`` and
``resumeProducing``. ``producerState`` of a StringTransport shows whether
the broker reads from that client.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from reactorapp.hub.flow import Congestion, Flow, IInput
from reactorapp.hub.message import Message
from reactorapp.mqtt import packets as P
from tests.mqtt_harness import Broker

TIMEOUT = 5.0


class Source:
    """An input that records its holds."""

    def __init__(self):
        self.holds = []

    def hold(self, by):
        self.holds.append(by)

    def release(self, by):
        self.holds.remove(by)


# -- Congestion on its own ---------------------------------------------------------


def test_congestion_holds_each_input_once_and_releases_it_when_drained():
    clock, flow, source = Clock(), Flow(), Source()
    congestion = Congestion(clock, TIMEOUT)
    flow.current = source
    assert congestion.hold(flow) and congestion.hold(flow)
    assert source.holds == [congestion]
    congestion.end()
    assert source.holds == []
    assert not clock.getDelayedCalls()


def test_congestion_never_holds_its_owner_nor_nothing():
    clock, flow = Clock(), Flow()
    congestion = Congestion(clock, TIMEOUT)
    assert congestion.hold(flow)  # no input routing now: nothing to hold
    owner = Source()
    flow.current = owner
    assert congestion.hold(flow, owner)
    assert owner.holds == []


def test_a_congestion_that_drains_nothing_turns_slow_and_lets_go():
    clock, flow, source = Clock(), Flow(), Source()
    stuck = []
    congestion = Congestion(clock, TIMEOUT, lambda: stuck.append(True))
    flow.current = source
    congestion.hold(flow)
    clock.advance(TIMEOUT)
    assert congestion.slow and stuck == [True]
    assert source.holds == []
    assert not congestion.hold(flow)  # slow: write nothing, hold nobody
    assert source.holds == []


def test_a_zero_timeout_never_calls_anyone_slow():
    clock = Clock()
    congestion = Congestion(clock, 0)
    assert not clock.getDelayedCalls()
    clock.advance(3600)
    assert not congestion.slow


# -- through the MQTT protocol -------------------------------------------------------


def broker(**settings):
    settings.setdefault("slow_subscriber_timeout", TIMEOUT)
    return Broker(**settings)


def test_an_mqtt_connection_is_an_input():
    b = broker()
    verifyObject(IInput, b.connect("c").protocol)


def test_a_congested_subscriber_gets_every_qos0_message_and_holds_the_publisher():
    """[MQTT-4.6.0-6]: everything, in order; the publisher waits instead."""
    b = broker(max_queued_messages=4)
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    pub = b.connect("pub")
    sub.protocol.pauseProducing()  # its buffer passed --send-buffer
    for i in range(100):
        pub.publish("t", str(i).encode())
    assert [p.payload for p in sub.take()] == [str(i).encode() for i in range(100)]
    assert pub.transport.producerState == "paused"
    assert b.hub.stats.publish_dropped == 0 and b.hub.stats.inputs_held == 1
    sub.protocol.resumeProducing()  # drained
    assert pub.transport.producerState == "producing"


def test_a_publisher_goes_on_once_every_subscriber_it_congested_drained():
    b = broker()
    one, two = b.connect("one"), b.connect("two")
    one.subscribe(("t", 0))
    two.subscribe(("t", 0))
    pub = b.connect("pub")
    one.protocol.pauseProducing()
    two.protocol.pauseProducing()
    pub.publish("t", b"x")
    one.protocol.resumeProducing()
    assert pub.transport.producerState == "paused"
    two.protocol.resumeProducing()
    assert pub.transport.producerState == "producing"


def test_publishers_to_other_topics_are_not_held():
    b = broker()
    sub = b.connect("sub")
    sub.subscribe(("busy", 0))
    other_sub = b.connect("other-sub")
    other_sub.subscribe(("quiet", 0))
    busy, quiet = b.connect("busy"), b.connect("quiet")
    sub.protocol.pauseProducing()
    busy.publish("busy", b"x")
    quiet.publish("quiet", b"y")
    assert busy.transport.producerState == "paused"
    assert quiet.transport.producerState == "producing"
    assert [p.payload for p in other_sub.take()] == [b"y"]


def test_a_stuck_subscriber_holds_publishers_for_the_timeout_only():
    """After the timeout it is slow: the publisher goes on, the stuck
    client's QoS 0 messages are held within its bounds (oldest dropped,
    counted), and a subscriber that reads gets everything."""
    b = broker(max_queued_messages=4)
    stuck, reader = b.connect("stuck"), b.connect("reader")
    stuck.subscribe(("t", 0))
    reader.subscribe(("t", 0))
    pub = b.connect("pub")
    stuck.protocol.pauseProducing()
    pub.publish("t", b"0")
    assert pub.transport.producerState == "paused"
    b.clock.advance(TIMEOUT)
    assert pub.transport.producerState == "producing"
    assert b.hub.stats.slow_subscribers == 1
    for i in range(1, 20):
        pub.publish("t", str(i).encode())
    assert pub.transport.producerState == "producing"
    assert [p.payload for p in reader.take()] == [str(i).encode() for i in range(20)]
    assert b.hub.stats.queue_dropped_qos0 == 15
    stuck.take()
    stuck.protocol.resumeProducing()  # it read after all: no longer slow
    assert [p.payload for p in stuck.take()] == [b"16", b"17", b"18", b"19"]
    pub.publish("t", b"20")
    assert [p.payload for p in stuck.take()] == [b"20"]  # written at once again


def test_a_congested_subscriber_that_leaves_releases_its_publishers():
    b = broker()
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    pub = b.connect("pub")
    sub.protocol.pauseProducing()
    pub.publish("t", b"x")
    sub.drop()
    assert pub.transport.producerState == "producing"
    assert not b.clock.getDelayedCalls()


def test_qos1_to_a_congested_subscriber_is_sent_in_its_window():
    b = broker(max_inflight=3)
    sub = b.connect("sub")
    sub.subscribe(("t", 1))
    pub = b.connect("pub")
    sub.protocol.pauseProducing()
    for i in range(5):
        pub.publish("t", str(i).encode(), qos=1)
    assert [p.payload for p in sub.take()] == [b"0", b"1", b"2"]
    assert [p.type for p in pub.take()] == ["PUBACK"] * 5
    assert pub.transport.producerState == "paused"
    sub.protocol.resumeProducing()
    assert pub.transport.producerState == "producing"


def test_a_client_that_does_not_read_is_not_read_from():
    """What the broker answers (PUBACK, SUBACK, PINGRESP) cannot grow the
    buffer of a client that sends but never reads: once its output is over
    --send-buffer, nothing more is read from it until it drains."""
    b = broker()
    client = b.connect("c")
    client.protocol.pauseProducing()
    assert client.transport.producerState == "paused"
    client.protocol.resumeProducing()
    assert client.transport.producerState == "producing"


def test_a_client_whose_own_output_is_stuck_still_meets_its_keep_alive():
    """[MQTT-3.1.2-24]: not reading our answers for 1.5 x Keep Alive is
    not being there."""
    b = broker(slow_subscriber_timeout=0)
    client = b.connect("c", keep_alive=10)
    client.protocol.pauseProducing()
    client.advance(15)
    assert client.closed


def test_a_publisher_held_back_by_a_subscriber_keeps_its_keep_alive():
    """Its PINGREQs wait in the socket because we stopped reading: not its fault."""
    b = broker(slow_subscriber_timeout=0)
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    pub = b.connect("pub", keep_alive=10)
    sub.protocol.pauseProducing()
    pub.publish("t", b"x")
    pub.advance(30)
    assert not pub.closed
    sub.protocol.resumeProducing()
    pub.send(P.PingReq())
    assert [p.type for p in pub.take()] == ["PINGRESP"]


def test_the_subscriber_own_publishes_do_not_hold_it_twice():
    """A client publishing to its own subscription while its output is
    congested is already not read from; it is not held by itself."""
    b = broker()
    client = b.connect("c")
    client.subscribe(("t", 0))
    client.protocol.pauseProducing()
    client.publish("t", b"x")
    assert [p.payload for p in client.take()] == [b"x"]
    client.protocol.resumeProducing()
    assert client.transport.producerState == "producing"


# -- callers with no socket: HTTP, plugins ---------------------------------------------


def test_a_caller_of_publish_waits_for_the_subscribers_it_congested():
    """An HTTP publish or a plugin's call: the hub answers later, after the
    congested subscriber drained, and drops nothing."""
    b = broker()
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    sub.protocol.pauseProducing()
    answered = []
    d = b.hub.publish(Message("t", b"x", 0, False))
    d.addCallback(answered.append)
    assert [p.payload for p in sub.take()] == [b"x"]
    assert answered == []
    sub.protocol.resumeProducing()
    assert answered == [None]


def test_a_caller_is_answered_at_once_when_nobody_is_congested():
    b = broker()
    b.connect("sub").subscribe(("t", 0))
    assert b.hub.publish(Message("t", b"x", 0, False)) is None
    assert b.hub.flow.current is None


def test_a_caller_is_answered_once_a_stuck_subscriber_turns_slow():
    b = broker()
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    sub.protocol.pauseProducing()
    answered = []
    b.hub.publish(Message("t", b"x", 0, False)).addCallback(answered.append)
    b.clock.advance(TIMEOUT)
    assert answered == [None]


def test_an_http_publish_is_answered_once_the_subscriber_drained():
    """The HTTP front end has no socket of its own to stop reading: a busy
    hub answers later instead, and drops nothing."""
    from tests.test_web_api import Response, Web

    web = Web()
    sub = web.broker.connect("sub")
    sub.subscribe(("t", 0))
    sub.protocol.pauseProducing()
    _, transport = web.send(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 27\r\n\r\n"
        b'{"topic": "t", "qos": 0}   ')
    assert [p.payload for p in sub.take()] == [b""]
    assert transport.value() == b""
    sub.protocol.resumeProducing()
    assert Response(transport.value()).status == 200


def test_send_buffer_applies_to_mqtt_over_websocket():
    """--send-buffer sets the TCP connection's buffer under the WebSocket."""
    from reactorapp.web.websocket import WebSocketTransport

    class TCP(StringTransport):
        bufferSize = 65536

    class WebSocket:
        transport = TCP()

    b = broker(send_buffer=8192)
    protocol = b.factory.buildProtocol(None)
    transport = WebSocketTransport(WebSocket())
    transport.registerProducer = lambda producer, streaming: None
    protocol.makeConnection(transport)
    assert WebSocket.transport.bufferSize == 8192


def test_holds_and_slow_subscribers_are_on_metrics():
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from reactorapp.auth.guard import Guard
    from reactorapp.auth.metrics import GuardCollector

    b = broker()
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    pub = b.connect("pub")
    sub.protocol.pauseProducing()
    pub.publish("t", b"x")
    b.clock.advance(TIMEOUT)
    registry = CollectorRegistry()
    registry.register(GuardCollector(Guard(), b.hub))
    text = generate_latest(registry).decode()
    assert "reactorapp_inputs_held_total 1.0" in text
    assert "reactorapp_slow_subscribers_total 1.0" in text


def test_a_read_is_one_fair_turn_and_small_writes_are_not_delayed():
    """Twisted's TCP transport reads at most ``bufferSize`` bytes per event:
    the default --send-buffer keeps one publisher's read to 64 KiB, half of
    what one write event sends (SEND_LIMIT). Output is one write per read
    already, so Nagle's algorithm would only add latency."""

    class TCP(StringTransport):
        bufferSize = 2 ** 16 * 16
        nodelay = False

        def setTcpNoDelay(self, enabled):
            self.nodelay = enabled

    b = broker()
    protocol = b.factory.buildProtocol(None)
    transport = TCP()
    protocol.makeConnection(transport)
    assert transport.bufferSize == 64 * 1024 and transport.nodelay


def test_a_plugin_publisher_is_held_back_by_a_congested_subscriber():
    """Plugin protocols publish through HubClient: held back, their runs
    wait, and past ``maxPendingRuns`` the hub stops reading from them."""
    from reactorapp.protocols.line import LineFactory
    from reactorapp.testing import MemoryHub

    b = broker()
    kit = MemoryHub(clock=b.clock)
    kit.hub = b.hub
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    sub.protocol.pauseProducing()
    user = kit.connect(LineFactory(b.hub))
    protocol = user.protocol
    for _ in range(protocol.maxPendingRuns + 1):  # one request a read
        user.send(b"PUB t x\n")
    assert len(sub.take()) == 1  # the first waits for the subscriber to drain
    assert user.transport.producerState == "paused"
    assert b.hub.stats.publish_dropped == 0
    sub.protocol.resumeProducing()
    while sub.take():
        pass
    assert user.transport.producerState == "producing"


def test_a_client_slow_a_moment_ago_is_slow_at_once_when_congested_again():
    """Reading a little now and then cannot keep publishers waiting: for a
    minute after it was slow, a client's next congestion holds nobody."""
    from reactorapp.hub.flow import SLOW_REMEMBERED

    b = broker()
    sub = b.connect("sub")
    sub.subscribe(("t", 0))
    pub = b.connect("pub")
    sub.protocol.pauseProducing()
    b.clock.advance(TIMEOUT)  # slow
    sub.protocol.resumeProducing()  # it read its buffer after all
    sub.take()
    sub.protocol.pauseProducing()  # and stopped again
    pub.publish("t", b"x")
    assert pub.transport.producerState == "producing"
    assert sub.take() == []  # kept in its queue, as for any slow client
    sub.protocol.resumeProducing()
    assert [p.payload for p in sub.take()] == [b"x"]
    b.clock.advance(SLOW_REMEMBERED)
    sub.protocol.pauseProducing()
    pub.publish("t", b"y")
    assert pub.transport.producerState == "paused"  # busy again, not suspect
