"""The webhook service: rules from the config file and the store, the
outbox resumed at start-up, and what the HTTP API asks of them.

Rules from the config file are read-only through the API; rules made through
the API are kept in the store. Should both name the same rule, the config
file's wins (and a warning says so).
"""

from __future__ import annotations

import random

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from reactorapp.webhooks import memorystore, sqlitestore  # noqa: F401 (the adapters)
from reactorapp.webhooks.dispatcher import Dispatcher, make_client
from reactorapp.webhooks.interfaces import IWebhookStore
from reactorapp.webhooks.metrics import WebhookMetrics
from reactorapp.webhooks.outbox import Outbox

log = Logger()

#: Dead letters moved back to the outbox per store read by "retry all".
RETRY_PAGE = 500


def store_for(store):
    """The webhook store that rides on the hub's store (same batches, same
    `sync`): the SQLite database, or memory, chosen by adaptation."""
    return IWebhookStore(store)


class UnknownRule(LookupError):
    """No rule has that name; the message is one sentence."""


class RuleConflict(Exception):
    """The change clashes with an existing rule; the message is one sentence."""


class WebhookService(Service):
    """Runs the outbox for every rule and manages the rules."""

    name = "webhooks"

    def __init__(self, hub, store, reactor, *, rules=(), registry=None,
                 queue_size: int = 1000, max_dead_letters: int = 0, client=None,
                 clock=None, jitter=random.random) -> None:
        self.hub = hub
        self.store = store
        self.config_rules = {rule.name: rule for rule in rules}
        self.metrics = WebhookMetrics(registry)
        self.queue_size = queue_size
        self.max_dead_letters = max_dead_letters
        #: Dead letters in the store, by rule, for rules not served yet.
        self._dead: dict[str, int] = {}
        self.outbox: Outbox | None = None
        #: Pending deliveries in the store for rules that no longer exist.
        self._orphans: dict[str, int] = {}
        #: Looks at the rules of a store shared with other nodes, or None.
        self._watch = None
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._client = client
        self._pool = None
        self._jitter = jitter

    def startService(self):
        super().startService()
        state = self.store.load()
        if self._client is None:
            self._client, self._pool = make_client(self._reactor)
        dispatcher = Dispatcher(self._clock, self._client, jitter=self._jitter)
        self.outbox = outbox = Outbox(
            self.hub, self.store, dispatcher, self._clock, self.metrics,
            queue_size=self.queue_size, last_id=state.last_id,
            max_dead_letters=self.max_dead_letters)
        pending = dict(state.pending)
        self._dead = dict(state.dead)
        for rule in self.config_rules.values():
            outbox.add_rule(rule, pending.pop(rule.name, 0), self._dead.pop(rule.name, 0))
        for rule in state.rules:
            if rule.name in self.config_rules:
                log.warn("Webhook {rule} is in the config file and in the store;"
                         " the config file's rule is used", rule=rule.name)
                continue
            outbox.add_rule(rule, pending.pop(rule.name, 0), self._dead.pop(rule.name, 0))
        self._orphans = pending
        for name, count in pending.items():
            log.warn("{count} deliveries for webhook {rule}, which no longer exists, are"
                     " kept until a rule of that name is made again", count=count, rule=name)
        if outbox.rules:
            log.info("Webhooks: {rules} rule(s), {pending} pending deliveries",
                     rules=len(outbox.rules), pending=sum(state.pending.values()))
        watch = getattr(self.store, "watch", None)
        if watch is not None:
            # A store shared by several nodes: rules made on the others.
            self._watch = watch(self.refresh, self._clock)

    def refresh(self, state) -> None:
        """The stored rules changed elsewhere (another node of a cluster):
        serve them as they are now. ``state`` is a fresh `WebhookState`."""
        outbox = self.outbox
        stored = {rule.name: rule for rule in state.rules if rule.name not in self.config_rules}
        for name in [n for n in outbox.rules if n not in self.config_rules and n not in stored]:
            log.info("Webhook {rule} was deleted on another node", rule=name)
            outbox.remove_rule(name)
        for name, rule in stored.items():
            served = outbox.rules.get(name)
            if served is None:
                log.info("Webhook {rule} was made on another node", rule=name)
                outbox.add_rule(rule, state.pending.get(name, 0), state.dead.get(name, 0))
                self._orphans.pop(name, None)
                self._dead.pop(name, None)
            elif served.rule != rule:
                outbox.update_rule(rule)

    def stopService(self):
        """Stop every delivery where it is (durable ones stay in the outbox)
        and close the pooled connections."""
        super().stopService()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        if self.outbox is not None:
            self.outbox.stop()
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return None

    # -- management (the HTTP API) ------------------------------------------

    def rules(self) -> list:
        """Every rule served, by name."""
        return [self.outbox.rules[name].rule for name in sorted(self.outbox.rules)]

    def source(self, name: str) -> str:
        return "config" if name in self.config_rules else "api"

    def rule(self, name: str):
        outbox = self.outbox.rules.get(name)
        if outbox is None:
            raise UnknownRule(f"There is no webhook named {name!r}.")
        return outbox.rule

    def stats(self, name: str) -> dict:
        outbox = self.outbox.rules[name]
        return {"pending": outbox.pending, "in_flight": len(outbox.in_flight),
                "dropped": outbox.dropped}

    def create(self, rule) -> Deferred | None:
        """Add an API rule; the result fires once it is stored."""
        if rule.name in self.outbox.rules:
            raise RuleConflict(f"A webhook named {rule.name!r} exists; PUT replaces it.")
        self.store.save_rule(rule)
        self.outbox.add_rule(rule, self._orphans.pop(rule.name, 0),
                             self._dead.pop(rule.name, 0))
        return self.store.sync()

    def replace(self, rule) -> tuple[bool, Deferred | None]:
        """Create or replace an API rule; say whether it was created."""
        self._refuse_config(rule.name, "changed")
        self.store.save_rule(rule)
        created = rule.name not in self.outbox.rules
        if created:
            self.outbox.add_rule(rule, self._orphans.pop(rule.name, 0),
                                 self._dead.pop(rule.name, 0))
        else:
            self.outbox.update_rule(rule)
        return created, self.store.sync()

    def delete(self, name: str) -> Deferred | None:
        """Remove an API rule, its pending deliveries and its dead letters."""
        self.rule(name)
        self._refuse_config(name, "deleted")
        self.outbox.remove_rule(name)
        return self.store.sync()

    def _refuse_config(self, name: str, what: str) -> None:
        if name in self.config_rules:
            raise RuleConflict(
                f"The webhook {name!r} comes from the config file and cannot be {what}"
                " through the API; edit the file and restart.")

    def dead_letters(self, name: str, after: int, limit: int) -> Deferred:
        self.rule(name)
        return self.store.dead_letters(name, after, limit)

    def retry_dead(self, name: str, dead_id: int) -> Deferred:
        """Send one dead letter again; fire with its new delivery, or None."""
        self.rule(name)
        return Deferred.fromCoroutine(self._retry_dead(name, dead_id))

    async def _retry_dead(self, name, dead_id):
        dead = await self.store.dead_letter(name, dead_id)
        if dead is None or name not in self.outbox.rules:
            return None
        (delivery,) = self.outbox.send_again(name, [dead])
        await _synced(self.store)
        return delivery

    def retry_all_dead(self, name: str) -> Deferred:
        """Send every dead letter of a rule again; fire with how many."""
        self.rule(name)
        return Deferred.fromCoroutine(self._retry_all_dead(name))

    async def _retry_all_dead(self, name):
        # Letters that die again meanwhile get new ids: stop below them.
        last = self.outbox.next_id()
        count = 0
        after = 0
        while name in self.outbox.rules:
            page = [dead for dead in await self.store.dead_letters(name, after, RETRY_PAGE)
                    if dead.id < last]
            if not page or name not in self.outbox.rules:
                break
            after = page[-1].id
            count += len(self.outbox.send_again(name, page))
        await _synced(self.store)
        return count


async def _synced(store) -> None:
    written = store.sync()
    if written is not None:
        await written
