"""The webhook outbox, rules and dead letters in the hub's SQLite database.

They share the `SQLiteStore`'s connection and writer thread: an outbox row is
one more write in the same group commit as the rest of a publish, so the
publisher's acknowledgement waits for one fsync however many rules and
sessions the message went to. Reads run in the writer thread too (the
database is opened in exclusive mode), after the writes recorded before
them. The tables are part of the store's schema (``schema.MIGRATIONS``).

``IWebhookStore(store)`` gives one for a `SQLiteStore` (an adapter).
"""

from __future__ import annotations

import ast
import json
import sqlite3

from twisted.python.components import registerAdapter
from zope.interface import implementer

from reactorapp.store.interfaces import StoreError
from reactorapp.store.sqlite import SQLiteStore
from reactorapp.webhooks.delivery import DeadLetter, Delivery, WebhookState
from reactorapp.webhooks.interfaces import IWebhookStore
from reactorapp.webhooks.rules import RuleError, parse_rule

_COLUMNS = "id, rule, topic, payload, qos, retain, key, timestamp, queued_at, properties"
_SAVE_RULE = "INSERT OR REPLACE INTO webhook_rules (name, rule) VALUES (?, ?)"
_DELETE_RULE = (
    "DELETE FROM webhook_rules WHERE name = ?",
    "DELETE FROM webhook_outbox WHERE rule = ?",
    "DELETE FROM webhook_dead WHERE rule = ?",
)
_ADD = f"INSERT OR REPLACE INTO webhook_outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_REMOVE = "DELETE FROM webhook_outbox WHERE id = ?"
_BURY = (f"INSERT OR REPLACE INTO webhook_dead ({_COLUMNS}, attempts, reason, died_at)"
         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_UNBURY = "DELETE FROM webhook_dead WHERE id = ?"
_FORGET_DEAD = ("DELETE FROM webhook_dead WHERE id IN"
                " (SELECT id FROM webhook_dead WHERE rule = ? ORDER BY id LIMIT ?)")
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
        """Read the rules and what is pending (at start-up, after the
        `SQLiteStore` is loaded and before anything is written)."""
        try:
            return self.store.read_now(_read_state)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the webhook tables in {self.store.directory!r}: {e}.") from None

    # -- writes: one more statement in the store's next batch -------------------

    def save_rule(self, rule) -> None:
        self.store.write(_SAVE_RULE, (rule.name, json.dumps(rule.to_dict(with_secret=True))))

    def delete_rule(self, name) -> None:
        for sql in _DELETE_RULE:
            self.store.write(sql, (name,))

    def add(self, delivery) -> None:
        self.store.write(_ADD, _row(delivery))

    def remove(self, delivery_id) -> None:
        self.store.write(_REMOVE, (delivery_id,))

    def bury(self, dead_letter) -> None:
        self.store.write(_REMOVE, (dead_letter.id,))
        self.store.write(_BURY, (*_row(dead_letter.delivery), dead_letter.attempts,
                                  dead_letter.reason, dead_letter.died_at))

    def forget_dead(self, rule, count) -> None:
        self.store.write(_FORGET_DEAD, (rule, count))

    def revive(self, dead_id, delivery) -> None:
        self.store.write(_UNBURY, (dead_id,))
        self.store.write(_ADD, _row(delivery))

    def pending_commit(self):
        return self.store.pending_commit()

    def sync(self):
        return self.store.sync()

    # -- reads --------------------------------------------------------------

    def pending(self, rule, after_id, limit):
        return self.store.read(_select, _PENDING, (rule, after_id, limit), _delivery)

    def dead_letters(self, rule, after_id, limit):
        return self.store.read(_select, _DEAD, (rule, after_id, limit), _dead_letter)

    def dead_letter(self, rule, dead_id):
        d = self.store.read(_select, _ONE_DEAD, (rule, dead_id), _dead_letter)
        return d.addCallback(lambda found: found[0] if found else None)


def _read_state(connection) -> WebhookState:
    rules = []
    for name, text in connection.execute("SELECT name, rule FROM webhook_rules"):
        try:
            rules.append(parse_rule(json.loads(text)))
        except (ValueError, RuleError) as e:
            raise StoreError(f"the stored webhook rule {name!r} is unusable: {e}") from None
    (last,) = connection.execute(
        "SELECT max(id) FROM (SELECT max(id) AS id FROM webhook_outbox"
        " UNION ALL SELECT max(id) FROM webhook_dead)").fetchone()
    pending = dict(connection.execute("SELECT rule, count(*) FROM webhook_outbox GROUP BY rule"))
    dead = dict(connection.execute("SELECT rule, count(*) FROM webhook_dead GROUP BY rule"))
    return WebhookState(rules, last or 0, pending, dead)


def _row(d: Delivery) -> tuple:
    return (d.id, d.rule, d.topic, d.payload, d.qos, int(d.retain), d.key,
            d.timestamp, d.queued_at, repr(d.properties) if d.properties else None)


def _select(connection, sql, parameters, make):
    """In the writer thread: outside a transaction, reads see committed rows."""
    return [make(row) for row in connection.execute(sql, parameters)]


def _delivery(row) -> Delivery:
    id, rule, topic, payload, qos, retain, key, timestamp, queued_at, text = row
    properties = ast.literal_eval(text) if text else None
    interval = properties.get("message_expiry_interval") if properties else None
    return Delivery(id, rule, topic, bytes(payload), qos, bool(retain), key, timestamp,
                    queued_at, durable=True, properties=properties,
                    expires_at=None if interval is None else timestamp + interval)


def _dead_letter(row) -> DeadLetter:
    delivery = _delivery(row[:10])
    delivery.durable = False
    return DeadLetter(delivery, row[10], row[11], row[12])


registerAdapter(SQLiteWebhookStore, SQLiteStore, IWebhookStore)
