"""A webhook store in memory: for tests and for hubs that keep no state.

``IWebhookStore(store)`` gives one for any `IStore` that has no webhook
tables of its own (an adapter; `reactorapp.webhooks.sqlitestore` registers
the SQLite one).
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.python.components import registerAdapter
from zope.interface import implementer

from reactorapp.store.interfaces import IStore
from reactorapp.webhooks.delivery import WebhookState
from reactorapp.webhooks.interfaces import IWebhookStore


class WebhookTables:
    """The data of a `MemoryWebhookStore`; hand it to a new one to "reopen" it."""

    def __init__(self) -> None:
        self.rules: dict[str, object] = {}
        self.outbox: dict[int, object] = {}
        self.dead: dict[int, object] = {}


@implementer(IWebhookStore)
class MemoryWebhookStore:
    """Dictionaries. With the hub's store given, writes count in its
    ``writes`` and `sync` is its `sync`."""

    durable = False

    def __init__(self, store=None, tables: WebhookTables | None = None) -> None:
        self.store = store
        self.tables = tables if tables is not None else WebhookTables()
        self.writes = 0

    def _wrote(self) -> None:
        self.writes += 1
        if self.store is not None:
            self.store.writes += 1

    def load(self) -> WebhookState:
        tables = self.tables
        counts: dict[str, int] = {}
        for delivery in tables.outbox.values():
            counts[delivery.rule] = counts.get(delivery.rule, 0) + 1
        dead: dict[str, int] = {}
        for letter in tables.dead.values():
            dead[letter.delivery.rule] = dead.get(letter.delivery.rule, 0) + 1
        last = max([*tables.outbox, *tables.dead], default=0)
        return WebhookState(list(tables.rules.values()), last, counts, dead)

    # -- writes -------------------------------------------------------------

    def save_rule(self, rule) -> None:
        self._wrote()
        self.tables.rules[rule.name] = rule

    def delete_rule(self, name) -> None:
        self._wrote()
        tables = self.tables
        tables.rules.pop(name, None)
        for key in [k for k, d in tables.outbox.items() if d.rule == name]:
            del tables.outbox[key]
        for key in [k for k, d in tables.dead.items() if d.delivery.rule == name]:
            del tables.dead[key]

    def add(self, delivery) -> None:
        self._wrote()
        self.tables.outbox[delivery.id] = delivery

    def remove(self, delivery_id) -> None:
        self._wrote()
        self.tables.outbox.pop(delivery_id, None)

    def bury(self, dead_letter) -> None:
        self._wrote()
        self.tables.outbox.pop(dead_letter.id, None)
        self.tables.dead[dead_letter.id] = dead_letter

    def forget_dead(self, rule, count) -> None:
        dead = self.tables.dead
        for key in sorted(k for k, d in dead.items() if d.delivery.rule == rule)[:count]:
            del dead[key]
        self._wrote()

    def revive(self, dead_id, delivery) -> None:
        self._wrote()
        self.tables.dead.pop(dead_id, None)
        self.tables.outbox[delivery.id] = delivery

    def pending_commit(self):
        return self.store.pending_commit() if self.store is not None else None

    def sync(self):
        return self.store.sync() if self.store is not None else None

    # -- reads --------------------------------------------------------------

    def pending(self, rule, after_id, limit):
        outbox = self.tables.outbox
        found = sorted(i for i, d in outbox.items() if d.rule == rule and i > after_id)
        return succeed([outbox[i] for i in found[:limit]])

    def dead_letters(self, rule, after_id, limit):
        dead = self.tables.dead
        found = sorted(i for i, d in dead.items() if d.delivery.rule == rule and i > after_id)
        return succeed([dead[i] for i in found[:limit]])

    def dead_letter(self, rule, dead_id):
        found = self.tables.dead.get(dead_id)
        return succeed(found if found is not None and found.delivery.rule == rule else None)


registerAdapter(MemoryWebhookStore, IStore, IWebhookStore)
