"""GET /api/v1/stream: messages matching filters, as Server-Sent Events.

Each open stream is a hub subscriber. It writes straight to the response
while the client keeps up; when the connection's send buffer is full,
Twisted pauses it (it is the response's push producer) and messages wait in
a buffer bounded by events and by bytes. When that is full a QoS 0 message is dropped and counted;
a QoS 1 or 2 message, which may not be dropped silently, ends the stream
instead, and the client (EventSource reconnects by itself) learns of the gap.
"""

from __future__ import annotations

import re

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.shared import BUSY, READY, REFUSED
from reactorapp.web.errors import STREAMING, ApiError, Body, JSONResource, bad_request
from reactorapp.web.guard import read_filter, require_subscribe
from reactorapp.web.messages import query_bool, query_filters, query_qos, query_text
from reactorapp.web.streams import DEFAULT_EXPIRY, MAX_EXPIRY, event_data

log = Logger()

#: Events kept for a paused stream before messages are dropped...
BUFFER_SIZE = 1000
#: ... and their bytes, whichever bound is reached first.
BUFFER_BYTES = 1024 * 1024
#: Filters one stream may ask for; more is a 400.
MAX_FILTERS = 100
#: Seconds between comment lines that keep proxies and browsers from
#: timing out an idle stream.
HEARTBEAT = 15.0
#: Milliseconds a browser waits before reconnecting a closed stream.
RETRY = 2000

HEARTBEAT_BYTES = b": heartbeat\n\n"


def encode_event(message, qos: int, retained: bool, now: float) -> bytes | None:
    """One event, with the message's id; encoded once per message for every
    stream that gets it (the ``data:`` part is the stream sessions' own).
    None if the message has expired at ``now``; one that expires is encoded
    each time, with the seconds it has left."""
    data = event_data(message, qos, retained, now)  # makes message.encoded
    if data is None:
        return None
    if message.expires is not None:
        return b"id: %d\n%s" % (message.id, data)
    cache = message.encoded
    key = ("sse", qos, retained)
    event = cache.get(key)
    if event is None:
        event = cache[key] = b"id: %d\n%s" % (message.id, data)
    return event


@implementer(ISubscriber, IPushProducer)
class EventStream:
    """One open stream: the hub subscriber and the response's producer."""

    def __init__(self, request, hub, clock, filters, qos, stats, traffic,
                 buffer_size: int = BUFFER_SIZE, heartbeat: float = HEARTBEAT,
                 buffer_bytes: int = BUFFER_BYTES) -> None:
        self.request = request
        self.hub = hub
        self.clock = clock
        self.filters = filters
        self.qos = qos
        self.stats = stats
        self.traffic = traffic
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        self.heartbeat = heartbeat
        self.paused = False
        self.closed = False
        #: The reader's ACL check on topics (`reactorapp.web.guard.read_filter`), or None.
        self.may_read = None
        #: (event bytes, qos, (message, retained) if it expires, else None)
        #: waiting while the client is slow.
        self.buffer: list[tuple[bytes, int, tuple | None]] = []
        #: Bytes of the events in ``buffer``.
        self.buffered = 0
        self._heartbeat_loop: LoopingCall | None = None

    def __repr__(self) -> str:
        return f"<EventStream {self.filters!r}>"

    def start(self, send_retained: bool) -> None:
        self.open()
        retained = {}
        for topic_filter in self.filters:
            for message in self.hub.subscribe(self, topic_filter, self.qos):
                retained[message.topic] = message
        if send_retained:
            for topic in sorted(retained):
                message = retained[topic]
                self.deliver(message, min(message.qos, self.qos), True)

    def open(self) -> None:
        """Start the response: headers, producer, reconnection delay, heartbeats."""
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")  # no buffering in nginx
        request.registerProducer(self, True)
        request.write(b"retry: %d\n\n" % RETRY)
        # Unsubscribe when the client goes away or the response ends (klein's
        # cancel-on-disconnect); the failure of a lost connection ends here.
        request.notifyFinish().addBoth(self._finished)
        self.stats.sse_streams += 1
        if self.heartbeat > 0:
            self._heartbeat_loop = LoopingCall(self._beat)
            self._heartbeat_loop.clock = self.clock
            self._heartbeat_loop.start(self.heartbeat, now=False).addErrback(
                lambda f: log.failure("Heartbeats of {stream!r} stopped", f, stream=self))

    # -- ISubscriber ------------------------------------------------------

    @property
    def share_label(self) -> tuple[str, str]:
        """(kind, name) of this member, for the admin API: the reader's address."""
        address = self.request.getClientAddress()
        return "sse", f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    def share_state(self, qos: int) -> int:
        """As a member of a shared subscription: `BUSY` while its reader is
        slow (paused, events waiting), so that other members come first."""
        return BUSY if self.paused or self.buffer else READY

    def deliver_shared(self, message, qos, share_filter):
        """`deliver` for a ``$share/...`` filter: `REFUSED` (another member
        gets it) when the reader's ACL hides the topic or the stream ended."""
        may_read = self.may_read
        if self.closed or (may_read is not None and not may_read(message.topic)):
            return REFUSED
        return self.deliver(message, qos, False)

    def deliver(self, message, qos, retained):
        if self.closed:
            return
        may_read = self.may_read
        if may_read is not None and not may_read(message.topic):
            return  # the ACL hides this topic from the reader, retained or not
        data = encode_event(message, qos, retained, self.clock.seconds())
        if data is None:
            self._expired()  # [MQTT-3.3.2-5]
            return
        if not self.paused and not self.buffer:
            self.request.write(data)
            self.traffic.sent[qos] += 1
        elif (len(self.buffer) < self.buffer_size
              and self.buffered + len(data) <= self.buffer_bytes):
            expiring = (message, retained) if message.expires is not None else None
            self.buffer.append((data, qos, expiring))
            self.buffered += len(data)
        elif qos == 0:
            self.stats.sse_dropped += 1
            self.hub.stats.publish_dropped += 1
        else:
            self._overflow(qos)

    def _expired(self) -> None:
        self.stats.sse_expired += 1
        self.hub.stats.messages_expired += 1

    def _overflow(self, qos: int) -> None:
        """A QoS 1/2 message cannot wait: end the stream rather than lose it silently."""
        log.info("Closing the event stream {stream!r}: its reader is too slow for "
                 "QoS {qos} messages ({size} waiting, {bytes} bytes)",
                 stream=self, qos=qos, size=len(self.buffer), bytes=self.buffered)
        self.stats.sse_overflowed += 1
        transport = self.request.transport
        self.close()
        if transport is not None:
            transport.abortConnection()

    # -- IPushProducer ----------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        buffer = self.buffer
        sent = 0
        write = self.request.write
        traffic = self.traffic.sent
        # Writing may pause us again at once: stop there, keep the rest.
        written = 0
        while sent < len(buffer) and not self.paused and not self.closed:
            data, qos, expiring = buffer[sent]
            sent += 1
            written += len(data)
            if expiring is not None:
                # It waited: shown with the time it has left now, or not at all.
                data = encode_event(expiring[0], qos, expiring[1], self.clock.seconds())
                if data is None:
                    self._expired()
                    continue
            write(data)
            traffic[qos] += 1
        del buffer[:sent]
        self.buffered -= written

    def stopProducing(self) -> None:
        self.close()

    # -- the end ----------------------------------------------------------

    def _beat(self) -> None:
        if not self.paused and not self.buffer and not self.closed:
            self.request.write(HEARTBEAT_BYTES)

    def _finished(self, _result) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe and stop writing; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.stats.sse_streams -= 1
        self.buffer.clear()
        self.buffered = 0
        for topic_filter in self.filters:
            self.hub.unsubscribe(self, topic_filter)
        if self._heartbeat_loop is not None and self._heartbeat_loop.running:
            self._heartbeat_loop.stop()
        self._heartbeat_loop = None
        request = self.request
        if request.producer is self and request.channel is not None:  # still connected
            request.unregisterProducer()


@implementer(IPushProducer)
class SessionStream(EventStream):
    """The response of a stream attached to a named `StreamSession`, which
    is the hub subscriber and decides what to write; this only writes."""

    def __init__(self, request, hub, clock, stats, traffic, session,
                 heartbeat: float = HEARTBEAT) -> None:
        super().__init__(request, hub, clock, [], 0, stats, traffic, heartbeat=heartbeat)
        self.session = session

    def __repr__(self) -> str:
        return f"<SessionStream {self.session.name!r}>"

    @property
    def writable(self) -> bool:
        return not self.paused and not self.closed

    def send(self, data: bytes, qos: int) -> None:
        self.request.write(data)
        self.traffic.sent[qos] += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.session.resume(self)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.session.detach(self)

    def end(self, retry: int | None = None) -> None:
        """Finish the response (its client may reconnect, after ``retry`` ms)."""
        if self.closed:
            return
        request = self.request
        if retry is not None:
            request.write(b"retry: %d\n\n" % retry)
        self.close()
        if request.channel is not None and not request.finished:
            request.finish()


#: A session name: letters, digits and ``._:@-``, up to 128 characters.
SESSION_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
#: An event id as a client reports it.
EVENT_ID = re.compile(r"[0-9]{1,19}")


class Stream(JSONResource):
    """GET /api/v1/stream?filter=...&qos=...&retained=...[&session=NAME]"""

    def __init__(self, hub, clock, stats, traffic,
                 buffer_size: int = BUFFER_SIZE, heartbeat: float = HEARTBEAT,
                 sessions=None) -> None:
        """``sessions``: the `reactorapp.web.streams.StreamSessions`, or None
        (named sessions are then refused)."""
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.stats = stats
        self.traffic = traffic
        self.buffer_size = buffer_size
        self.heartbeat = heartbeat
        self.sessions = sessions

    def json_GET(self, request):
        filters = list(dict.fromkeys(query_filters(request)))
        if len(filters) > MAX_FILTERS:
            raise bad_request(f"A stream may have at most {MAX_FILTERS} filters,"
                              f" not {len(filters)}.", "too many filters")
        qos = query_qos(request)
        send_retained = query_bool(request, "retained", True)
        name = query_text(request, "session")
        if name is not None:
            return self._session_stream(request, name, filters, qos, send_retained)
        if request.method == b"HEAD":
            return Body(b"", b"text/event-stream; charset=utf-8")
        require_subscribe(request, filters)
        stream = EventStream(request, self.hub, self.clock, filters, qos, self.stats,
                             self.traffic, self.buffer_size, self.heartbeat)
        stream.may_read = read_filter(request)
        stream.start(send_retained)
        return STREAMING

    def _session_stream(self, request, name, filters, qos, send_retained):
        sessions = self.sessions
        if sessions is None:
            raise bad_request("This server keeps no stream sessions.", "no sessions")
        if not SESSION_NAME.fullmatch(name):
            raise bad_request("A session name is 1 to 128 letters, digits and '._:@-'.",
                              "bad session")
        expiry = _expiry(request)
        last_event_id = _last_event_id(request)
        identity = getattr(request, "identity", None)
        owner = identity.username if identity is not None else None
        session = sessions.get(name)
        if session is not None and session.owner != owner:
            raise ApiError(403, "forbidden", f"The stream session {name!r} belongs to"
                           " another user.")
        if session is None and sessions.full():
            raise ApiError(503, "too many sessions",
                           f"The server keeps at most {sessions.max_sessions} stream sessions;"
                           " try again once some have expired.")
        if request.method == b"HEAD":
            return Body(b"", b"text/event-stream; charset=utf-8")
        require_subscribe(request, filters)
        resumed = session is not None
        if session is None:
            session = sessions.create(name, owner)
        else:
            self.stats.sse_resumed += 1
        stream = SessionStream(request, self.hub, self.clock, self.stats, self.traffic,
                               session, self.heartbeat)
        stream.open()
        session.may_read = read_filter(request)
        retained = session.configure(filters, qos, expiry)
        session.attach(stream, last_event_id if resumed else None)
        if send_retained:
            for topic in sorted(retained):
                message = retained[topic]
                session.deliver(message, min(message.qos, qos), True)
        return STREAMING


def _expiry(request) -> float:
    text = query_text(request, "session_expiry")
    if text is None:
        return DEFAULT_EXPIRY
    if not EVENT_ID.fullmatch(text) or int(text) > MAX_EXPIRY:
        raise bad_request(f"'session_expiry' must be whole seconds from 0 to {int(MAX_EXPIRY)},"
                          f" not {text!r}.")
    return float(int(text))


def _last_event_id(request) -> int | None:
    """The id a reconnecting client last received: the ``Last-Event-ID``
    header (EventSource sends it), else ``last_event_id`` in the query."""
    header = request.getHeader(b"Last-Event-ID")
    text = header.decode("latin-1").strip() if header is not None else None
    if not text:
        text = query_text(request, "last_event_id")
    if not text:
        return None
    if not EVENT_ID.fullmatch(text):
        raise bad_request(f"The last event id must be a whole number, not {text[:40]!r}.",
                          "bad event id")
    return int(text)
