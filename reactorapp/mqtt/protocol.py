"""The Twisted side of MQTT: bytes in, calls to the session and hub out.

A connected client's packets are handled here (QoS handshakes, keep-alive,
wills, flow control); CONNECT and authentication in `reactorapp.mqtt.connect`;
the order acknowledgements leave in, sans I/O, in `reactorapp.mqtt.acks`;
the states and their handler tables in `reactorapp.mqtt.states`. What a
client is owed lives in its :class:`Session`; routing lives in the hub.
"""

from __future__ import annotations

import math

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.addresses import address_text
from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import Identity
from reactorapp.auth.limits import TokenBucket
from reactorapp.hub.flow import SLOW_REMEMBERED, Congestion, IInput
from reactorapp.hub.message import Message, application_properties
from reactorapp.hub.topics import SYS_PREFIX, is_valid_filter
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.acks import AckLine
from reactorapp.mqtt.codec import (
    MAX_CONNECT_SIZE, PINGRESP_BYTES, Parser, ProtocolError, UnsupportedProtocol, encode,
    encode_puback, encode_pubcomp, encode_publish, encode_publish0_plain5, encode_publish_parts,
    encode_pubrec, encode_pubrel,
)
from reactorapp.mqtt.connect import (
    ConnectHandling, expiry_for, protocol_version, receive_maximum,
)
from reactorapp.mqtt.interfaces import IConnection
from reactorapp.mqtt.publish5 import (
    AliasError, encode_for, encode_plain5, payload_format_invalid,
)
from reactorapp.mqtt.session import MQTTSettings, Session, publish_will
from reactorapp.mqtt.states import AUTHENTICATING, AWAITING_CONNECT, CHALLENGED, CLOSED, CONNECTED
from reactorapp.mqtt.suboptions import Options
from reactorapp.mqtt.timeouts import Timeouts
from reactorapp.mqtt.v5 import V5
from reactorapp.mqtt.writes import BATCH, read_now, set_nodelay, write_now

log = Logger()

#: Highest QoS this broker grants.
MAXIMUM_QOS = 2
#: Seconds a connection ended with an MQTT 5 DISCONNECT has to take it
#: before it is cut off.
CLOSE_GRACE = 10.0


@implementer(IInput, IConnection)
class MQTTProtocol(ConnectHandling, Protocol):
    """One MQTT connection, server side.

    As an output it is its transport's streaming producer; as an input it
    can be held back by the subscribers its messages congest (`IInput`).
    """

    def __init__(self, factory: MQTTFactory) -> None:
        self.factory = factory
        self.hub = factory.hub
        self.clock = factory.clock
        self.settings = factory.settings
        self.stats = factory.hub.stats
        self.traffic = factory.traffic
        #: The ACL, or None: the only per-message cost when there is none.
        self.authorizer = factory.guard.authorizer
        self.identity: Identity | None = None
        #: False while the transport's buffer is over --send-buffer: the
        #: session then asks `hold_input` whether to write anyway.
        self.writable = True
        #: While not writable: the inputs held back, and whether the client
        #: is stuck (see `reactorapp.hub.flow`).
        self._congestion: Congestion | None = None
        self._producing = False
        self.state = AWAITING_CONNECT
        self.client_id: str | None = None
        self.session: Session | None = None
        self.will: P.Will | None = None
        self.keep_alive = 0
        #: The tick of this connection's one timer in ``factory.timeouts``:
        #: the CONNECT timeout until CONNECT, the keep-alive after CONNACK.
        self._timer = None
        self._last_packet_at = 0.0
        #: The source address counted by the connection limiter, once admitted.
        self._address: str | None = None
        #: What an MQTT 5 client agreed on (`reactorapp.mqtt.v5.V5`); None for 3.1.1.
        self.v5: V5 | None = None
        #: Packets (and a protocol error) received while authenticating.
        self._held: list | None = None
        #: Why reading from the client is paused now (empty: reading): a
        #: name, or the `Congestion` of a subscriber holding it back.
        self._read_pauses: set = set()
        self._bucket: TokenBucket | None = None
        self._throttle_call = None
        #: Acknowledgements not sent yet, in order (`reactorapp.mqtt.acks`).
        #: (An `AckLine` once needed: an empty one costs 760 bytes.)
        self._acks: AckLine | tuple = ()
        #: Output held while a read is handled, or None.
        self._out: list | None = None
        # Until CONNECT, anything else is refused from its first byte and
        # CONNECT itself is small: a peer that has not logged in cannot make
        # the broker buffer a large packet.
        self._parser = Parser(max_packet_size=factory.settings.max_packet_size,
                              max_connect_size=factory.max_connect_size)

    def __repr__(self) -> str:
        return f"<MQTTProtocol client_id={self.client_id!r}>"

    @property
    def guard(self) -> Guard:
        """The factory's (not an attribute: a connection stays small)."""
        return self.factory.guard

    # -- Twisted callbacks ---------------------------------------------

    def connectionMade(self) -> None:
        self._last_packet_at = self.clock.seconds()
        address = self.guard.admit(self.transport.getPeer())
        if address is None:
            # Too many connections: close at once, before any work is done.
            self.state = CLOSED
            self.transport.abortConnection()
            return
        self._address = address
        if self.settings.connect_timeout:
            # Slowloris: a connection that never sends CONNECT holds a slot.
            self._timer = self.factory.timeouts.add(
                self.settings.connect_timeout, self, self._connect_timed_out)
        # A streaming producer: the transport pauses us when its buffer is
        # over --send-buffer and resumes us once it has drained. Twisted's
        # TCP transport also reads at most that much per event, so it is
        # kept small: one busy publisher's read is one fair turn.
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = self.settings.send_buffer
        set_nodelay(self.transport)
        self.transport.registerProducer(self, True)
        self._producing = True
        read_now(self.transport)

    # -- IPushProducer: the transport tells us when to stop writing ---------

    def pauseProducing(self) -> None:
        """Our output is over its high-water mark: congested until it
        drains, stuck after --slow-subscriber-timeout without draining.
        Meanwhile nothing more is read from this client either, so that
        answering it (acknowledgements, SUBACKs, PINGRESPs) cannot grow the
        buffer of a client that sends but does not read."""
        self.writable = False
        if self._congestion is None and self.state is not CLOSED:
            session = self.session
            self._congestion = Congestion(
                self.clock, self.settings.slow_subscriber_timeout, self._on_stuck,
                slow=session is not None and session.slow_until > self.clock.seconds())
            self._pause_reading("output")

    def resumeProducing(self) -> None:
        self.writable = True
        self._end_congestion()
        self._resume_reading("output")
        if self.session is not None and self.state is CONNECTED:
            self.session.resume()

    def stopProducing(self) -> None:
        self.writable = False
        self._end_congestion()

    def hold_input(self) -> bool:
        """A message for this client arrives while its output is congested:
        hold back the input it came from and return True (write it anyway),
        or return False when the client is stuck (keep or drop it)."""
        congestion = self._congestion
        return congestion is not None and congestion.hold(self.hub.flow, self)

    def _end_congestion(self) -> None:
        congestion, self._congestion = self._congestion, None
        if congestion is not None:
            congestion.end()

    def _on_stuck(self) -> None:
        self.stats.slow_subscribers += 1
        if self.session is not None:
            self.session.slow_until = self.clock.seconds() + SLOW_REMEMBERED
        log.info("Client {client_id} drained nothing for {timeout:g}s: marked slow, it holds"
                 " no publisher back and its QoS 0 messages are dropped until it reads",
                 client_id=self.client_id, timeout=self.settings.slow_subscriber_timeout)

    # -- IInput: subscribers this client's messages congest hold it back ---

    def hold(self, by) -> None:
        self.stats.inputs_held += 1
        self._pause_reading(by)

    def release(self, by) -> None:
        self._resume_reading(by)

    def _connect_timed_out(self) -> None:
        self._timer = None
        self.guard.stats.connect_timeouts += 1
        log.info("Closing {peer}: no CONNECT within {timeout:g}s",
                 peer=self._peer(), timeout=self.settings.connect_timeout)
        self._close(abort=True)

    def _stop_timer(self) -> None:
        """Cancel the CONNECT timeout or the keep-alive, whichever is armed."""
        if self._timer is not None:
            self.factory.timeouts.remove(self._timer, self)
            self._timer = None

    def dataReceived(self, data: bytes) -> None:
        """Handle a read; what it makes any MQTT connection send is written
        once per connection at the end (see `reactorapp.mqtt.writes`)."""
        batch = BATCH
        batch.depth += 1
        flow = self.hub.flow
        outer, flow.current = flow.current, self
        try:
            self._handle_read(data)
        finally:
            flow.current = outer
            batch.depth -= 1
            if not batch.depth and batch.pending:
                batch.flush()

    def _handle_read(self, data: bytes) -> None:
        if self.state is CLOSED:
            return  # [MQTT-3.1.4-5] [§3.14.4]: nothing after the end counts
        self.stats.bytes_received += len(data)
        try:
            packets = self._parser.feed(data)
            error = None
        except ProtocolError as e:
            # Packets complete before the violation still count, in order.
            packets, error = e.packets, e
        if packets:
            self._last_packet_at = self.clock.seconds()
            self.stats.messages_received += len(packets)
            for packet in packets:
                # The table of the state the connection is in now (a packet
                # may change it: CONNECT, DISCONNECT, a protocol error).
                self.state.handlers[type(packet)](self, packet)
        state = self.state
        if error is not None and state is not CLOSED:
            if state is AUTHENTICATING:
                self._hold(error)  # in its place, after the packets before it
            elif isinstance(error, UnsupportedProtocol) and state is AWAITING_CONNECT:
                # [MQTT-3.1.2-2]: a 3.1.1 CONNACK 0x01 (the level is not one
                # we speak, so neither is its CONNACK), then close.
                self._refuse(P.ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, error.reason)
            elif state is CHALLENGED:
                self._refuse(error.reason_code, error.reason)
            else:
                # MQTT 5: DISCONNECT 0x81 malformed, 0x82 protocol error,
                # 0x95 packet too large... [MQTT-4.13.1-1]
                self._protocol_error(error.reason, error.reason_code)

    def connectionLost(self, reason) -> None:
        self.state = CLOSED
        self._end_congestion()
        self._stop_timer()
        self._cancel_throttle()
        if self._address is not None:
            self.guard.release(self._address)
            self._address = None
        session = self._release_session()
        # [MQTT-3.1.2-8]: a will still held here was not cancelled by a
        # DISCONNECT, whatever ended the connection.
        self._publish_will(session)

    # -- outgoing ------------------------------------------------------

    def send_publish0(self, message: Message, retained: bool) -> bool:
        """Hot path: one QoS 0 PUBLISH, encoded once per message and flag
        (and level: an MQTT 5 client with nothing of its own in the packet
        shares the 5.0 encoding, under the keys 2 and 3).
        False: not sent, too large for the client (`IConnection`)."""
        cache = message.encoded
        if cache is None:
            cache = message.encoded = {}
        v5 = self.v5
        if v5 is None:
            data = cache.get(retained)
            if data is None:
                data = cache[retained] = encode_publish(message.topic, message.payload, 0, retained)
        elif v5.fast and message.expires is None:
            data = cache.get(2 + retained)
            if data is None:
                data = cache[2 + retained] = (
                    encode_plain5(message, 0, retained) if message.properties
                    else encode_publish0_plain5(message.topic, message.payload, retained))
        else:
            # Aliases, a size limit, options or expiry: this client's own PUBLISH.
            return self._send_publish5(message, 0, retained, 0, False)
        # `_send_counted`, written out: this is the QoS 0 fan-out hot path.
        self._send(data)
        self.traffic.sent[0] += 1
        stats = self.stats
        stats.messages_sent += 1
        stats.publish_sent += 1
        stats.bytes_sent += len(data)
        return True

    def send_publish(self, message: Message, qos: int, retained: bool, packet_id: int, dup: bool) -> bool:
        """A QoS 1/2 PUBLISH: the encoding is shared, only the id varies.
        False: not sent, too large for the client (`IConnection`)."""
        v5 = self.v5
        if v5 is not None:
            if dup or not v5.fast or message.expires is not None:
                return self._send_publish5(message, qos, retained, packet_id, dup)
            cache = message.encoded
            if cache is None:
                cache = message.encoded = {}
            key = (qos, retained, 5)
            parts = cache.get(key)
            if parts is None:
                parts = cache[key] = encode_plain5(message, qos, retained)
            data = parts[0] + packet_id.to_bytes(2, "big") + parts[1]
        elif dup:
            data = encode_publish(message.topic, message.payload, qos, retained, True, packet_id)
        else:
            cache = message.encoded
            if cache is None:
                cache = message.encoded = {}
            key = (qos, retained)
            parts = cache.get(key)
            if parts is None:
                parts = cache[key] = encode_publish_parts(message.topic, message.payload, qos, retained)
            data = parts[0] + packet_id.to_bytes(2, "big") + parts[1]
        self._send_counted(data, qos)
        return True

    def _send_counted(self, data: bytes, qos: int) -> None:
        """Write a PUBLISH and count it as sent."""
        self._send(data)
        self.traffic.sent[qos] += 1
        stats = self.stats
        stats.messages_sent += 1
        stats.publish_sent += 1
        stats.bytes_sent += len(data)

    def _too_large(self) -> None:
        """[MQTT-3.1.2-24] [MQTT-3.1.2-25]: a PUBLISH over the client's
        Maximum Packet Size is not sent, and counts as delivered to it."""
        self.stats.publish_too_large += 1

    def _encode(self, packet) -> bytes:
        """A packet in the connection's protocol version (MQTT 5: fitted to
        the client's limits, `V5.fit`)."""
        if self.v5 is None:
            return encode(packet)
        return self.v5.fit(packet) or b""

    def _send_publish5(self, message: Message, qos: int, retained: bool, packet_id: int,
                       dup: bool) -> bool:
        """A PUBLISH to an MQTT 5 client (`reactorapp.mqtt.publish5`): the
        Subscription Identifiers and Retain As Published of its matching
        subscriptions, if it has options, and a Topic Alias if it allows them.
        False: over the client's Maximum Packet Size, not sent."""
        session = self.session
        options = session.options if session is not None else None
        identifiers = ()
        if options is not None:
            share = session.share_of(packet_id)  # a shared subscription's copy
            routing = (options.routing(message.topic) if share is None
                       else options.shared_routing(share))
            identifiers = routing.identifiers
            if not retained and routing.as_published:
                retained = message.retain  # [MQTT-3.3.1-13]
        v5 = self.v5
        data, assigned = encode_for(message, qos, retained, packet_id, dup, self.clock,
                                    identifiers, v5.aliases)
        if len(data) > v5.maximum_packet_size:
            if assigned:  # the client never learns that alias
                v5.aliases.forget(assigned)
            self._too_large()
            return False
        self._send_counted(data, qos)
        return True

    def send_pubrel(self, packet_id: int) -> None:
        self._write(encode_pubrel(packet_id))

    def _write(self, data: bytes) -> None:
        self._send(data)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(data)

    def _send(self, data: bytes) -> None:
        """Every write goes through here, so held output keeps its order."""
        out = self._out
        if out is not None:
            out.append(data)
        elif BATCH.depth:
            self._out = [data]
            BATCH.pending.append(self)
        else:
            write_now(self.transport, data)

    def flush_writes(self) -> None:
        """Write the output held during a read, in one call."""
        out = self._out
        if out is not None:
            self._out = None
            write_now(self.transport, out[0] if len(out) == 1 else b"".join(out))

    # -- closing -------------------------------------------------------

    def _protocol_error(self, reason: str, reason_code: int = P.ReasonCode.PROTOCOL_ERROR) -> None:
        """[MQTT-4.8.0-1]: close this connection, nobody else notices. The
        will is published because no DISCONNECT was received. An MQTT 5
        client is told why first (``reason_code``: 0x81 malformed, 0x82
        protocol error, 0x94 topic alias invalid, ...) [MQTT-4.13.1-1]."""
        log.info("Closing {peer} ({client_id}): {reason}",
                 peer=self._peer(), client_id=self.client_id, reason=reason)
        self._disconnect(reason_code, reason)

    def _disconnect(self, reason_code: int, reason: str | None = None,
                    properties: dict | None = None) -> None:
        """The server ends the connection: MQTT 5 clients get a DISCONNECT
        with ``reason_code`` (and ``reason`` as its Reason String) before the
        close, once CONNACK went out [MQTT-3.14.0-1]; 3.1.1 clients, or a
        client before CONNACK, a plain close. The session is let go at once
        (nothing is sent after the DISCONNECT [MQTT-3.14.4-1]) and the will
        handed on, since the client did not disconnect."""
        v5 = self.v5
        session = self._release_session()
        if v5 is None or self.state is not CONNECTED:
            self._close(abort=True)
        else:
            properties = dict(properties or ())
            if reason:
                properties["reason_string"] = reason
            data = v5.fit(P.Disconnect(reason_code, properties))
            if data is not None:
                self._write(data)
            # Closed once the DISCONNECT is written [MQTT-3.14.4-2]; a client
            # that does not read it is cut off after CLOSE_GRACE.
            self._close(abort=False)
            self._timer = self.factory.timeouts.add(CLOSE_GRACE, self, self._abort)
        self._publish_will(session)

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _close(self, abort: bool) -> None:
        """Stop reading and drop the connection; the will, if any, goes out
        from connectionLost."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._stop_timer()
        self._cancel_throttle()
        self._end_congestion()
        self.flush_writes()  # what was sent before the close goes out first
        if self._producing:
            # A registered producer would keep a TLS connection from closing.
            self._producing = False
            self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def take_over(self) -> None:
        """Another connection claimed this client id [MQTT-3.1.4-2]: close
        (MQTT 5: DISCONNECT 0x8E [MQTT-3.1.4-3]), and hand the will on now,
        since this is not a DISCONNECT."""
        log.info("Client {client_id} taken over by a new connection", client_id=self.client_id)
        self._disconnect(P.ReasonCode.SESSION_TAKEN_OVER)

    def disconnect(self, reason_code: int = P.ReasonCode.ADMINISTRATIVE_ACTION) -> None:
        """Drop the connection as on a protocol error (asked for over the
        admin API, or at shutdown with 0x8B): MQTT 5 clients get a
        DISCONNECT with ``reason_code``; the will goes out from connectionLost."""
        self._disconnect(reason_code)

    def describe(self) -> dict:
        """`IConnection.describe`: for the admin API."""
        transport = self.transport
        info = {"front_end": getattr(self.factory, "front_end", "mqtt"),
                "keep_alive": self.keep_alive,
                "peer": address_text(transport.getPeer()) if transport is not None else None,
                "protocol_version": protocol_version(self)}
        if self.v5 is not None:
            session = self.session
            info["limits"] = {
                "client": self.v5.describe(),
                "server": {"receive_maximum": receive_maximum(self.settings),
                           "maximum_packet_size": self.settings.max_packet_size,
                           "topic_alias_maximum": self.settings.topic_alias_maximum},
                "session_expiry": (None if session is None or math.isinf(session.expiry)
                                   else session.expiry),
            }
        return info

    def _release_session(self):
        """Unbind from the session and return it; a session whose expiry is
        0 ends with its connection [MQTT-3.1.2-23] (then None)."""
        session, self.session = self.session, None
        if session is None:
            return None
        self.stats.client_disconnected(protocol_version(self))
        if session.connection is not self:
            return None
        session.detach()
        if not session.expiry:
            session.discard()
            return None
        return session

    def _publish_will(self, session=None) -> None:
        """[MQTT-3.1.2-8]: on any close not preceded by a normal DISCONNECT.
        An MQTT 5 will with a Will Delay Interval waits in the ``session``
        that outlives the connection: it goes out when the delay ends or
        the session does, whichever is first, and not at all if the client
        comes back before [MQTT-3.1.3-9]."""
        will, self.will = self.will, None
        if will is None:
            return
        # An MQTT 5 will carries its properties like a PUBLISH [§3.1.3.2].
        properties = application_properties(will.properties)
        message = Message(will.topic, will.payload, will.qos, will.retain, properties,
                          self.client_id, self.clock.seconds() if properties else None)
        delay = will.properties.get("will_delay_interval", 0) if self.v5 is not None else 0
        if delay and session is not None:
            session.delay_will(message, delay)
        else:
            publish_will(self.hub, message)

    def _peer(self) -> str:
        return address_text(self.transport.getPeer() if self.transport is not None else None)

    # -- reading paused ------------------------------------------------

    def _pause_reading(self, reason: str) -> None:
        """Stop reading from the client (back-pressure) until every reason
        to pause is gone; TCP then slows the client down for us."""
        if not self._read_pauses and self.state is not CLOSED:
            self.transport.pauseProducing()
        self._read_pauses.add(reason)

    def _resume_reading(self, reason: str) -> None:
        pauses = self._read_pauses
        if reason in pauses:
            pauses.discard(reason)
            if not pauses and self.state is not CLOSED:
                self._last_packet_at = self.clock.seconds()
                self.transport.resumeProducing()

    def _throttle(self, delay: float) -> None:
        """Over --publish-rate: read nothing more from this client for a while."""
        if self._throttle_call is None:
            self.guard.stats.publish_throttled += 1
            self._pause_reading("rate")
            self._throttle_call = self.clock.callLater(delay, self._end_throttle)

    def _end_throttle(self) -> None:
        self._throttle_call = None
        self._resume_reading("rate")

    def _cancel_throttle(self) -> None:
        if self._throttle_call is not None:
            if self._throttle_call.active():
                self._throttle_call.cancel()
            self._throttle_call = None

    # -- keep-alive ----------------------------------------------------

    def _start_keepalive(self) -> None:
        if self.keep_alive:
            self._timer = self.factory.timeouts.add(
                1.5 * self.keep_alive, self, self._check_keepalive)

    def _check_keepalive(self) -> None:
        """[MQTT-3.1.2-24]: silent for 1.5 x Keep Alive means gone. The
        timer is re-armed from the last packet instead of being reset on
        every packet, which keeps the read path cheap."""
        self._timer = None
        grace = 1.5 * self.keep_alive
        pauses = self._read_pauses
        if pauses and (len(pauses) > 1 or "output" not in pauses):
            # We are not reading: the client's PINGREQs wait in the socket.
            # (Not when only its own output is stuck: it is not reading us.)
            self._last_packet_at = self.clock.seconds()
        idle = self.clock.seconds() - self._last_packet_at
        if idle >= grace:
            log.info("Client {client_id} silent for {idle:.1f}s (keep-alive {keep_alive}s)",
                     client_id=self.client_id, idle=idle, keep_alive=self.keep_alive)
            self._disconnect(P.ReasonCode.KEEP_ALIVE_TIMEOUT)  # [MQTT-3.1.2-22]
        else:
            self._timer = self.factory.timeouts.add(
                grace - idle, self, self._check_keepalive)

    # -- PUBLISH from the client -----------------------------------------

    def _on_publish(self, publish: P.Publish) -> None:
        self.stats.publish_received += 1
        qos = publish.qos
        v5 = self.v5
        if qos and v5 is not None:
            v5.inbound += 1
            if v5.inbound > v5.limit:  # [MQTT-3.3.4-7]
                self._protocol_error("more unacknowledged QoS 1/2 PUBLISHes than Receive Maximum",
                                     P.ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)
                return
        self.traffic.received[qos] += 1
        bucket = self._bucket
        if bucket is not None:
            delay = bucket.take()
            if delay:
                self._throttle(delay)
        if v5 is not None and (qos or publish.properties):
            self._on_publish5(publish)
            return
        # 3.1.1, or an MQTT 5 QoS 0 PUBLISH without properties: nothing of
        # 5.0 applies to it (no alias, no payload format, no answer).
        if qos == 2 and publish.packet_id in self.session.awaiting_pubrel:
            # [MQTT-4.3.3-2]: a re-sent QoS 2 PUBLISH is acknowledged again,
            # never forwarded twice.
            self._acknowledge(None, encode_pubrec(publish.packet_id))
            return
        if publish.topic.startswith(SYS_PREFIX):  # `is_broker_topic`, inlined: hot path
            # Clients may not write the broker's own status [§4.7.2]; the
            # publish is acknowledged and dropped [MQTT-3.3.5-2].
            self.stats.publish_dropped += 1
            wait = None
        elif self.authorizer is not None and not self.authorizer.can_publish(
                self.identity, publish.topic):
            # Denied by the ACL: acknowledged (3.1.1 has no way to say no)
            # and dropped, as Mosquitto does.
            self.guard.stats.publish_denied += 1
            wait = None
        else:
            message = Message(publish.topic, publish.payload, qos, publish.retain,
                              sender=self.client_id)
            wait = self.hub.route(message)
        if qos == 1:
            self._acknowledge(wait, encode_puback(publish.packet_id))
        elif qos == 2:
            self.session.awaiting_pubrel.add(publish.packet_id)
            self._acknowledge(wait, encode_pubrec(publish.packet_id))
        elif wait is not None:  # QoS 0 is never waited for; failures are logged
            wait.add(self._on_qos0_placed)

    def _on_publish5(self, publish: P.Publish) -> None:
        """The rest of `_on_publish` for an MQTT 5 client: its Topic Alias,
        the Payload Format check, the properties handed on with the message,
        and a reason code in PUBACK/PUBREC (`reactorapp.mqtt.publish5`)."""
        qos = publish.qos
        topic = publish.topic
        received = publish.properties
        properties = None
        if received:
            if "subscription_identifier" in received:
                self._protocol_error("a PUBLISH from a client has a Subscription Identifier")
                return  # [MQTT-3.3.4-6]
            try:
                topic = self.v5.aliases.resolve(topic, received.get("topic_alias"),
                                                self.settings.topic_alias_maximum)
            except AliasError as error:
                self._protocol_error(error.reason, error.reason_code)
                return
        if qos == 2 and publish.packet_id in self.session.awaiting_pubrel:
            # [MQTT-4.3.3-2], after its alias is taken: a re-sent PUBLISH on
            # a new connection may set the alias later ones use.
            self._acknowledge(None, encode_pubrec(publish.packet_id))
            return
        if received:
            if payload_format_invalid(received, publish.payload):
                # [MQTT-3.3.2-4] [§3.3.2.3.2]: refused; at QoS 0 there is no
                # acknowledgement to say so, so the connection ends [§4.13].
                self.stats.publish_dropped += 1
                if qos:
                    self._answer_publish(publish, None, P.ReasonCode.PAYLOAD_FORMAT_INVALID)
                else:
                    self._protocol_error("payload is not the UTF-8 its PUBLISH says it is",
                                         P.ReasonCode.PAYLOAD_FORMAT_INVALID)
                return
            properties = application_properties(received)
        if topic.startswith(SYS_PREFIX):
            # Clients may not write the broker's own status [§4.7.2].
            self.stats.publish_dropped += 1
            self._answer_publish(publish, None, P.ReasonCode.NOT_AUTHORIZED)
            return
        if self.authorizer is not None and not self.authorizer.can_publish(self.identity, topic):
            self.guard.stats.publish_denied += 1
            self._answer_publish(publish, None, P.ReasonCode.NOT_AUTHORIZED)
            return
        # A message that expires is stamped with the hub's clock (Message.expires).
        timestamp = (self.clock.seconds()
                     if properties and "message_expiry_interval" in properties else None)
        message = Message(topic, publish.payload, qos, publish.retain, properties,
                          self.client_id, timestamp)
        hub = self.hub
        wait = hub.route(message)
        if not qos:
            if wait is not None:
                wait.add(self._on_qos0_placed)
        elif not hub.has_subscribers(topic):
            # [§3.4.2.1]: 0x10 tells the publisher nobody subscribed.
            self._answer_publish(publish, wait, P.ReasonCode.NO_MATCHING_SUBSCRIBERS)
        elif qos == 1:
            self._acknowledge(wait, encode_puback(publish.packet_id))
        else:
            self.session.awaiting_pubrel.add(publish.packet_id)
            self._acknowledge(wait, encode_pubrec(publish.packet_id))

    def _answer_publish(self, publish: P.Publish, wait, code: int) -> None:
        """PUBACK or PUBREC with ``code`` for an MQTT 5 client. A PUBREC with
        a failure code ends the QoS 2 exchange: no PUBREL is awaited.
        QoS 0 has no answer: the message is dropped and that is all."""
        packet_id = publish.packet_id
        if not publish.qos:
            return
        if publish.qos == 1:
            data = encode_puback(packet_id) if not code else encode(P.PubAck(packet_id, code), 5)
        else:
            if code < 0x80:
                self.session.awaiting_pubrel.add(packet_id)
            data = encode_pubrec(packet_id) if not code else encode(P.PubRec(packet_id, code), 5)
        self._acknowledge(wait, data)

    def _acknowledge(self, wait, data: bytes) -> None:
        """Send PUBACK/PUBREC/PUBCOMP once the message is placed, in the order
        the packets arrived [MQTT-4.6.0-2] [MQTT-4.6.0-3].

        ``wait`` is None (placed) or the hub's `Commit` (placed when it
        fires: one callback per store batch, not per message).
        """
        acks = self._acks
        if wait is None and not acks:
            self._write(data)
            v5 = self.v5
            if v5 is not None and v5.inbound and (data[0] != 0x50 or v5.fails(data)):
                v5.inbound -= 1  # the client's quota back [§4.9]
            return
        if not acks:
            acks = self._acks = AckLine()
        if acks.add(data, wait):
            wait.add(self._on_commit)  # runs now if it has failed already
        if len(acks) >= self.settings.max_pending_acks:
            # Its messages cannot be placed as fast as it sends them (a slow
            # store or full subscribers): stop reading from this publisher.
            self._pause_reading("acks")

    def _on_commit(self, failure) -> None:
        if failure is not None:
            self._ebNotPlaced(failure)
        else:
            self._send_acks()

    def _send_acks(self) -> None:
        """Write, in one go, the acknowledgements at the head of the line
        that may go now."""
        acks = self._acks
        ready = acks.ready()
        if ready and self.state is CONNECTED:
            v5 = self.v5
            if v5 is not None:
                for answer in ready:
                    if v5.inbound and (answer[0] != 0x50 or v5.fails(answer)):
                        v5.inbound -= 1
            data = ready[0] if len(ready) == 1 else b"".join(ready)
            self._send(data)
            stats = self.stats
            stats.messages_sent += len(ready)
            stats.bytes_sent += len(data)
        if len(acks) < self.settings.max_pending_acks:
            self._resume_reading("acks")

    def _ebNotPlaced(self, failure) -> None:
        """The message could not be made durable: no acknowledgement may go
        out for it, so drop the connection; the client will re-send."""
        log.failure("Could not place a message from {client_id}", failure,
                    client_id=self.client_id)
        self._acks.clear()
        self._close(abort=True)

    def _on_qos0_placed(self, failure) -> None:
        if failure is not None:
            log.failure("Could not place a QoS 0 message from {client_id}", failure,
                        client_id=self.client_id)

    def _on_pubrel(self, pubrel: P.PubRel) -> None:
        # [MQTT-4.3.3-2]: always answer, even for an id no longer held.
        released = self.session.release(pubrel.packet_id)
        self._acknowledge(released, encode_pubcomp(pubrel.packet_id))

    # -- acknowledgements of our PUBLISHes --------------------------------

    def _on_puback(self, puback: P.PubAck) -> None:
        self.session.puback(puback.packet_id)

    def _on_pubrec(self, pubrec: P.PubRec) -> None:
        if self.session.pubrec(pubrec.packet_id):
            self.send_pubrel(pubrec.packet_id)

    def _on_pubcomp(self, pubcomp: P.PubComp) -> None:
        self.session.pubcomp(pubcomp.packet_id)

    # -- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------

    def _on_subscribe(self, subscribe: P.Subscribe) -> None:
        """[MQTT-3.8.4-1..5]: one SUBACK with a code per filter, in order;
        0x80 for an invalid filter [MQTT-4.7.1-2]. Retained messages follow
        the SUBACK, flagged RETAIN=1 [MQTT-3.3.1-6] [MQTT-3.3.1-8]."""
        session = self.session
        codes = []
        retained = []
        authorizer = self.authorizer
        limit = self.settings.max_subscriptions
        # MQTT 5 says why a filter was refused [§3.9.3]; 3.1.1 has 0x80 only.
        v5 = self.v5 is not None
        identifier = subscribe.properties.get("subscription_identifier", 0) if v5 else 0
        for request in subscribe.subscriptions:
            topic_filter = request.topic_filter
            if not is_valid_filter(topic_filter):
                codes.append(P.ReasonCode.TOPIC_FILTER_INVALID if v5 else P.SUBACK_FAILURE)
                continue
            if authorizer is not None and not authorizer.can_subscribe(
                    self.identity, topic_filter):
                self.guard.stats.subscribe_denied += 1
                codes.append(P.ReasonCode.NOT_AUTHORIZED if v5 else P.SUBACK_FAILURE)
                continue
            existed = topic_filter in session.subscriptions
            if limit and len(session.subscriptions) >= limit and not existed:
                self.guard.stats.subscriptions_over_limit += 1
                codes.append(P.ReasonCode.QUOTA_EXCEEDED if v5 else P.SUBACK_FAILURE)
                continue
            granted = min(request.qos, MAXIMUM_QOS)
            codes.append(granted)
            if not v5:
                found = session.subscribe(topic_filter, granted)
            else:
                handling = request.retain_handling
                found = session.subscribe(topic_filter, granted, Options(
                    request.no_local, request.retain_as_published, handling, identifier))
                if handling == 2 or (handling == 1 and existed):
                    continue  # [MQTT-3.3.1-10] [MQTT-3.3.1-11]
            for message in found:
                retained.append((message, granted))
        self._write(encode(P.SubAck(subscribe.packet_id, codes), 5 if v5 else 4))
        for message, granted in retained:
            # [MQTT-3.8.4-6]: at the lower of stored and granted QoS.
            session.deliver(message, min(message.qos, granted), True)

    def _on_unsubscribe(self, unsubscribe: P.Unsubscribe) -> None:
        """[MQTT-3.10.4-1..6]: exact filters removed, UNSUBACK always; for
        MQTT 5 with a reason code per filter: 0x11 when there was no such
        subscription [MQTT-3.11.3-1]."""
        codes = []
        for topic_filter in unsubscribe.topic_filters:
            if self.session.unsubscribe(topic_filter):
                codes.append(P.ReasonCode.SUCCESS)
            elif is_valid_filter(topic_filter):
                codes.append(P.ReasonCode.NO_SUBSCRIPTION_EXISTED)
            else:
                codes.append(P.ReasonCode.TOPIC_FILTER_INVALID)
        if self.v5 is None:
            self._write(encode(P.UnsubAck(unsubscribe.packet_id)))
        else:
            self._write(encode(P.UnsubAck(unsubscribe.packet_id, codes), 5))

    # -- the rest ------------------------------------------------------------

    def _on_second_connect(self, packet) -> None:
        self._protocol_error("second CONNECT on one connection")  # [MQTT-3.1.0-2]

    def _on_pingreq(self, _packet) -> None:
        self._write(PINGRESP_BYTES)  # [MQTT-3.12.4-1]

    def _on_disconnect(self, packet) -> None:
        """[MQTT-3.14.4-3]: the will is discarded on a normal disconnection
        (MQTT 5: reason 0x00; 0x04 and errors keep it); nothing after counts.
        MQTT 5 may change the Session Expiry Interval, though not from 0."""
        if self.v5 is not None:
            interval = packet.properties.get("session_expiry_interval")
            if interval is not None and self.session is not None:
                if interval and not self.session.expiry:
                    self._protocol_error("DISCONNECT sets a Session Expiry Interval after 0")
                    return
                self.session.set_expiry(expiry_for(interval, self.settings), chosen=True)
            if packet.reason_code != P.ReasonCode.SUCCESS:
                self._close(abort=False)  # the will goes out from connectionLost
                return
        self.will = None
        self._close(abort=False)

    #: Packet type -> handler once CONNECTED; one table for all connections
    #: (bound methods per connection would cost a kilobyte each).
    _HANDLERS = {
        P.Connect: _on_second_connect,
        P.Publish: _on_publish,
        P.PubAck: _on_puback,
        P.PubRec: _on_pubrec,
        P.PubRel: _on_pubrel,
        P.PubComp: _on_pubcomp,
        P.Subscribe: _on_subscribe,
        P.Unsubscribe: _on_unsubscribe,
        P.PingReq: _on_pingreq,
        P.Disconnect: _on_disconnect,
        P.Auth: ConnectHandling._on_auth,
    }


def _ignore(protocol, packet) -> None:
    """Closed: nothing after the end counts [MQTT-3.1.4-5] [§3.14.4]."""


# What a packet does, by state: one table each, shared by all connections.
_PACKET_TYPES = tuple(MQTTProtocol._HANDLERS)
CONNECTED.handlers.update(MQTTProtocol._HANDLERS)
AWAITING_CONNECT.handlers.update(dict.fromkeys(_PACKET_TYPES, MQTTProtocol._on_first_packet))
AUTHENTICATING.handlers.update(dict.fromkeys(_PACKET_TYPES, MQTTProtocol._hold))
CLOSED.handlers.update(dict.fromkeys(_PACKET_TYPES, _ignore))
CHALLENGED.handlers.update(dict.fromkeys(_PACKET_TYPES, MQTTProtocol._on_auth_answer))


class MQTTFactory(Factory):
    """Builds MQTT connections bound to one hub."""

    protocol = MQTTProtocol
    #: The largest CONNECT accepted, in bytes (fixed header included).
    max_connect_size = MAX_CONNECT_SIZE

    def __init__(self, hub, clock, settings: MQTTSettings | None = None,
                 front_end: str = "mqtt", guard: Guard | None = None) -> None:
        self.hub = hub
        self.clock = clock
        self.settings = settings if settings is not None else MQTTSettings()
        #: Who may connect and what they may do: an open one of its own by
        #: default; the service sets the one shared with the HTTP front end.
        self.guard = guard if guard is not None else Guard()
        #: Names this factory's connections in the hub's traffic counters
        #: ("mqtt" for TCP, TLS and Unix sockets, "websocket" over HTTP).
        self.front_end = front_end
        self.traffic = hub.stats.traffic_for(front_end)
        #: CONNECT timeouts and keep-alives of all its connections (one each
        #: at a time), on one shared timer rather than a DelayedCall each.
        self.timeouts = Timeouts(clock)

    def buildProtocol(self, addr):
        return self.protocol(self)
