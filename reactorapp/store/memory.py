"""A store that keeps everything in this process: for tests and ``--store memory``.

Nothing survives a restart, so nothing ever waits: `sync` and
`pending_commit` always answer None and acknowledgements go out as soon as messages are placed.
"""

from __future__ import annotations

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from reactorapp.hub.commit import Commit
from reactorapp.store.interfaces import (
    IStore, StoreClosed, StoredMessage, StoredSession, StoredState,
)


class MemoryTables:
    """The data of a `MemoryStore`; hand it to a new store to "reopen" it."""

    def __init__(self) -> None:
        self.retained: dict[str, object] = {}
        #: client id -> [subscriptions, {seq: StoredMessage}, awaiting PUBREL
        #: ids, MQTT 5 subscription options, expiry seconds or None,
        #: (will, delay) or None]
        self.sessions: dict[str, list] = {}


@implementer(IStore)
class MemoryStore:
    """`IStore` on dictionaries."""

    def __init__(self, tables: MemoryTables | None = None) -> None:
        self.tables = tables if tables is not None else MemoryTables()
        self.writes = 0
        self.writable = True
        self.closed = False

    def __repr__(self) -> str:
        return "<MemoryStore>"

    def load(self) -> StoredState:
        tables = self.tables
        sessions = [
            StoredSession(
                client_id, dict(subscriptions),
                [StoredMessage(m.seq, m.message, m.qos, m.retained, m.packet_id, m.state,
                               m.share)
                 for _, m in sorted(queue.items())],
                set(pubrel), dict(options), expiry, will,
            )
            for client_id, (subscriptions, queue, pubrel, options, expiry, will)
            in tables.sessions.items()
        ]
        return StoredState(list(tables.retained.values()), sessions)

    # -- writes -------------------------------------------------------------

    def _session(self, client_id):
        """The tables of a session, or None once it was removed."""
        self.writes += 1
        if self.closed:
            return None
        return self.tables.sessions.get(client_id)

    def set_retained(self, message) -> None:
        self.writes += 1
        if not self.closed:
            self.tables.retained[message.topic] = message

    def remove_retained(self, topic) -> None:
        self.writes += 1
        if not self.closed:
            self.tables.retained.pop(topic, None)

    def add_session(self, client_id) -> None:
        self.writes += 1
        if not self.closed:
            self.tables.sessions.setdefault(client_id, [{}, {}, set(), {}, None, None])

    def remove_session(self, client_id) -> None:
        self.writes += 1
        if not self.closed:
            self.tables.sessions.pop(client_id, None)

    def set_session_expiry(self, client_id, seconds) -> None:
        session = self._session(client_id)
        if session is not None:
            session[4] = seconds

    def set_will(self, client_id, message, delay) -> None:
        session = self._session(client_id)
        if session is not None:
            session[5] = None if message is None else (message, delay)

    def add_subscription(self, client_id, topic_filter, qos, options=0, identifier=0) -> None:
        session = self._session(client_id)
        if session is not None:
            session[0][topic_filter] = qos
            if options or identifier:
                session[3][topic_filter] = (options, identifier)
            else:
                session[3].pop(topic_filter, None)

    def remove_subscription(self, client_id, topic_filter) -> None:
        session = self._session(client_id)
        if session is not None:
            session[0].pop(topic_filter, None)
            session[3].pop(topic_filter, None)

    def enqueue(self, client_id, seq, message, qos, retained, share=None) -> None:
        session = self._session(client_id)
        if session is not None:
            session[1][seq] = StoredMessage(seq, message, qos, retained, share=share)

    def set_inflight(self, client_id, seq, packet_id, state) -> None:
        session = self._session(client_id)
        if session is not None and seq in session[1]:
            stored = session[1][seq]
            stored.packet_id, stored.state = packet_id, state

    def dequeue(self, client_id, seq) -> None:
        session = self._session(client_id)
        if session is not None:
            session[1].pop(seq, None)

    def add_awaiting_pubrel(self, client_id, packet_id) -> None:
        session = self._session(client_id)
        if session is not None:
            session[2].add(packet_id)

    def remove_awaiting_pubrel(self, client_id, packet_id) -> None:
        session = self._session(client_id)
        if session is not None:
            session[2].discard(packet_id)

    # -- durability ---------------------------------------------------------

    def pending_commit(self):
        if self.closed:
            return Commit.failed(StoreClosed("the store is closed"))
        return None

    def sync(self):
        if self.closed:
            return fail(StoreClosed("the store is closed"))
        return None

    def close(self):
        self.closed = True
        return succeed(None)
