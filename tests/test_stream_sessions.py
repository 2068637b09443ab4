"""Named event-stream sessions in memory: ids, resuming with Last-Event-ID,
queueing while no stream is attached, takeover, owners, expiry, the window
of unacknowledged events, durability before an id is given out, and what
/api/v1/sessions and /metrics show."""

from __future__ import annotations

import json

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from reactorapp.hub.message import Message
from reactorapp.mqtt.session import MQTTSettings
from reactorapp.hub.commit import Commit
from reactorapp.web.stream_tables import MemoryStreamTables
from reactorapp.web.streams import ACK_RETRY, DEFAULT_EXPIRY, MAX_EXPIRY
from tests.test_http_auth import basic, guarded, passwd  # noqa: F401 (a fixture)
from tests.test_web_api import Response, Web, dechunk


class Events:
    """One open stream on the in-memory site, read as events."""

    def __init__(self, web: Web, query: str, headers: dict | None = None) -> None:
        head = f"GET /api/v1/stream?{query} HTTP/1.1\r\nHost: h\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in (headers or {}).items()) + "\r\n"
        self.channel, self.transport = web.send(head.encode())
        self.response = Response(self.transport.value())
        self._seen = 0

    def blocks(self) -> list[dict]:
        raw = dechunk(self.transport.value().partition(b"\r\n\r\n")[2]).decode()
        blocks = []
        for text in raw.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
            if fields:
                blocks.append(fields)
        return blocks

    def events(self) -> list[tuple[int | None, str]]:
        """(id or None, payload) of the events written since the last call."""
        events = [(int(b["id"]) if "id" in b else None, json.loads(b["data"])["payload"])
                  for b in self.blocks() if "data" in b]
        new, self._seen = events[self._seen:], len(events)
        return new

    @property
    def producer(self):
        return self.transport.producer

    def cut(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))

    @property
    def ended(self) -> bool:
        return self.transport.value().endswith(b"0\r\n\r\n")


def publish(web, topic="s/a", payload=b"x", qos=1, retain=False):
    return web.hub.publish(Message(topic, payload, qos, retain))


@pytest.fixture
def web():
    return Web()


def test_events_of_a_session_have_increasing_ids_qos0_none(web):
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    assert stream.response.status == 200
    for i in range(3):
        publish(web, payload=b"%d" % i)
    publish(web, payload=b"q0", qos=0)
    events = stream.events()
    assert [p for _, p in events] == ["0", "1", "2", "q0"]
    ids = [i for i, _ in events[:3]]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert events[3][0] is None


def test_resume_with_last_event_id_gets_the_rest_once_in_order(web):
    """The id a client reports acknowledges everything up to it; what it
    did not acknowledge is sent again, then what was queued, then live."""
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    for i in range(4):
        publish(web, payload=b"%d" % i)
    events = stream.events()
    stream.cut()
    assert web.hub.subscription_count == 1  # the session still subscribes
    for i in range(4, 7):
        publish(web, payload=b"%d" % i)
    publish(web, payload=b"lost", qos=0)  # QoS 0 is not kept without a stream
    last_seen = events[1][0]  # the client got 0 and 1 only
    again = Events(web, "session=s1&filter=s/%23&qos=1", {"Last-Event-ID": str(last_seen)})
    publish(web, payload=b"7")
    resumed = again.events()
    assert [p for _, p in resumed] == ["2", "3", "4", "5", "6", "7"]
    assert [i for i, _ in resumed[:2]] == [i for i, _ in events[2:]]
    assert web.stats.sse_resumed == 1
    assert web.stats.sse_replayed == 5
    assert web.hub.stats.publish_dropped == 1
    metrics = web.get("/metrics").body.decode()
    assert "reactorapp_sse_resumed_total 1.0" in metrics
    assert "reactorapp_sse_replayed_total 5.0" in metrics
    assert "reactorapp_sse_sessions 1.0" in metrics


def test_last_event_id_in_the_query_for_other_clients(web):
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    publish(web, payload=b"a")
    publish(web, payload=b"b")
    [(first, _), (second, _)] = stream.events()
    stream.cut()
    again = Events(web, f"session=s1&filter=s/%23&qos=1&last_event_id={second}")
    assert again.events() == []
    publish(web, payload=b"c")
    [(third, payload)] = again.events()
    assert payload == "c" and third > second


def test_a_newer_stream_takes_over(web):
    old = Events(web, "session=s1&filter=s/%23&qos=1")
    new = Events(web, "session=s1&filter=s/%23&qos=1")
    assert old.ended  # its response was finished; EventSource may come back
    publish(web, payload=b"x")
    assert [p for _, p in new.events()] == ["x"]
    assert old.events() == []
    assert web.stats.sse_streams == 1


def test_session_forgotten_after_its_expiry(web):
    stream = Events(web, "session=s1&filter=s/%23&qos=1&session_expiry=60")
    stream.cut()
    publish(web, payload=b"queued")
    [info] = [s for s in web.get("/api/v1/sessions").json() if s["kind"] == "stream"]
    assert (info["name"], info["connected"], info["queued"], info["expires_in"]) == (
        "s1", False, 1, 60.0)
    web.reactor.advance(59)
    assert web.stream_sessions.get("s1") is not None
    web.reactor.advance(1)
    assert web.stream_sessions.get("s1") is None
    assert web.hub.subscription_count == 0
    assert web.stats.sse_sessions == 0
    fresh = Events(web, "session=s1&filter=s/%23&qos=1")
    assert fresh.events() == []  # a new session: nothing of the old one


def test_reattaching_cancels_the_expiry(web):
    Events(web, "session=s1&filter=s/%23&qos=1&session_expiry=10").cut()
    Events(web, "session=s1&filter=s/%23&qos=1&session_expiry=10")
    web.reactor.advance(100)
    assert web.stream_sessions.get("s1") is not None


@pytest.mark.parametrize("query, error", [
    ("session=a%2Fb", "bad session"),
    ("session=", "bad session"),
    ("session=" + "x" * 129, "bad session"),
    (f"session=s&session_expiry={int(MAX_EXPIRY) + 1}", "bad request"),
    ("session=s&session_expiry=-1", "bad request"),
    ("session=s&session_expiry=1.5", "bad request"),
    ("session=s&last_event_id=abc", "bad event id"),
])
def test_bad_session_parameters_are_400s(web, query, error):
    Events(web, "session=s&filter=x").cut()  # an existing session, for the id check
    answer = web.get(f"/api/v1/stream?{query}")
    assert answer.status == 400, answer
    assert answer.error() == error


def test_default_expiry_is_documented(web):
    stream = Events(web, "session=s1&filter=x&qos=1")
    stream.cut()
    [info] = [s for s in web.get("/api/v1/sessions").json() if s["kind"] == "stream"]
    assert info["session_expiry"] == DEFAULT_EXPIRY == 3600


def test_the_window_of_unacknowledged_events_ends_the_stream():
    """Acknowledgements come with a reconnect: past the window the stream
    ends (with a short retry) and the reconnect acknowledges it."""
    web = Web(settings=MQTTSettings(max_queued_messages=5))
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    for i in range(8):
        publish(web, payload=b"%d" % i)
    events = stream.events()
    assert [p for _, p in events] == ["0", "1", "2", "3", "4"]
    assert stream.ended
    assert stream.blocks()[-1] == {"retry": str(ACK_RETRY)}
    again = Events(web, "session=s1&filter=s/%23&qos=1", {"Last-Event-ID": str(events[-1][0])})
    assert [p for _, p in again.events()] == ["5", "6", "7"]


def test_offline_queue_is_bounded_and_refusals_counted():
    web = Web(settings=MQTTSettings(max_queued_messages=3, max_spill_bytes=0))
    Events(web, "session=s1&filter=s/%23&qos=1").cut()
    for i in range(5):
        publish(web, payload=b"%d" % i)
    assert web.hub.stats.queue_refused == 2
    again = Events(web, "session=s1&filter=s/%23&qos=1")
    assert [p for _, p in again.events()] == ["0", "1", "2"]


def test_a_slow_reader_holds_the_publisher_back():
    """Memory full, nothing may spill: the publish's Deferred waits for the
    reader, as with an MQTT subscriber (back-pressure, not a drop)."""
    web = Web(settings=MQTTSettings(max_queued_messages=2, max_spill_bytes=0))
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    stream.producer.pauseProducing()
    waits = [publish(web, payload=b"%d" % i) for i in range(2)]
    assert waits[0] is None
    assert waits[1] is not None and not waits[1].called
    stream.producer.resumeProducing()
    assert waits[1].called
    assert [p for _, p in stream.events()] == ["0", "1"]


class SlowTables(MemoryStreamTables):
    """Tables whose writes become durable when the test says so."""

    durable = True

    def __init__(self) -> None:
        self.commit = Commit()
        self.acked = []

    def pending_commit(self):
        return None if self.commit.done else self.commit

    def ack(self, name, seq) -> None:
        self.acked.append(seq)


def test_an_event_is_written_only_once_durable():
    tables = SlowTables()
    web = Web(tables=tables)
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    publish(web, payload=b"a")
    publish(web, payload=b"q0", qos=0)  # QoS 0 has no id and does not wait
    assert [p for _, p in stream.events()] == ["q0"]
    tables.commit.fire()
    assert [p for _, p in stream.events()] == ["a"]


def test_a_failed_commit_holds_events_back():
    tables = SlowTables()
    web = Web(tables=tables)
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    publish(web, payload=b"a")
    tables.commit.fire(Failure(RuntimeError("disk full")))
    assert stream.events() == []


def test_another_user_cannot_attach(passwd):  # noqa: F811
    web = guarded(passwd)
    alice = Events(web, "session=mine&filter=home/%23&qos=1", basic("alice", "pw-alice"))
    assert alice.response.status == 200
    answer = web.get("/api/v1/stream?session=mine&filter=home/%23",
                     headers=basic("ops", "pw-ops"))
    assert answer.status == 403, answer
    assert answer.error() == "forbidden"
    [info] = [s for s in web.get("/api/v1/sessions", headers=basic("root", "pw-root")).json()
              if s["kind"] == "stream"]
    assert info["owner"] == "alice"


def test_retained_messages_only_for_new_filters(web):
    publish(web, "s/r", b"kept", qos=1, retain=True)
    first = Events(web, "session=s1&filter=s/%23&qos=1")
    [(seen, payload)] = first.events()
    assert payload == "kept"
    first.cut()
    again = Events(web, "session=s1&filter=s/%23&qos=1", {"Last-Event-ID": str(seen)})
    assert again.events() == []


def test_streams_without_a_session_work_as_before(web):
    stream = Events(web, "filter=s/%23&qos=1")
    publish(web, payload=b"a")
    [(event_id, payload)] = stream.events()
    assert payload == "a"
    stream.cut()
    assert web.hub.subscription_count == 0
    assert [s for s in web.get("/api/v1/sessions").json() if s["kind"] == "stream"] == []


def test_an_id_beyond_the_last_one_given_out_drops_nothing_queued(web):
    stream = Events(web, "session=s1&filter=s/%23&qos=1")
    publish(web, payload=b"a")
    [(seen, _)] = stream.events()
    stream.cut()
    publish(web, payload=b"b")
    again = Events(web, "session=s1&filter=s/%23&qos=1", {"Last-Event-ID": str(seen + 10)})
    assert [p for _, p in again.events()] == ["b"]


def test_queued_events_the_reader_may_not_read_are_skipped(passwd):  # noqa: F811
    """Events queued before the reader's ACL was known (a session restored
    after a restart) are checked again before they are written."""
    from tests.test_http_auth import ACL_TEXT

    web = guarded(passwd, ACL_TEXT)
    alice = basic("alice", "pw-alice")
    Events(web, "session=mine&filter=home/%23&qos=1", alice).cut()
    web.stream_sessions.get("mine").may_read = None  # as restored
    publish(web, "home/secret/door", b"hidden")
    publish(web, "home/hall", b"open")
    again = Events(web, "session=mine&filter=home/%23&qos=1", alice)
    assert [p for _, p in again.events()] == ["open"]


def test_head_creates_no_session(web):
    answer = web.request("HEAD", "/api/v1/stream?session=s1&filter=x")
    assert answer.status == 200
    assert web.stream_sessions.get("s1") is None


def test_a_site_without_sessions_refuses_them():
    from reactorapp.mqtt.protocol import MQTTFactory
    from reactorapp.web.health import Readiness
    from reactorapp.web.metrics import new_registry
    from reactorapp.web.site import make_site

    web = Web()
    web.site = make_site(web.hub, web.reactor, MQTTFactory(web.hub, web.broker.clock),
                         max_body_size=1024, readiness=Readiness(), registry=new_registry())
    answer = web.get("/api/v1/stream?session=s1&filter=x")
    assert answer.status == 400 and answer.error() == "no sessions"
