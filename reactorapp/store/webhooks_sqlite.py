"""The webhook outbox, rules and dead letters in the hub's SQLite database.

They share the `SQLiteStore`'s connection and writer thread: an outbox row is
one more write in the same group commit as the rest of a publish, so the
publisher's acknowledgement waits for one fsync however many rules and
sessions the message went to. Reads run in the writer thread too (the
database is opened in exclusive mode), after the writes recorded before
them.

The tables are created here, outside ``schema.MIGRATIONS``, so that the
webhook tables can be added to a database of any schema version.
"""

from __future__ import annotations

import json
import sqlite3

from twisted.internet.defer import Deferred, fail, maybeDeferred
from zope.interface import implementer

from reactorapp.store.interfaces import StoreError
from reactorapp.webhooks.delivery import DeadLetter, Delivery, WebhookState
from reactorapp.webhooks.interfaces import IWebhookStore
from reactorapp.webhooks.rules import RuleError, parse_rule

TABLES = (
    "CREATE TABLE IF NOT EXISTS webhook_rules (name TEXT PRIMARY KEY, rule TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS webhook_outbox (
        id INTEGER PRIMARY KEY, rule TEXT NOT NULL, topic TEXT NOT NULL,
        payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
        key TEXT NOT NULL, timestamp REAL NOT NULL, queued_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_by_rule ON webhook_outbox (rule, id)",
    """CREATE TABLE IF NOT EXISTS webhook_dead (
        id INTEGER PRIMARY KEY, rule TEXT NOT NULL, topic TEXT NOT NULL,
        payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
        key TEXT NOT NULL, timestamp REAL NOT NULL, queued_at REAL NOT NULL,
        attempts INTEGER NOT NULL, reason TEXT NOT NULL, died_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS webhook_dead_by_rule ON webhook_dead (rule, id)",
)

_COLUMNS = "id, rule, topic, payload, qos, retain, key, timestamp, queued_at"
_SAVE_RULE = "INSERT OR REPLACE INTO webhook_rules (name, rule) VALUES (?, ?)"
_DELETE_RULE = (
    "DELETE FROM webhook_rules WHERE name = ?",
    "DELETE FROM webhook_outbox WHERE rule = ?",
    "DELETE FROM webhook_dead WHERE rule = ?",
)
_ADD = f"INSERT OR REPLACE INTO webhook_outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_REMOVE = "DELETE FROM webhook_outbox WHERE id = ?"
_BURY = (f"INSERT OR REPLACE INTO webhook_dead ({_COLUMNS}, attempts, reason, died_at)"
         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_UNBURY = "DELETE FROM webhook_dead WHERE id = ?"
_PENDING = (f"SELECT {_COLUMNS} FROM webhook_outbox WHERE rule = ? AND id > ?"
            " ORDER BY id LIMIT ?")
_DEAD = (f"SELECT {_COLUMNS}, attempts, reason, died_at FROM webhook_dead"
         " WHERE rule = ? AND id > ? ORDER BY id LIMIT ?")
_ONE_DEAD = (f"SELECT {_COLUMNS}, attempts, reason, died_at FROM webhook_dead"
             " WHERE rule = ? AND id = ?")


@implementer(IWebhookStore)
class SQLiteWebhookStore:
    """`IWebhookStore` riding on a loaded `SQLiteStore`."""

    durable = True

    def __init__(self, store) -> None:
        self.store = store

    def load(self) -> WebhookState:
        """Create the tables if needed and read the rules (at start-up, after
        the `SQLiteStore` is loaded and before anything is written)."""
        connection = self.store._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            for statement in TABLES:
                connection.execute(statement)
            connection.execute("COMMIT")
            rules = []
            for name, text in connection.execute("SELECT name, rule FROM webhook_rules"):
                try:
                    rules.append(parse_rule(json.loads(text)))
                except (ValueError, RuleError) as e:
                    raise StoreError(f"the stored webhook rule {name!r} is unusable: {e}") from None
            (last,) = connection.execute(
                "SELECT max(id) FROM (SELECT max(id) AS id FROM webhook_outbox"
                " UNION ALL SELECT max(id) FROM webhook_dead)").fetchone()
            pending = dict(connection.execute(
                "SELECT rule, count(*) FROM webhook_outbox GROUP BY rule"))
        except sqlite3.Error as e:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise StoreError(f"cannot read the webhook tables in {self.store.directory!r}: {e}.") from None
        return WebhookState(rules, last or 0, pending)

    # -- writes: one more statement in the store's next batch -------------------

    def save_rule(self, rule) -> None:
        self.store._write(_SAVE_RULE, (rule.name, json.dumps(rule.to_dict(with_secret=True))))

    def delete_rule(self, name) -> None:
        for sql in _DELETE_RULE:
            self.store._write(sql, (name,))

    def add(self, delivery) -> None:
        self.store._write(_ADD, _row(delivery))

    def remove(self, delivery_id) -> None:
        self.store._write(_REMOVE, (delivery_id,))

    def bury(self, dead_letter) -> None:
        self.store._write(_REMOVE, (dead_letter.id,))
        self.store._write(_BURY, (*_row(dead_letter.delivery), dead_letter.attempts,
                                  dead_letter.reason, dead_letter.died_at))

    def revive(self, dead_id, delivery) -> None:
        self.store._write(_UNBURY, (dead_id,))
        self.store._write(_ADD, _row(delivery))

    def sync(self):
        return self.store.sync()

    # -- reads --------------------------------------------------------------

    def pending(self, rule, after_id, limit):
        return self._read(_select, _PENDING, (rule, after_id, limit), _delivery)

    def dead_letters(self, rule, after_id, limit):
        return self._read(_select, _DEAD, (rule, after_id, limit), _dead_letter)

    def dead_letter(self, rule, dead_id):
        d = self._read(_select, _ONE_DEAD, (rule, dead_id), _dead_letter)
        return d.addCallback(lambda found: found[0] if found else None)

    def _read(self, function, *args) -> Deferred:
        """Run ``function(connection, *args)`` after the writes recorded so far."""
        store = self.store
        if store._connection is None:
            return fail(StoreError("the store is closed"))
        written = store.sync()
        if written is None:
            return self._run(None, function, args)
        return written.addCallback(self._run, function, args)

    def _run(self, _ignored, function, args) -> Deferred:
        store = self.store
        if store._writer is None:
            # Nothing was ever written, so no thread uses the connection.
            return maybeDeferred(function, store._connection, *args)
        return store._writer.call(function, store._connection, *args)


def _row(d: Delivery) -> tuple:
    return (d.id, d.rule, d.topic, d.payload, d.qos, int(d.retain), d.key,
            d.timestamp, d.queued_at)


def _select(connection, sql, parameters, make):
    """In the writer thread: outside a transaction, reads see committed rows."""
    return [make(row) for row in connection.execute(sql, parameters)]


def _delivery(row) -> Delivery:
    id, rule, topic, payload, qos, retain, key, timestamp, queued_at = row
    return Delivery(id, rule, topic, bytes(payload), qos, bool(retain), key, timestamp,
                    queued_at, durable=True)


def _dead_letter(row) -> DeadLetter:
    delivery = _delivery(row[:9])
    delivery.durable = False
    return DeadLetter(delivery, row[9], row[10], row[11])
