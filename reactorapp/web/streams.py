"""Named event-stream sessions: ``GET /api/v1/stream?session=NAME``.

A `StreamSession` is to an HTTP event stream what an MQTT persistent session
is to a connection: the hub subscriber that outlives the stream. It keeps
its filters and, while no stream is attached or its reader is slow, queues
what they match in the same bounded `Backlog` MQTT sessions use (memory,
then a spill file, then holding publishers back; QoS 0 only while a stream
is attached). It forgets itself ``expiry`` seconds after its last stream
ended.

Events at QoS 1 and 2 carry an id: a number of the session's own, increasing.
A stream that attaches with ``Last-Event-ID`` (EventSource sends it when it
reconnects) acknowledges every event up to that id; the session keeps the
others, re-sends those already sent, in order, then goes on with what is
queued and live. With the SQLite store each such event is written in the
same commit that the publisher's answer waits for, and written to a stream
only once durable: an id a client holds is never given to another event
after a crash. QoS 0 events have no id and are not kept.

Acknowledgements come only with a reconnect, so a session holds at most
``max_queued_messages`` events (and ``max_queued_bytes``) sent and not
acknowledged; past that it ends the stream, and the client's reconnect
acknowledges them (EventSource does it by itself, after a short delay).
"""

from __future__ import annotations

from collections import deque

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.hub.commit import placed
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.shared import AWAY, BUSY, READY, REFUSED
from reactorapp.web.errors import compact_json
from reactorapp.web.messages import message_json

log = Logger()

#: Seconds a session is kept after its last stream ended, unless the stream
#: asks for another ``session_expiry``; and the most it may ask for.
DEFAULT_EXPIRY = 3600.0
MAX_EXPIRY = 7 * 24 * 3600.0
#: Named sessions the hub keeps at once; a stream that would make one more
#: is refused (503).
MAX_SESSIONS = 1000
#: Milliseconds an EventSource waits before it reconnects to a stream that
#: ended because it had too many events to acknowledge.
ACK_RETRY = 100
#: Bytes counted for an unacknowledged event on top of its topic and payload
#: (as the MQTT queue counts them).
OVERHEAD = 64


def event_data(message, qos: int, retained: bool, now: float | None = None) -> bytes | None:
    """``data: <json>`` of an event, encoded once per message for all streams;
    None if the message has expired at ``now`` [MQTT-3.3.2-5]. A message that
    expires shows the seconds it has left then [MQTT-3.3.2-6], so its events
    are encoded each time."""
    if now is not None and message.expires is not None:
        document = message_json(message, qos, retained, now)
        if document["message_expiry"] <= 0:
            return None
        return b"data: %s\n\n" % compact_json(document)
    cache = message.encoded
    if cache is None:
        cache = message.encoded = {}
    key = ("sse-data", qos, retained)
    data = cache.get(key)
    if data is None:
        body = compact_json(message_json(message, qos, retained))
        data = cache[key] = b"data: %s\n\n" % body
    return data


def _size(message) -> int:
    return len(message.payload) + len(message.topic) + OVERHEAD


@implementer(ISubscriber)
class StreamSession:
    """Filters, queue and unacknowledged events of one named stream session."""

    def __init__(self, name: str, owner: str | None, sessions, *, seq: int = 0) -> None:
        self.name = name
        #: The user name of whoever made it (None: anonymous); only they may attach.
        self.owner = owner
        self.sessions = sessions
        self.hub = sessions.hub
        self.tables = sessions.tables
        self.settings = sessions.settings
        self.stats = sessions.stats
        self.filters: dict[str, int] = {}
        self.qos = 0
        self.expiry = DEFAULT_EXPIRY
        #: QoS 1/2 events not yet written to a stream, as (message, qos,
        #: retained, seq), and QoS 0 ones held for a slow reader.
        self.queue = sessions.queue_factory()
        #: Events written to a stream and not yet acknowledged, in order.
        self.unacked: deque = deque()
        self.unacked_bytes = 0
        #: The stream attached now, or None.
        self.stream = None
        #: The reader's ACL check on topics, or None.
        self.may_read = None
        #: The last event id given out, the last acknowledged, the last durable.
        self.seq = self.acked = self.durable_seq = seq
        #: The highest event id that may have reached a client.
        self.sent_seq = seq
        self.dropped = 0
        self.detached_at: float | None = None
        #: An entry taken from the queue that waits to be durable or for room.
        self._next = None
        #: (Commit, [highest seq written in it]) being waited for.
        self._watch = None
        self._expiry_call = None
        #: Events up to this id were kept while no stream was attached.
        self._replay_upto = 0

    def __repr__(self) -> str:
        return f"<StreamSession {self.name!r}>"

    # -- delivery (ISubscriber) ---------------------------------------------

    @property
    def share_label(self) -> tuple[str, str]:
        """(kind, name) of this member, for the admin API."""
        return "stream", self.name

    def share_state(self, qos: int) -> int:
        """As a member of a shared subscription: `AWAY` with no stream
        attached, `BUSY` while its stream is paused or events wait."""
        stream = self.stream
        if stream is None:
            return AWAY
        if not stream.writable or self.queue.held0 or (qos and self.queue):
            return BUSY
        return READY

    def deliver_shared(self, message, qos, share_filter):
        """`deliver` for a ``$share/...`` filter: `REFUSED` (another member
        gets it) when the reader's ACL hides the topic."""
        may_read = self.may_read
        if may_read is not None and not may_read(message.topic):
            return REFUSED
        return self.deliver(message, qos, False)

    def deliver(self, message, qos, retained):
        may_read = self.may_read
        if may_read is not None and not may_read(message.topic):
            return None
        stream = self.stream
        queue = self.queue
        if qos == 0:
            if stream is None:
                self._dropped()
            elif stream.writable and not queue.held0:
                data = event_data(message, 0, retained, self._now())
                if data is None:
                    self._expired()
                else:
                    stream.send(data, 0)
            else:
                queue.hold0(message, retained)
            return None
        if (stream is None or retained) and queue.full(message):
            # No room in memory nor on disk, and no publisher to hold back
            # (no stream, or retained messages sent for new filters):
            # refused, counted.
            self._dropped()
            self.hub.stats.queue_refused += 1
            return None
        self.seq = seq = self.seq + 1
        self.tables.enqueue(self.name, seq, message, qos, retained)
        commit = self._watch_commit(seq)
        queue.append((message, qos, retained, seq))
        if stream is not None:
            self._pump()
            if not retained and queue.full():
                # Back-pressure: the publisher's answer waits for room.
                return queue.wait() if commit is None else placed(commit, [queue.wait()])
        return commit  # the publisher's answer waits until the event is durable

    def _now(self) -> float:
        return self.sessions.clock.seconds()

    def _expired(self) -> None:
        """A message expired before it was written: not sent, counted."""
        self.stats.sse_expired += 1
        self.hub.stats.messages_expired += 1

    def _dropped(self) -> None:
        self.dropped += 1
        self.hub.stats.publish_dropped += 1

    def _watch_commit(self, seq: int):
        """Learn when the event ``seq`` is durable: it is written to a stream
        only then, so that no id a client holds is lost in a crash. Return
        the `Commit` that makes it durable, or None."""
        commit = self.tables.pending_commit() if self.tables.durable else None
        if commit is None:
            self.durable_seq = seq
            return None
        watch = self._watch
        if watch is not None and watch[0] is commit:
            watch[1][0] = seq
            return commit
        highest = [seq]
        self._watch = (commit, highest)
        commit.add(lambda failure: self._committed(failure, highest))
        return commit

    def _committed(self, failure, highest) -> None:
        if self._watch is not None and self._watch[1] is highest:
            self._watch = None
        if failure is not None:
            log.error("Events of the stream session {name} could not be stored; they are"
                      " held back", name=self.name)
            return
        if highest[0] > self.durable_seq:
            self.durable_seq = highest[0]
        self._pump()

    def _pump(self) -> None:
        """Write what the session holds to its stream, in order, while the
        stream takes it, the events are durable and the window has room."""
        queue = self.queue
        while True:
            stream = self.stream
            if stream is None or not stream.writable:
                return
            if queue.held0:
                message, retained = queue.popleft0()
                data = event_data(message, 0, retained, self._now())
                if data is None:
                    self._expired()
                else:
                    stream.send(data, 0)
                continue
            entry = self._next
            if entry is None:
                if not queue:
                    return
                entry = self._next = queue.popleft()
            message, qos, retained, seq = entry
            if seq > self.durable_seq:
                return  # written once its commit fires
            may_read = self.may_read
            if may_read is not None and not may_read(message.topic):
                # Queued before this reader's ACL was known (restored after
                # a restart): skipped; a later acknowledgement forgets it.
                self._next = None
                continue
            data = event_data(message, qos, retained, self._now())
            if data is None:
                # Expired while it waited: skipped; a later acknowledgement
                # forgets it [MQTT-3.3.2-5].
                self._next = None
                self._expired()
                continue
            size = _size(message)
            if self.unacked and self._window_full(size):
                # The client acknowledges by reconnecting: let it.
                stream.end(ACK_RETRY)
                return
            self._next = None
            self.unacked.append(entry)
            self.unacked_bytes += size
            if seq <= self._replay_upto:
                self.stats.sse_replayed += 1
            self.sent_seq = seq
            stream.send(b"id: %d\n%s" % (seq, data), qos)

    def _window_full(self, size: int) -> bool:
        settings = self.settings
        if len(self.unacked) >= settings.max_queued_messages:
            return True
        limit = settings.max_queued_bytes
        return bool(limit) and self.unacked_bytes + size > limit

    # -- streams ---------------------------------------------------------------

    def configure(self, filters: list[str], qos: int, expiry: float) -> dict:
        """Take the filters, QoS and expiry of the stream that attaches;
        return the retained messages of filters that are new."""
        old = self.filters
        retained = {}
        for topic_filter in filters:
            if old.get(topic_filter) != qos:
                matches = self.hub.subscribe(self, topic_filter, qos)
                if topic_filter not in old:
                    for message in matches:
                        retained[message.topic] = message
        for topic_filter in old:
            if topic_filter not in filters:
                self.hub.unsubscribe(self, topic_filter)
        self.filters = dict.fromkeys(filters, qos)
        self.qos = qos
        self.expiry = expiry
        self.tables.save(self.name, self.owner, qos, filters, expiry, self.acked)
        return retained

    def attach(self, stream, last_event_id: int | None) -> None:
        """Bind a stream (a newer one takes over from an older one), take
        its acknowledgement, re-send what it has not acknowledged, in order,
        then what was queued."""
        old = self.stream
        if old is not None:
            self.stream = None
            log.info("A newer stream takes over the stream session {name}", name=self.name)
            old.end()
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        self.detached_at = None
        if last_event_id is not None:
            self.acknowledge(last_event_id)
        self.stream = stream
        self._replay_upto = self.seq
        now = self._now()
        for message, qos, retained, seq in self.unacked:
            data = event_data(message, qos, retained, now)
            if data is None:
                self._expired()  # stays unacknowledged until the next acknowledgement
                continue
            self.stats.sse_replayed += 1
            stream.send(b"id: %d\n%s" % (seq, data), qos)
        self._pump()

    def acknowledge(self, upto: int) -> None:
        """The client has every event up to ``upto``: forget them (also those
        restored after a restart, which went back to the queue). An id
        beyond the last one sent acknowledges only up to that one."""
        upto = min(upto, self.sent_seq)
        unacked = self.unacked
        while unacked and unacked[0][3] <= upto:
            self.unacked_bytes -= _size(unacked.popleft()[0])
        queue = self.queue
        while True:
            entry = self._next
            if entry is None:
                if not queue:
                    break
                entry = self._next = queue.popleft()
            if entry[3] > upto:
                break
            self._next = None
        if upto > self.acked:
            self.acked = upto
            self.tables.ack(self.name, upto)

    def resume(self, stream) -> None:
        """The stream's transport drained: write what waits."""
        if stream is self.stream:
            self._pump()

    def detach(self, stream) -> None:
        """A stream ended: queue for the next one, and expire if none comes."""
        if stream is not self.stream:
            return
        self.stream = None
        self.queue.drop_held0()  # QoS 0 is not kept without a stream
        self.queue.release()  # publishers do not wait for an absent reader
        now = self.sessions.clock.seconds()
        self.detached_at = now
        self.tables.detached(self.name, now)
        self._expire_in(self.expiry)

    def _expire_in(self, seconds: float) -> None:
        self._expiry_call = self.sessions.clock.callLater(
            max(0.0, seconds), self.sessions.expire, self)

    def discard(self) -> None:
        """Forget the session: subscriptions, queue, stored events."""
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.end()
        self.hub.unsubscribe_all(self, self.filters)
        self.filters = {}
        self.unacked.clear()
        self.unacked_bytes = 0
        self._next = None
        self.queue.clear()
        self.tables.remove(self.name)

    def restore(self, stored, now: float) -> None:
        """Take back what the tables kept (a `StoredStreamSession`)."""
        self.qos = stored.qos
        self.expiry = stored.expiry
        self.filters = dict.fromkeys(stored.filters, stored.qos)
        for topic_filter in stored.filters:
            self.hub.subscribe(self, topic_filter, stored.qos)
        last = stored.acked
        for seq, message, qos, retained in stored.events:
            self.queue.append((message, qos, retained, seq))
            last = max(last, seq)
        # Any of them may have reached the client before the restart.
        self.seq = self.durable_seq = self.sent_seq = last
        self.acked = stored.acked
        # A session whose stream was attached when the hub stopped counts
        # from the restart.
        self.detached_at = stored.detached_at if stored.detached_at is not None else now
        self._expire_in(self.detached_at + self.expiry - now)

    def info(self, now: float) -> dict:
        """What /api/v1/sessions shows of it."""
        return {
            "kind": "stream",
            "name": self.name,
            "owner": self.owner,
            "connected": self.stream is not None,
            "subscriptions": dict(self.filters),
            "unacknowledged": len(self.unacked),
            "queued": len(self.queue) + (self._next is not None),
            "last_event_id": self.seq,
            "acknowledged": self.acked,
            "session_expiry": self.expiry,
            "expires_in": None if self.detached_at is None
            else max(0.0, self.detached_at + self.expiry - now),
        }


class StreamSessions(Service):
    """Every named stream session, by name; restored from the tables at
    start-up (a service started after the store's)."""

    def __init__(self, hub, clock, tables, queue_factory, settings, stats,
                 max_sessions: int = MAX_SESSIONS) -> None:
        """``queue_factory()`` makes a session's bounded queue (the MQTT
        sessions' `Backlog`), ``settings`` bounds it and the window of
        unacknowledged events (``max_queued_messages``, ``max_queued_bytes``)."""
        self.hub = hub
        self.clock = clock
        self.tables = tables
        self.queue_factory = queue_factory
        self.settings = settings
        self.stats = stats
        self.max_sessions = max_sessions
        self.sessions: dict[str, StreamSession] = {}

    def startService(self) -> None:
        self.restore()
        super().startService()

    def restore(self) -> None:
        now = self.clock.seconds()
        for stored in self.tables.load():
            session = StreamSession(stored.name, stored.owner, self)
            session.restore(stored, now)
            self.sessions[stored.name] = session
        self.stats.sse_sessions = len(self.sessions)
        if self.sessions:
            log.info("Restored {count} stream sessions", count=len(self.sessions))

    def get(self, name: str) -> StreamSession | None:
        return self.sessions.get(name)

    def full(self) -> bool:
        return bool(self.max_sessions) and len(self.sessions) >= self.max_sessions

    def create(self, name: str, owner: str | None) -> StreamSession:
        # Ids start from the time of creation (in ms, times 1000), so that an
        # id from a forgotten session of the same name acknowledges nothing here.
        session = StreamSession(name, owner, self, seq=int(self.clock.seconds() * 1000) * 1000)
        self.sessions[name] = session
        self.stats.sse_sessions = len(self.sessions)
        return session

    def expire(self, session: StreamSession) -> None:
        if self.sessions.get(session.name) is session:
            log.info("The stream session {name} expired", name=session.name)
            del self.sessions[session.name]
            self.stats.sse_sessions = len(self.sessions)
            session.discard()

    def values(self):
        return self.sessions.values()
