"""The JSON API under /api/v1: publish, retained messages, administration.

Each resource asks the hub and answers; none keeps state of its own.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import gatherResults
from twisted.logger import Logger

from reactorapp.addresses import address_text
from reactorapp.hub.counters import api_tree
from reactorapp.hub.flow import Caller
from reactorapp.hub.message import Message
from reactorapp.hub.shared import share_state
from reactorapp.web.errors import (
    ApiError, Body, JSONResource, bad_request, not_found,
)
from reactorapp.web.guard import read_filter, require_publish
from reactorapp.web.messages import (
    check_topic, message_json, parse_batch, parse_publish, query_bool, query_filters,
    query_metadata, query_qos,
)

log = Logger()


def _publish(hub, traffic, topic: str, payload: bytes, qos: int, retain: bool,
             properties: dict | None = None):
    """Hand one message to the hub; the answer waits until it is placed
    (durably, where the storage rules ask for it) [an acknowledgement is a
    promise, as for PUBACK]. Its timestamp is the hub's clock, which its
    expiry, if any, counts from."""
    message = Message(topic, payload, qos, retain, properties, timestamp=hub.clock.seconds())
    durable = hub.publish(message)
    traffic.received[qos] += 1
    answer = {"id": message.id, "topic": topic, "qos": qos, "retain": retain}
    if durable is None:
        return answer
    return durable.addCallbacks(lambda _: answer, _ebNotPlaced, errbackArgs=(topic,))


def _ebNotPlaced(failure, topic):
    log.failure("Could not place a message to {topic} published over HTTP", failure, topic=topic)
    raise ApiError(503, "not stored",
                   "The message could not be stored; it may not be delivered. Try again.")


def _ebBatchNotPlaced(failure, count):
    log.failure("Could not place a batch of {count} messages published over HTTP", failure,
                count=count)
    raise ApiError(503, "not stored",
                   "Some messages of the batch could not be stored; they may not be delivered."
                   " Try again.")


class Publish(JSONResource):
    """POST /api/v1/publish: one message (a JSON object), or a batch (a JSON
    array, or ``application/x-ndjson``: one object a line)."""

    def __init__(self, hub, traffic) -> None:
        super().__init__()
        self.hub = hub
        self.traffic = traffic

    def json_POST(self, request):
        body = request.content.read()
        content_type = request.getHeader(b"Content-Type") or b""
        if content_type.split(b";", 1)[0].strip().lower() == b"application/x-ndjson":
            return self._batch(request, parse_batch(body, True))
        if body.lstrip()[:1] == b"[":
            return self._batch(request, parse_batch(body, False))
        topic, payload, qos, retain, properties = parse_publish(body)
        require_publish(request, topic)
        return _publish(self.hub, self.traffic, topic, payload, qos, retain, properties)

    def _batch(self, request, messages):
        """Publish a checked batch, all or nothing: every message may be
        published (ACL) or none is. The answer, one result per message in
        order, waits until each is placed, as one acknowledgement each."""
        for index, (topic, *_) in enumerate(messages):
            try:
                require_publish(request, topic)
            except ApiError as e:
                raise ApiError(e.code, e.error,
                               f"Message {index}: {e.detail} None was published.",
                               extra={"errors": [{"index": index, "error": e.error,
                                                  "detail": e.detail}]}) from None
        hub = self.hub
        route = hub.route
        received = self.traffic.received
        results = []
        commits = {}
        waits = []
        # The batch is one input for flow control, as a call of Hub.publish
        # is: subscribers it congests hold back its answer, not its messages.
        flow = hub.flow
        caller = None
        if flow.current is None:
            caller = flow.current = Caller()
        now = hub.clock.seconds()
        try:
            for topic, payload, qos, retain, properties in messages:
                message = Message(topic, payload, qos, retain, properties, timestamp=now)
                commit = route(message)
                received[qos] += 1
                results.append({"id": message.id, "topic": topic, "qos": qos, "retain": retain})
                if commit is not None:
                    commits[id(commit)] = commit
        finally:
            if caller is not None:
                flow.current = None
        drained = caller.drained() if caller is not None else None
        if drained is not None:
            waits.append(drained)
        if not commits and not waits:
            return results
        waits.extend(commit.deferred() for commit in commits.values())
        done = waits[0] if len(waits) == 1 else gatherResults(waits, consumeErrors=True)
        return done.addCallbacks(lambda _: results, _ebBatchNotPlaced,
                                 errbackArgs=(len(results),))


class Topics(JSONResource):
    """POST /api/v1/topics/{topic}: the body is the payload, as is; qos,
    retain and MQTT 5 metadata in the query."""

    takes_subpath = True

    def __init__(self, hub, traffic) -> None:
        super().__init__()
        self.hub = hub
        self.traffic = traffic

    def json_POST(self, request):
        topic = self._topic(request)
        qos = query_qos(request)
        retain = query_bool(request, "retain", False)
        payload = request.content.read()
        properties = query_metadata(request, payload)
        require_publish(request, topic)
        return _publish(self.hub, self.traffic, topic, payload, qos, retain, properties)

    def _topic(self, request) -> str:
        # Twisted splits the path before decoding %XX, so the levels are
        # taken from the raw path: an encoded '/' stays part of its level.
        raw = request.path.split(b"/topics/", 1)[1] if b"/topics/" in request.path else b""
        try:
            topic = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("The topic in the path is not UTF-8.", "bad topic") from None
        if not topic:
            raise bad_request("Give the topic in the path: /api/v1/topics/{topic}.", "bad topic")
        return check_topic(topic)


class Retained(JSONResource):
    """GET /api/v1/retained?filter=...: the retained messages the filters match."""

    def __init__(self, hub) -> None:
        super().__init__()
        self.hub = hub

    def json_GET(self, request):
        found = {}
        may_read = read_filter(request)  # the ACL, if any
        now = self.hub.clock.seconds()
        for topic_filter in query_filters(request):
            for message in self.hub.retained(topic_filter):
                if may_read is None or may_read(message.topic):
                    found[message.topic] = message
        shown = (message_json(found[topic], now=now) for topic in sorted(found))
        # An expired message is never shown, wherever the hub still keeps it.
        return [m for m in shown if m.get("message_expiry", 1) > 0]


def session_json(session) -> dict:
    """What the admin API shows of one session (and its connection, if any,
    through `reactorapp.mqtt.interfaces.IConnection` only)."""
    connection = session.connection
    info = {
        "client_id": session.client_id,
        "connected": connection is not None,
        "persistent": session.persistent,
        "subscriptions": dict(session.subscriptions),
        "inflight": len(session.inflight),
        "queued": len(session.queue),
        # Seconds it is kept once its client has gone (null: never).
        "session_expiry": None if math.isinf(session.expiry) else session.expiry,
    }
    if connection is not None:
        info.update(connection.describe())
    elif session.detached_at is not None and not math.isinf(session.expiry):
        info["expires_in"] = round(max(
            0.0, session.detached_at + session.expiry - session.hub.clock.seconds()), 3)
    return info


def _connected(hub) -> list:
    sessions = hub.sessions().values()
    return sorted((s for s in sessions if s.connection is not None), key=lambda s: s.client_id)


class Clients(JSONResource):
    """GET /api/v1/clients: the connected clients; /clients/{id} below."""

    isLeaf = False

    def __init__(self, hub) -> None:
        super().__init__()
        self.hub = hub

    def getChild(self, path, request):
        if path == b"":
            return self
        return Client(self.hub, path)

    def json_GET(self, request):
        return [session_json(session) for session in _connected(self.hub)]


class Client(JSONResource):
    """GET or DELETE (disconnect) /api/v1/clients/{id}."""

    def __init__(self, hub, raw_id: bytes) -> None:
        super().__init__()
        self.hub = hub
        self.raw_id = raw_id

    def _session(self):
        client_id = self.raw_id.decode("utf-8", "replace")
        session = self.hub.get_session(client_id)
        if session is None or session.connection is None:
            raise not_found(f"No client {client_id!r} is connected.")
        return session

    def json_GET(self, request):
        return session_json(self._session())

    def json_DELETE(self, request):
        """Drop the connection as the server would on a protocol error: the
        will is published, a persistent session stays [MQTT-3.1.2-8]."""
        session = self._session()
        log.info("Disconnecting client {client_id} as asked over HTTP by {peer}",
                 client_id=session.client_id, peer=address_text(request.getClientAddress()))
        session.connection.disconnect()
        return None


class Sessions(JSONResource):
    """GET /api/v1/sessions: every session, connected or waiting: MQTT
    sessions (``"kind": "mqtt"``), then named event-stream sessions
    (``"kind": "stream"``); /sessions/{id} below."""

    isLeaf = False

    def __init__(self, hub, stream_sessions=None) -> None:
        super().__init__()
        self.hub = hub
        self.stream_sessions = stream_sessions

    def getChild(self, path, request):
        if path == b"":
            return self
        return OneSession(self.hub, path)

    def json_GET(self, request):
        sessions = sorted(self.hub.sessions().values(), key=lambda s: s.client_id)
        answer = [{"kind": "mqtt", **session_json(session)} for session in sessions]
        if self.stream_sessions is not None:
            now = self.stream_sessions.clock.seconds()
            answer.extend(session.info(now) for session in
                          sorted(self.stream_sessions.values(), key=lambda s: s.name))
        return answer


class OneSession(JSONResource):
    """GET or DELETE (remove, if its client is away) /api/v1/sessions/{id}."""

    def __init__(self, hub, raw_id: bytes) -> None:
        super().__init__()
        self.hub = hub
        self.client_id = raw_id.decode("utf-8", "replace")

    def _session(self):
        session = self.hub.get_session(self.client_id)
        if session is None:
            raise not_found(f"There is no session for client {self.client_id!r}.")
        return session

    def json_GET(self, request):
        return session_json(self._session())

    def json_DELETE(self, request):
        """Forget an absent client's session, subscriptions and queue, in
        memory and in the store. A connected client keeps its session."""
        session = self._session()
        if session.connection is not None:
            raise ApiError(409, "connected", f"Client {self.client_id!r} is connected; disconnect"
                           " it first (DELETE /api/v1/clients/{client_id}).")
        log.info("Removing the session of client {client_id} as asked over HTTP by {peer}",
                 client_id=self.client_id, peer=address_text(request.getClientAddress()))
        session.discard()
        return None


_STATES = ("ready", "busy", "away")


def member_json(member, qos: int) -> dict:
    """One member of a shared subscription: what it is (``share_label``:
    an MQTT client, an SSE stream, a stream session, a webhook rule), its
    granted QoS and whether it can take a message now."""
    kind, name = getattr(member, "share_label", None) or ("other", repr(member))
    return {"kind": kind, "name": name, "qos": qos,
            "state": _STATES[share_state(member, qos)]}


class Shared(JSONResource):
    """GET /api/v1/shared: every shared subscription ($share/GROUP/FILTER),
    its members and what it delivered."""

    def __init__(self, hub) -> None:
        super().__init__()
        self.hub = hub

    def json_GET(self, request):
        answer = []
        for group in sorted(self.hub.shared_groups(), key=lambda g: g.share_filter):
            info = group.describe()
            info["members"] = [member_json(member, qos)
                               for member, qos in list(group.members.items())]
            answer.append(info)
        return answer


class Stats(JSONResource):
    """GET /api/v1/stats: the hub's counters, the same numbers /metrics shows."""

    def __init__(self, hub, web_stats) -> None:
        super().__init__()
        self.hub = hub
        self.web_stats = web_stats

    def json_GET(self, request):
        hub, stats, web = self.hub, self.hub.stats, self.web_stats
        traffic = {
            name: {"received": list(t.received), "sent": list(t.sent)}
            for name, t in sorted(stats.traffic.items())
        }
        answer = {"uptime": hub.clock.seconds() - stats.started_at, **api_tree(hub)}
        answer["messages"].update(
            received=sum(sum(t["received"]) for t in traffic.values()),
            sent=sum(sum(t["sent"]) for t in traffic.values()))
        answer.update(
            traffic=traffic,
            sse={"streams": web.sse_streams, "dropped": web.sse_dropped,
                 "overflowed": web.sse_overflowed, "expired": web.sse_expired},
            websocket={"connections": web.websocket_connections})
        return answer


def openapi_document(extensions=()) -> bytes:
    """The OpenAPI 3 description shipped next to this module, with the paths
    and component schemas of resources mounted beside ours."""
    document = json.loads(
        resources.files("reactorapp.web").joinpath("openapi.json").read_bytes())
    for extension in extensions:
        document["paths"].update(extension.get("paths", {}))
        for kind, items in extension.get("components", {}).items():
            document["components"].setdefault(kind, {}).update(items)
    return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


class OpenAPI(JSONResource):
    """GET /api/v1/openapi.json."""

    def __init__(self, extensions=()) -> None:
        super().__init__()
        self.document = openapi_document(extensions)

    def json_GET(self, request):
        return Body(self.document, b"application/json; charset=utf-8")
