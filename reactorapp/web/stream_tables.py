"""Where named event-stream sessions are kept: the hub's SQLite database, or
nowhere (``--store memory``: they last as long as the process).

The SQLite tables ride on the `SQLiteStore` (its public ``write``,
``read_now`` and ``pending_commit``): a queued event is one more write in
the same group commit as the rest of a publish, so the publisher's answer
waits for it like for an MQTT persistent session. The tables are part of the
store's schema (``reactorapp.store.schema.MIGRATIONS``, version 3).

``IStreamTables(store)`` picks them for the hub's store (adapters below).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

from twisted.python.components import registerAdapter
from zope.interface import Attribute, Interface, implementer

from reactorapp.hub.message import Message
from reactorapp.store.interfaces import IStore
from reactorapp.store.sqlite import SQLiteStore

_SAVE = ("INSERT INTO stream_sessions (name, owner, qos, filters, expiry, detached_at, acked)"
         " VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (name) DO UPDATE SET"
         " owner = excluded.owner, qos = excluded.qos, filters = excluded.filters,"
         " expiry = excluded.expiry, detached_at = NULL")
_DETACHED = "UPDATE stream_sessions SET detached_at = ? WHERE name = ?"
_ENQUEUE = ("INSERT OR REPLACE INTO stream_queue (name, seq, topic, payload, qos, retain,"
            " retained, properties, sender, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_ACK = ("DELETE FROM stream_queue WHERE name = ? AND seq <= ?",
        "UPDATE stream_sessions SET acked = max(acked, ?) WHERE name = ?")
_REMOVE = ("DELETE FROM stream_sessions WHERE name = ?",
           "DELETE FROM stream_queue WHERE name = ?")


@dataclass
class StoredStreamSession:
    """What a named stream session left behind."""

    name: str
    owner: str | None
    qos: int
    filters: list[str]
    expiry: float
    #: When its last stream ended (None: a stream was attached at the end).
    detached_at: float | None
    #: The highest event id its client acknowledged.
    acked: int
    #: (seq, Message, qos, retained) still owed, in order.
    events: list[tuple] = field(default_factory=list)


class IStreamTables(Interface):
    """Where named stream sessions and their owed events are kept. Writes
    are recorded in the reactor thread, in order, like `IStore`'s."""

    durable = Attribute("True if what is written survives a restart.")

    def load():
        """Every `StoredStreamSession` (at start-up, before any write)."""

    def save(name, owner, qos, filters, expiry, acked):
        """Create or update a session."""

    def detached(name, when):
        """Record that the session's last stream ended at ``when``."""

    def enqueue(name, seq, message, qos, retained):
        """Keep an event the session owes under its id ``seq``."""

    def ack(name, seq):
        """Forget the events up to ``seq``, acknowledged by the client."""

    def remove(name):
        """Forget a session and its events."""

    def pending_commit():
        """None if every write so far is durable, else the
        `reactorapp.hub.commit.Commit` that makes them durable."""


@implementer(IStreamTables)
class MemoryStreamTables:
    """Nothing is kept beyond the process: every write is a no-op."""

    durable = False

    def load(self) -> list[StoredStreamSession]:
        return []

    def save(self, name, owner, qos, filters, expiry, acked) -> None:
        pass

    def detached(self, name, when) -> None:
        pass

    def enqueue(self, name, seq, message, qos, retained) -> None:
        pass

    def ack(self, name, seq) -> None:
        pass

    def remove(self, name) -> None:
        pass

    def pending_commit(self):
        return None


@implementer(IStreamTables)
class SQLiteStreamTables:
    """The two tables in the hub's SQLite database."""

    durable = True

    def __init__(self, store) -> None:
        self.store = store

    def load(self) -> list[StoredStreamSession]:
        """Read every session and its events (at start-up, after the store
        is loaded and before anything is written)."""
        return self.store.read_now(_read)

    def save(self, name, owner, qos, filters, expiry, acked) -> None:
        """Create or update a session; ``acked`` is where the ids of a new
        one start (kept, so that they go on from there after a restart)."""
        self.store.write(_SAVE, (name, owner if owner is not None else "", qos,
                                 json.dumps(filters), float(expiry), acked))

    def detached(self, name, when) -> None:
        self.store.write(_DETACHED, (float(when), name))

    def enqueue(self, name, seq, message, qos, retained) -> None:
        self.store.write(_ENQUEUE, (
            name, seq, message.topic, message.payload, qos, 1 if message.retain else 0,
            1 if retained else 0, repr(message.properties) if message.properties else "",
            message.sender or "", message.timestamp))

    def ack(self, name, seq) -> None:
        self.store.write(_ACK[0], (name, seq))
        self.store.write(_ACK[1], (seq, name))

    def remove(self, name) -> None:
        for sql in _REMOVE:
            self.store.write(sql, (name,))

    def pending_commit(self):
        return self.store.pending_commit()


def _read(connection) -> list[StoredStreamSession]:
    sessions = {
        name: StoredStreamSession(name, owner or None, qos, json.loads(filters), expiry,
                                  detached_at, acked)
        for name, owner, qos, filters, expiry, detached_at, acked in connection.execute(
            "SELECT name, owner, qos, filters, expiry, detached_at, acked FROM stream_sessions")
    }
    for (name, seq, topic, payload, qos, retain, retained, properties, sender,
         timestamp) in connection.execute(
            "SELECT name, seq, topic, payload, qos, retain, retained, properties, sender,"
            " timestamp FROM stream_queue ORDER BY name, seq"):
        session = sessions.get(name)
        if session is None:
            continue
        message = Message(topic, payload, qos, bool(retain),
                          ast.literal_eval(properties) if properties else None,
                          sender or None, timestamp)
        session.events.append((seq, message, qos, bool(retained)))
    return list(sessions.values())


registerAdapter(SQLiteStreamTables, SQLiteStore, IStreamTables)
registerAdapter(lambda store: MemoryStreamTables(), IStore, IStreamTables)
