"""Per-client MQTT state that outlives a connection when Clean Session is 0.

A session is the hub subscriber for one client id: it decides whether a
message is written now, waits for room in the in-flight window, or waits for
the client to come back. The protocol only turns its calls into bytes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.hub.commit import placed
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.shared import AWAY, BUSY, READY, REFUSED
from reactorapp.mqtt.backlog import Backlog
from reactorapp.mqtt.suboptions import DEFAULT, OptionTable, Options

log = Logger()

#: States of an outgoing QoS 1/2 message.
AWAITING_PUBACK = 1  # QoS 1 PUBLISH sent, waiting for PUBACK
AWAITING_PUBREC = 2  # QoS 2 PUBLISH sent, waiting for PUBREC
AWAITING_PUBCOMP = 3  # PUBREL sent, waiting for PUBCOMP


@dataclass
class MQTTSettings:
    """Limits of the MQTT front end (all configurable from the command line)."""

    max_packet_size: int = 268_435_460
    max_inflight: int = 20
    max_queued_messages: int = 1000
    #: Longest keep-alive an MQTT 5 client may use, in seconds (0: no limit).
    max_keepalive: int = 0
    #: Seconds a persistent session outlives its connection (0: for ever), and
    #: the longest Session Expiry Interval an MQTT 5 client gets.
    session_expiry: float = 0.0
    #: Topic aliases an MQTT 5 client may send (CONNACK Topic Alias Maximum).
    topic_alias_maximum: int = 10
    #: Response Information for an MQTT 5 client that asks ("%c": its client id).
    response_information: str = "response/%c/"
    #: Seconds from TCP connect to CONNECT before the connection is closed; 0: no limit.
    connect_timeout: float = 10.0
    #: Subscriptions one client may hold; 0: no limit.
    max_subscriptions: int = 1000
    #: PUBLISH packets per second one client may send (0: no limit), and the burst.
    publish_rate: float = 0.0
    publish_burst: int = 100
    #: Approximate bytes one session keeps in memory (0: no limit); see backlog.py.
    max_queued_bytes: int = 4 * 1024 * 1024
    #: Bytes of QoS 1/2 messages one session may spill to disk (0: never spill).
    max_spill_bytes: int = 64 * 1024 * 1024
    #: Bytes all sessions together may spill to disk (0: no limit but theirs).
    max_spill_total_bytes: int = 1024 * 1024 * 1024
    #: Where spill files go; None: nowhere (full queues hold publishers back at once).
    spill_directory: str | None = None
    #: PUBLISHes from one client waiting for their PUBACK/PUBREC before
    #: the broker stops reading from it.
    max_pending_acks: int = 100
    #: Bytes the transport may hold for one client before it pauses us
    #: (and, for Twisted's TCP transport, the most it reads at a time).
    send_buffer: int = 64 * 1024
    #: Seconds a paused connection may drain nothing before it is slow
    #: (see reactorapp/hub/flow.py); 0: never.
    slow_subscriber_timeout: float = 5.0


class InFlight:
    """An outgoing QoS 1/2 message holding a packet id until acknowledged."""

    __slots__ = ("message", "qos", "retained", "state", "seq", "sent", "ready")

    def __init__(self, message, qos: int, retained: bool, state: int, seq: int = 0) -> None:
        self.message = message
        self.qos = qos
        self.retained = retained
        self.state = state
        #: Its number in the session's store (0 when not stored).
        self.seq = seq
        #: Written to a connection at least once.
        self.sent = False
        #: False while its packet id is being made durable.
        self.ready = True


class _StoredIds(set):
    """Incoming QoS 2 packet ids of a persistent session, written through to
    its store so that a re-sent PUBLISH is recognised after a restart."""

    __slots__ = ("_store", "_client_id")

    def __init__(self, store, client_id: str, ids=()) -> None:
        super().__init__(ids)
        self._store = store
        self._client_id = client_id

    def add(self, packet_id: int) -> None:
        if packet_id not in self:
            set.add(self, packet_id)
            self._store.add_awaiting_pubrel(self._client_id, packet_id)

    def discard(self, packet_id: int) -> None:
        if packet_id in self:
            set.discard(self, packet_id)
            self._store.remove_awaiting_pubrel(self._client_id, packet_id)


@implementer(ISubscriber)
class Session:
    """Subscriptions, in-flight window and queue of one MQTT client id."""

    def __init__(self, client_id: str, persistent: bool, hub, settings: MQTTSettings,
                 *, stored: bool = False) -> None:
        """``stored``: the session is being restored from the hub's store."""
        self.client_id = client_id
        self.persistent = persistent
        self.hub = hub
        self.settings = settings
        #: Seconds it is kept once its client has gone (0: it ends with the
        #: connection; inf: never ends): Clean Session 0 and --session-expiry
        #: for 3.1.1, the Session Expiry Interval for MQTT 5 [MQTT-3.1.2-23].
        self.expiry = (settings.session_expiry or math.inf) if persistent else 0.0
        #: QoS 1/2 messages sent and not yet acknowledged, at most: --max-inflight,
        #: or less for an MQTT 5 client's Receive Maximum [MQTT-3.3.4-9].
        self.window = settings.max_inflight
        #: While the client is away: the call that ends the session at its expiry.
        self._expiry_call = None
        #: A will waiting for its Will Delay Interval: (message, DelayedCall).
        self._will = None
        #: Where a persistent session keeps its state (the hub's store), or None.
        self.store = hub.store if persistent else None
        self.subscriptions: dict[str, int] = {}
        #: MQTT 5 options of subscriptions that have some (No Local, Retain
        #: As Published, a Subscription Identifier), or None: most sessions
        #: pay nothing for them (`reactorapp.mqtt.suboptions`).
        self.options: OptionTable | None = None
        #: Outgoing QoS 1/2 messages by packet id, in the order they were sent.
        self.inflight: dict[int, InFlight] = {}
        #: QoS 1/2 messages waiting for room in the window or for the client,
        #: as (message, qos, retained, seq), bounded and spilling to disk.
        self.queue = Backlog(settings, hub.stats)
        #: Incoming QoS 2 packet ids answered with PUBREC, awaiting PUBREL.
        self.awaiting_pubrel: set[int] = (
            set() if self.store is None else _StoredIds(self.store, client_id))
        self.connection = None
        #: When the client went away (the hub's clock), None while connected;
        #: a restored session counts from start-up (--session-expiry).
        self.detached_at = hub.clock.seconds() if stored else None
        #: The client's ACL check on topics it receives, or None with no ACL.
        self.may_read = None
        #: Who the client authenticated as (a persistent session keeps its owner).
        self.identity = None
        #: Until when its connection counts as slow as soon as it is congested
        #: (it was slow a moment ago: reactorapp/hub/flow.py).
        self.slow_until = 0.0
        self._last_packet_id = 0
        self._seq = 0
        #: QoS 1/2 messages taken for a shared subscription and not yet
        #: acknowledged: their number (``seq``) -> "$share/GROUP/FILTER", so
        #: that another member gets them if this one goes away.
        self.shared: dict[int, str] = {}
        #: The shared subscription `deliver` is taking a message for now.
        self._share: str | None = None
        #: In-flight messages not yet written, in order: (packet_id, InFlight).
        self._unsent: deque | tuple = ()  # a deque once needed (each costs 600 bytes)
        #: Unacknowledged PUBLISHes of an earlier connection the client's
        #: Receive Maximum left no room for at `attach`, by packet id, in
        #: order; re-sent as acknowledgements make room.
        self._resend: deque | None = None
        #: The expiry the store has for it (None: --session-expiry applies).
        self._recorded_expiry: float | None = None
        if self.store is not None and not stored:
            self.store.add_session(client_id)

    def set_expiry(self, seconds: float, chosen: bool) -> None:
        """Keep the session ``seconds`` once its client has gone. ``chosen``:
        the client asked for it (MQTT 5's Session Expiry Interval), and a
        persistent session's store records it, so that it holds after a
        restart; otherwise --session-expiry applies then, as it is then."""
        self.expiry = seconds
        recorded = seconds if chosen else None
        if self.store is not None and recorded != self._recorded_expiry:
            self._recorded_expiry = recorded
            self.store.set_session_expiry(self.client_id, recorded)

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r} persistent={self.persistent}>"

    @property
    def connected(self) -> bool:
        return self.connection is not None

    # -- delivery (ISubscriber) -------------------------------------------

    def deliver(self, message, qos, retained):
        may_read = self.may_read
        if may_read is not None and not may_read(message.topic):
            return  # the ACL hides this topic from the client, retained or not
        options = self.options
        if (options is not None and message.sender == self.client_id and not retained
                and self._share is None and not options.routing(message.topic).own):
            return None  # No Local: not to the client that published it [MQTT-3.8.3-3]
        connection = self.connection
        if qos == 0:
            if connection is not None:
                if connection.writable or connection.hold_input():
                    # Congested but draining: written all the same, and the
                    # publisher is held back (reactorapp/hub/flow.py).
                    connection.send_publish0(message, retained)
                else:
                    self.queue.hold0(message, retained)  # stuck: bounded, oldest dropped
            # QoS 0 is not queued for an absent client (like Mosquitto's
            # default queue_qos0_messages false) [MQTT-3.1.2-5].
            return None
        queue = self.queue
        # A persistent session's write is waited for by live traffic only:
        # retained messages sent for a SUBSCRIBE ride along with a later batch.
        store = self.store if not retained else None
        if (connection is not None and (connection.writable or connection.hold_input())
                and not queue and len(self.inflight) < self.window):
            self._send_new(connection, message, qos, retained, self._keep(message, qos, retained))
            # A persistent session wrote it: acknowledged once durable.
            return None if store is None else store.pending_commit()
        if (connection is None or retained) and queue.full(message) and (
                not self._drop_expired() or queue.full(message)):
            # No room in memory nor on disk, and no publisher to hold back:
            # the client is offline, or these are retained messages sent
            # for a SUBSCRIBE (a client repeating it cannot grow the queue
            # past its bounds). Refused, counted.
            self.hub.stats.queue_refused += 1
            self.hub.stats.publish_dropped += 1
            return None
        queue.append((message, qos, retained, self._keep(message, qos, retained)))
        commit = None if store is None else store.pending_commit()
        if connection is not None and not retained and queue.full():
            # Back-pressure: the publisher's acknowledgement waits for room.
            return queue.wait() if commit is None else placed(commit, [queue.wait()])
        return commit

    def _keep(self, message, qos, retained) -> int:
        """Write a message a persistent session owes to the store (`deliver`
        returns the store's `Commit` for it); return its number there. A
        message for a shared subscription is numbered even when not stored,
        and remembered in `shared`."""
        store = self.store
        share = self._share
        if store is None and share is None:
            return 0
        self._seq = seq = self._seq + 1
        if share is not None:
            self.shared[seq] = share
        if store is not None:
            # With ``share`` the store keeps it as shared: after a restart
            # other members still get what this one leaves unacknowledged.
            store.enqueue(self.client_id, seq, message, qos, retained, share)
        return seq

    # -- shared subscriptions (reactorapp/hub/shared.py) --------------------

    @property
    def share_label(self) -> tuple[str, str]:
        """(kind, name) of this member, for the admin API."""
        return "mqtt", self.client_id

    def share_state(self, qos: int) -> int:
        """Whether this member of a shared subscription can take a message
        at ``qos`` now: `READY`, `BUSY` (congested, slow a moment ago, or
        with QoS 1/2 messages waiting) or `AWAY` (its client is offline)."""
        connection = self.connection
        if connection is None:
            return AWAY
        if not connection.writable or (
                self.slow_until and self.slow_until > self.hub.clock.seconds()):
            return BUSY
        if qos and (self.queue or len(self.inflight) >= self.window):
            return BUSY
        return READY

    def deliver_shared(self, message, qos, share_filter):
        """`deliver` for the shared subscription ``share_filter``: the message
        is remembered as shared until acknowledged. `REFUSED` when the ACL
        hides the topic, or an offline session has no room for it: another
        member gets it then."""
        may_read = self.may_read
        if may_read is not None and not may_read(message.topic):
            return REFUSED
        if qos and self.connection is None and self.queue.full(message):
            return REFUSED
        self._share = share_filter
        try:
            return self.deliver(message, qos, False)
        finally:
            self._share = None

    def share_of(self, packet_id: int) -> str | None:
        """The shared subscription (``$share/GROUP/FILTER``) an outgoing
        PUBLISH is a copy for, or None (a QoS 0 one: while it is taken), so
        that it carries that subscription's options (`OptionTable.shared_routing`)."""
        if not packet_id:
            return self._share
        flight = self.inflight.get(packet_id)
        return None if flight is None or not self.shared else self.shared.get(flight.seq)

    def release_shared(self, connected_only: bool) -> None:
        """Give the shared-subscription messages this session holds and its
        client has not acknowledged to other members of their groups (only
        to connected ones with ``connected_only``; what nobody takes stays).

        Queued messages and QoS 1 messages in flight go; a QoS 2 message
        already written stays with this session: its delivery is completed
        when the client comes back, or dropped with the session
        [MQTT-4.8.2-4] [MQTT-4.8.2-5]."""
        shared = self.shared
        if not shared:
            return
        hub = self.hub
        inflight = self.inflight
        for packet_id, flight in list(inflight.items()):
            share = shared.get(flight.seq)
            if share is None or (flight.qos == 2 and flight.sent) or flight.message is None:
                continue
            if hub.hand_over(share, flight.message, self, connected_only):
                del inflight[packet_id]
                self._given(flight.seq)
        queue = self.queue
        if not queue or len(shared) == sum(1 for f in inflight.values() if f.seq in shared):
            return  # none of them is queued
        kept = []
        now = hub.clock.seconds()
        while queue:
            entry = queue.popleft()
            share = shared.get(entry[3])
            if share is None:
                kept.append(entry)
            elif entry[0].expires is not None and entry[0].expired(now):
                self._expired(entry[3])  # never sent [MQTT-3.3.2-5]
            elif hub.hand_over(share, entry[0], self, connected_only):
                self._given(entry[3])
            else:
                kept.append(entry)
        for entry in kept:
            queue.append(entry)

    def _given(self, seq: int) -> None:
        """A shared message numbered ``seq`` went to another member."""
        del self.shared[seq]
        if self.store is not None:
            self.store.dequeue(self.client_id, seq)

    def _send_new(self, connection, message, qos, retained, seq) -> None:
        packet_id = self._next_packet_id()
        flight = self.inflight[packet_id] = InFlight(
            message, qos, retained, AWAITING_PUBACK if qos == 1 else AWAITING_PUBREC, seq)
        durable = None
        if qos == 2 and self.store is not None:
            # A QoS 2 PUBLISH leaves only once its packet id is durable: after
            # a crash it is re-sent with that id, which the client recognises
            # [MQTT-4.3.3-2]; a new id would deliver it twice.
            self.store.set_inflight(self.client_id, seq, packet_id, AWAITING_PUBREC)
            durable = self.store.sync()
        if durable is None and not self._unsent:
            flight.sent = True
            if not connection.send_publish(message, qos, retained, packet_id, False):
                self._completed(packet_id)
            return
        if type(self._unsent) is tuple:
            self._unsent = deque()
        self._unsent.append((packet_id, flight))  # behind earlier ones, in order
        if durable is not None:
            flight.ready = False
            durable.addCallbacks(self._cbStored, self._ebStored, callbackArgs=(flight,))

    def _cbStored(self, _result, flight) -> None:
        flight.ready = True
        self._send_unsent()

    def _ebStored(self, failure) -> None:
        log.failure("Could not store a packet id for {client_id}; the message is held back",
                    failure, client_id=self.client_id)

    def _send_unsent(self) -> None:
        """Write held-back in-flight messages, in order, as far as they are ready."""
        unsent = self._unsent
        connection = self.connection
        while unsent and connection is not None:
            packet_id, flight = unsent[0]
            if not flight.ready:
                return
            unsent.popleft()
            if self.inflight.get(packet_id) is flight:
                flight.sent = True
                if not connection.send_publish(flight.message, flight.qos, flight.retained,
                                               packet_id, False):
                    self._completed(packet_id)

    def _next_packet_id(self) -> int:
        """An id not in use by this session's outgoing messages [MQTT-2.3.1-4]."""
        packet_id = self._last_packet_id
        inflight = self.inflight
        while True:
            packet_id = packet_id + 1 if packet_id < 65535 else 1
            if packet_id not in inflight:
                self._last_packet_id = packet_id
                return packet_id

    def _fill_window(self) -> None:
        connection = self.connection
        queue = self.queue
        limit = self.window
        if self._resend:
            self._resend_held(connection, limit)
        while (connection is not None and connection.writable and queue
               and len(self.inflight) < limit):
            message, qos, retained, seq = queue.popleft()
            if message.expires is not None and message.expired(self.hub.clock.seconds()):
                self._expired(seq)
                continue
            self._send_new(connection, message, qos, retained, seq)

    def _expired(self, seq: int) -> None:
        """A queued message's Message Expiry Interval passed before its
        delivery started: it is never sent [MQTT-3.3.2-5], and forgotten."""
        self.hub.stats.messages_expired += 1
        if self.shared:
            self.shared.pop(seq, None)
        if self.store is not None and seq:
            self.store.dequeue(self.client_id, seq)

    def _drop_expired(self) -> bool:
        """Forget the expired messages in the queue (their room counts for
        the messages still to come); whether there were any."""
        gone = self.queue.drop_expired(self.hub.clock.seconds())
        for seq in gone:
            self._expired(seq)
        return bool(gone)

    def _resend_held(self, connection, limit: int) -> None:
        """Re-send, in order, the PUBLISHes `attach` held back, as far as
        the client's Receive Maximum allows now."""
        resend = self._resend
        inflight = self.inflight
        while connection is not None and resend and len(inflight) - len(resend) < limit:
            packet_id = resend.popleft()
            flight = inflight.get(packet_id)
            if flight is not None and not connection.send_publish(
                    flight.message, flight.qos, flight.retained, packet_id, True):
                self._completed(packet_id)

    def _completed(self, packet_id: int) -> None:
        """A message the connection would not send (larger than the client's
        Maximum Packet Size): done with, as if acknowledged [MQTT-3.1.2-25]."""
        flight = self.inflight.pop(packet_id, None)
        if flight is not None and self.shared:
            self.shared.pop(flight.seq, None)
        if flight is not None and self.store is not None:
            self.store.dequeue(self.client_id, flight.seq)
        if flight is not None and self.shared:
            self.shared.pop(flight.seq, None)

    # -- acknowledgements from the client ----------------------------------

    def puback(self, packet_id: int) -> None:
        flight = self.inflight.get(packet_id)
        if flight is not None and flight.state == AWAITING_PUBACK:
            del self.inflight[packet_id]
            if self.store is not None:
                self.store.dequeue(self.client_id, flight.seq)
            if self.shared:
                self.shared.pop(flight.seq, None)
            self._fill_window()

    def pubrec(self, packet_id: int) -> bool:
        """Move a QoS 2 message to its second half; True if PUBREL is due."""
        flight = self.inflight.get(packet_id)
        if flight is None:
            return False
        if flight.state == AWAITING_PUBREC:
            flight.state = AWAITING_PUBCOMP
            # The message itself is no longer needed [MQTT-4.3.3-1].
            flight.message = None
            if self.store is not None:
                self.store.set_inflight(self.client_id, flight.seq, packet_id, AWAITING_PUBCOMP)
        return flight.state == AWAITING_PUBCOMP

    def pubcomp(self, packet_id: int) -> None:
        flight = self.inflight.get(packet_id)
        if flight is not None and flight.state == AWAITING_PUBCOMP:
            del self.inflight[packet_id]
            if self.store is not None:
                self.store.dequeue(self.client_id, flight.seq)
            if self.shared:
                self.shared.pop(flight.seq, None)
            self._fill_window()

    def release(self, packet_id: int):
        """Forget an incoming QoS 2 id on PUBREL. For a persistent session,
        return the store's `Commit` that makes that durable: PUBCOMP lets the
        client reuse the id, and an id remembered after a crash would make
        the next message with it look like a re-send, and be dropped."""
        ids = self.awaiting_pubrel
        if packet_id not in ids:
            return None
        ids.discard(packet_id)
        return self.store.pending_commit() if self.store is not None else None

    # -- connection lifecycle --------------------------------------------

    def attach(self, connection) -> None:
        """Bind a live connection, re-send what was not acknowledged, in the
        original order [MQTT-4.4.0-1] [MQTT-4.6.0-1], then drain the queue."""
        self.connection = connection
        self.options_changed()
        self.detached_at = None
        self._cancel_expiry()
        self._cancel_will()  # the client is back before its will's delay [MQTT-3.1.3-9]
        self._resend = None
        resent = 0
        for packet_id, flight in list(self.inflight.items()) if self.inflight else ():
            if not flight.sent:
                continue  # held back, goes out below in its turn
            if flight.state == AWAITING_PUBCOMP:
                connection.send_pubrel(packet_id)
            elif resent >= self.window:
                # No more unacknowledged PUBLISHes than the client's Receive
                # Maximum, re-sends included [MQTT-3.3.4-9].
                if self._resend is None:
                    self._resend = deque()
                self._resend.append(packet_id)
            elif connection.send_publish(flight.message, flight.qos, flight.retained,
                                         packet_id, True):
                resent += 1
            else:
                self._completed(packet_id)
        self._send_unsent()
        self._fill_window()
        if self.subscriptions and any(f.startswith("$share/") for f in self.subscriptions):
            # Members of its groups that are offline give what they hold
            # to the connected ones, this one included.
            self.hub.member_back(self, self.subscriptions)

    def detach(self) -> None:
        self.connection = None
        self.detached_at = self.hub.clock.seconds()
        self.queue.drop_held0()
        self.queue.release()  # publishers do not wait for an absent client
        # Connected members of its shared subscriptions take over what it
        # has not acknowledged (MQTT 5 section 4.8.2).
        self.release_shared(connected_only=True)
        self._arm_expiry()

    # -- how a session ends ------------------------------------------------------

    def _arm_expiry(self) -> None:
        """The client is away: end the session once its expiry has passed
        (0 is the connection's to end; inf never)."""
        self._cancel_expiry()
        if 0 < self.expiry < math.inf:
            self._expiry_call = self.hub.clock.callLater(self.expiry, self.expire)

    def _cancel_expiry(self) -> None:
        call, self._expiry_call = self._expiry_call, None
        if call is not None and call.active():
            call.cancel()

    def expire(self) -> None:
        """The client stayed away for the session's expiry: it ends, from
        memory and from the store, and a will waiting for its delay goes out."""
        self._expiry_call = None
        if self.connection is not None or self.hub.get_session(self.client_id) is not self:
            return
        self.hub.stats.sessions_expired += 1
        log.info("Session {client_id} expired: its client has been away {expiry:g} s",
                 client_id=self.client_id, expiry=self.expiry)
        self.discard()

    def delay_will(self, message, delay: float) -> None:
        """Keep the will of the connection that just ended until ``delay``
        seconds have passed or the session ends, whichever is first; a
        client that comes back before cancels it [MQTT-3.1.3-9]."""
        self._cancel_will()
        self._arm_will(message, delay)
        if self.store is not None:  # a restart meanwhile does not lose it
            self.store.set_will(self.client_id, message, delay)

    def moved_away(self, ended: bool = False) -> None:
        """Another node holds the client id now (a cluster): the session's
        expiry and a will waiting for its delay are that node's to keep or
        send; or, ``ended`` (the client started a new session there), the
        session ended, and its waiting will goes out now."""
        self._cancel_expiry()
        if ended:
            self._send_will()
            return
        will, self._will = self._will, None
        if will is not None and will[1].active():
            will[1].cancel()

    def _arm_will(self, message, delay: float) -> None:
        self._will = (message, self.hub.clock.callLater(delay, self._send_will))

    def _send_will(self) -> None:
        will, self._will = self._will, None
        if will is not None:
            message, call = will
            if call.active():
                call.cancel()
            if self.store is not None:
                self.store.set_will(self.client_id, None, 0)
            # Its Message Expiry Interval counts from now, when it is
            # published, not from when the connection ended [§3.1.3.2].
            message.stamp(self.hub.clock.seconds())
            publish_will(self.hub, message)

    def _cancel_will(self) -> None:
        will, self._will = self._will, None
        if will is not None:
            if will[1].active():
                will[1].cancel()
            if self.store is not None:
                self.store.set_will(self.client_id, None, 0)

    def resume(self) -> None:
        """The connection can take more (its transport drained): send the
        held QoS 0 messages, then refill the window, until it is full again."""
        connection = self.connection
        queue = self.queue
        clock = self.hub.clock
        while connection is not None and connection.writable and queue.held0:
            message, retained = queue.popleft0()
            if message.expires is not None and message.expired(clock.seconds()):
                self.hub.stats.messages_expired += 1
                continue
            connection.send_publish0(message, retained)
        self._fill_window()

    def subscribe(self, topic_filter: str, qos: int, options: Options = DEFAULT):
        """Add or replace a subscription [MQTT-3.8.4-3], with its MQTT 5
        ``options``; return the retained messages to send for it."""
        retained = self.hub.subscribe(self, topic_filter, qos)
        self.subscriptions[topic_filter] = qos
        self._set_options(topic_filter, options)
        if self.store is not None:
            if options is DEFAULT or options == DEFAULT:
                self.store.add_subscription(self.client_id, topic_filter, qos)
            else:
                self.store.add_subscription(self.client_id, topic_filter, qos,
                                            options.bits, options.identifier)
        return retained

    def _set_options(self, topic_filter: str, options: Options) -> None:
        table = self.options
        if options.per_delivery:
            if table is None:
                table = self.options = OptionTable(self.subscriptions)
                self.options_changed()
            table.set(topic_filter, options)
        elif table is not None:
            table.set(topic_filter, options)
            if not table:
                self.options = None
                self.options_changed()

    def options_changed(self) -> None:
        """Tell an MQTT 5 connection whether its deliveries may share the
        message's one encoding (no subscription options in play)."""
        v5 = getattr(self.connection, "v5", None)
        if v5 is not None:
            v5.fast = v5.plain and self.options is None

    def unsubscribe(self, topic_filter: str) -> bool:
        """Remove a subscription matched byte for byte [MQTT-3.10.4-1]."""
        if self.subscriptions.pop(topic_filter, None) is None:
            return False
        self._set_options(topic_filter, DEFAULT)
        self.hub.unsubscribe(self, topic_filter)
        if self.store is not None:
            self.store.remove_subscription(self.client_id, topic_filter)
        return True

    def discard(self) -> None:
        """End this session: drop its subscriptions and state [MQTT-3.1.2-6].
        Shared-subscription messages it had not delivered go to another
        member of their group first. A will still waiting for its delay goes
        out now [MQTT-3.1.2-8]."""
        self._cancel_expiry()
        self.hub.unsubscribe_all(self, self.subscriptions)
        self.release_shared(connected_only=False)
        self.shared.clear()
        self.subscriptions.clear()
        self.options = None
        self.options_changed()
        self.inflight.clear()
        self.queue.clear()
        self._unsent = ()
        self._resend = None
        self.awaiting_pubrel.clear()
        self.hub.remove_session(self.client_id, self)
        if self.store is not None:
            self.store.remove_session(self.client_id)
        self._send_will()

    def restore(self, stored) -> None:
        """Take back, without writing it again, what the store kept: a
        `reactorapp.store.interfaces.StoredSession`."""
        for topic_filter, qos in stored.subscriptions.items():
            self.hub.subscribe(self, topic_filter, qos)
            self.subscriptions[topic_filter] = qos
        for topic_filter, (bits, identifier) in stored.options.items():
            if topic_filter in self.subscriptions:
                self._set_options(topic_filter, Options.from_bits(bits, identifier))
        self.awaiting_pubrel = _StoredIds(self.store, self.client_id, stored.awaiting_pubrel)
        messages = stored.messages
        # Only QoS 2 packet ids are stored. QoS 1 messages before the last of
        # them were in flight too: they go back in flight with fresh ids, so
        # that everything is re-sent in its original order [MQTT-4.6.0-1].
        last = max((i for i, m in enumerate(messages) if m.packet_id is not None), default=-1)
        taken = {m.packet_id for m in messages if m.packet_id is not None}
        for i, m in enumerate(messages):
            self._seq = max(self._seq, m.seq)
            if m.share is not None and m.share in self.subscriptions:
                self.shared[m.seq] = m.share
            if i > last or (m.packet_id is None and m.qos == 2):
                self.queue.append((m.message, m.qos, m.retained, m.seq))
                continue
            packet_id = m.packet_id
            while packet_id is None or packet_id in self.inflight:
                packet_id = self._next_packet_id()
                if packet_id in taken:
                    packet_id = None
            state = m.state or AWAITING_PUBACK
            flight = InFlight(None if state == AWAITING_PUBCOMP else m.message,
                              m.qos, m.retained, state, m.seq)
            flight.sent = True
            self.inflight[packet_id] = flight
        if taken:
            self._last_packet_id = max(self._last_packet_id, *taken)


def restore_sessions(hub, stored_sessions, settings: MQTTSettings) -> None:
    """Rebuild the persistent sessions a store kept, at start-up. Each is
    away from start-up on, for the expiry its client chose (no more than
    --session-expiry) or, when it chose none, --session-expiry."""
    for stored in stored_sessions:
        session = Session(stored.client_id, True, hub, settings, stored=True)
        if stored.expiry is not None:
            session.expiry = min(stored.expiry, settings.session_expiry or math.inf)
            session._recorded_expiry = stored.expiry
        session.restore(stored)
        if stored.will is not None:  # its delay counts from start-up, too
            session._arm_will(*stored.will)
        hub.add_session(stored.client_id, session)
        session._arm_expiry()


def publish_will(hub, message) -> None:
    """Publish a will; a failure to store it is logged."""
    durable = hub.publish(message)
    if durable is not None:
        durable.addErrback(lambda f: log.failure(
            "Could not store the will of {client_id}", f, client_id=message.sender))
