"""What an acknowledgement waits for: the value subscribers return and the
hub combines (`ISubscriber.deliver`, `Hub.route`), not a guess from the
store's counters."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from reactorapp.hub.commit import Commit
from reactorapp.hub.hub import Hub
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.message import Message
from reactorapp.store.memory import MemoryStore


@implementer(ISubscriber)
class Returns:
    """A subscriber that answers each delivery with the next of ``answers``."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.taken = []

    def deliver(self, message, qos, retained):
        self.taken.append((message.payload, qos))
        return self.answers.pop(0) if self.answers else None


class CountingStore(MemoryStore):
    """A store whose writes the hub must not read as "wait for me"."""

    def __init__(self) -> None:
        super().__init__()
        self.commit = Commit()

    def pending_commit(self):
        return self.commit


def hub_with(*subscribers, store=None) -> Hub:
    hub = Hub(Clock(), store=store)
    for subscriber in subscribers:
        hub.subscribe(subscriber, "t/#", 2)
    return hub


def test_placed_at_once_when_nobody_wrote():
    store = CountingStore()
    store.writes = 10  # changed behind the hub's back: not a reason to wait
    assert hub_with(Returns(None), store=store).route(Message("t/a", b"x", 1)) is None


def test_the_commit_a_subscriber_returns_is_what_the_publisher_waits_for():
    commit = Commit()
    hub = hub_with(Returns(commit), Returns(None), Returns(commit))
    assert hub.route(Message("t/a", b"x", 1)) is commit


def test_two_batches_and_a_full_subscriber_are_waited_for_together():
    first, second, full = Commit(), Commit(), Deferred()
    hub = hub_with(Returns(first), Returns(second), Returns(full))
    placed = hub.route(Message("t/a", b"x", 2))
    assert isinstance(placed, Commit) and placed is not first and placed is not second
    first.fire()
    second.fire()
    assert not placed.done
    full.callback(None)
    assert placed.done and placed.failure is None


def test_a_failed_commit_fails_the_placement():
    commit, failures = Commit(), []
    hub_with(Returns(commit), Returns(Deferred())).route(Message("t/a", b"x", 1)).add(
        failures.append)
    commit.fire(Failure(OSError("disk full")))
    assert failures and failures[0].value.subFailure.check(OSError)  # gatherResults


def test_a_retained_qos1_message_waits_for_the_store_qos0_does_not():
    store = CountingStore()
    hub = hub_with(store=store)
    assert hub.route(Message("t/r", b"x", 1, True)) is store.commit
    assert hub.route(Message("t/r", b"y", 0, True)) is None
    assert hub.route(Message("$SYS/x", b"y", 1, True)) is None


def test_publish_turns_the_commit_into_one_deferred():
    commit = Commit()
    hub = hub_with(Returns(commit))
    results = []
    hub.publish(Message("t/a", b"x", 1)).addCallback(results.append)
    assert results == []
    commit.fire()
    assert results == [None]
    assert hub_with(Returns(None)).publish(Message("t/a", b"x", 1)) is None


def test_commit_after_a_deferred():
    d = Deferred()
    commit = Commit.after(d)
    assert not commit.done
    d.errback(Failure(RuntimeError("no room")))
    assert commit.done and commit.failure.check(RuntimeError)


def test_feature_tables_are_chosen_by_adaptation(tmp_path):
    """A feature's tables live with the feature; the hub's store picks them
    by adaptation, not by an isinstance test in the wiring."""
    from reactorapp.store.sqlite import SQLiteStore
    from reactorapp.web.stream_tables import (
        IStreamTables, MemoryStreamTables, SQLiteStreamTables,
    )
    from reactorapp.webhooks.service import store_for
    from reactorapp.webhooks.memorystore import MemoryWebhookStore
    from reactorapp.webhooks.sqlitestore import SQLiteWebhookStore

    sqlite = SQLiteStore(str(tmp_path), Clock())
    memory = MemoryStore()
    assert type(store_for(sqlite)) is SQLiteWebhookStore and store_for(sqlite).store is sqlite
    assert type(store_for(memory)) is MemoryWebhookStore and store_for(memory).store is memory
    assert type(IStreamTables(sqlite)) is SQLiteStreamTables
    assert type(IStreamTables(memory)) is MemoryStreamTables


def test_every_hub_provides_all_that_its_callers_use():
    """IHub declares what front ends, sessions and the service use (stats,
    clock, store, flow, the session registry...), and each implementation
    has it all."""
    from zope.interface.verify import verifyObject

    from reactorapp.hub.interfaces import IHub
    from reactorapp.testing import MemoryHub, RecordingHub

    for hub in (Hub(Clock()), Hub(Clock(), store=MemoryStore()), RecordingHub(Clock()),
                MemoryHub().hub):
        assert verifyObject(IHub, hub)
    names = set(IHub.names())
    assert {"stats", "clock", "store", "flow", "get_session", "add_session", "remove_session",
            "session_count", "unsubscribe_all", "restore_retained"} <= names


def test_callers_use_only_what_ihub_declares():
    """Every ``hub.NAME`` (or ``self.hub.NAME``) outside hub/ is declared in
    IHub. (HubClient's users, protocols/ and testing.py, hold a client
    named ``hub``, not the hub, and are left out.)"""
    import ast
    from pathlib import Path

    import reactorapp
    from reactorapp.hub.interfaces import IHub

    root = Path(reactorapp.__file__).resolve().parent
    clients = {root / "protocols" / "__init__.py", root / "testing.py", root / "api.py"}
    declared = set(IHub.names())
    undeclared = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] == "hub" or path in clients:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            if ((isinstance(base, ast.Name) and base.id == "hub")
                    or (isinstance(base, ast.Attribute) and base.attr == "hub")):
                if node.attr not in declared:
                    undeclared.append(f"{path.relative_to(root)}:{node.lineno} hub.{node.attr}")
    assert undeclared == []


def test_a_message_equals_only_itself_as_its_hash_says():
    a, b = Message("t", b"x"), Message("t", b"x")
    assert a == a and a != b and len({a, b}) == 2


def test_one_rule_for_topics_clients_may_publish_to():
    """$SYS is the broker's: refused by the extension API and HTTP (one
    check, `validate_publish_topic`); MQTT acknowledges and drops."""
    import pytest

    from reactorapp.hub.topics import InvalidTopic, is_broker_topic, validate_publish_topic

    assert is_broker_topic("$SYS/broker/uptime") and not is_broker_topic("sys/x")
    with pytest.raises(InvalidTopic, match=r"\$SYS belong to the broker"):
        validate_publish_topic("$SYS/x")
    with pytest.raises(InvalidTopic, match="wildcard"):
        validate_publish_topic("a/+")
    validate_publish_topic("a/b")
