"""MQTT 5 subscriptions: options (No Local, Retain As Published, Retain
Handling), Subscription Identifiers, and the reason codes of SUBACK and
UNSUBACK. The options live with the session (`reactorapp.mqtt.suboptions`),
not in the hub's topic tree, and survive a restart with the session."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from reactorapp.hub.hub import Hub
from reactorapp.hub.message import Message
from reactorapp.mqtt.session import MQTTSettings, Session, restore_sessions
from reactorapp.mqtt.suboptions import Options, OptionTable
from tests.test_store import Stores, durable


def test_options_bits_round_trip():
    """The Subscription Options byte of section 3.8.3.1, without the QoS."""
    for options in (Options(), Options(no_local=True), Options(retain_as_published=True),
                    Options(retain_handling=2, identifier=7),
                    Options(True, True, 1, 268_435_455)):
        assert Options.from_bits(options.bits, options.identifier) == options
    assert Options(True, True, 2).bits == 0x04 | 0x08 | 0x20


def test_routing_gathers_every_matching_subscription():
    """[MQTT-3.3.4-3]: overlapping subscriptions give one delivery with all
    their identifiers; a default subscription still delivers the client's
    own messages [MQTT-3.8.3-3]."""
    subscriptions = {"a/#": 1, "a/+": 0, "a/b": 2, "other": 1}
    table = OptionTable(subscriptions)
    table.set("a/#", Options(identifier=5))
    table.set("a/+", Options(no_local=True, identifier=2))
    table.set("other", Options(identifier=9))
    routing = table.routing("a/b")
    assert routing.identifiers == (2, 5) and routing.own and not routing.as_published
    table.set("a/b", Options(no_local=True, retain_as_published=True))
    table.set("a/#", Options(no_local=True, identifier=5))
    routing = table.routing("a/b")
    assert routing.identifiers == (2, 5) and not routing.own and routing.as_published
    assert table.routing("x").identifiers == ()


def test_sessions_without_options_have_no_table():
    """Only sessions that use options pay for them on delivery."""
    hub = Hub(Clock())
    session = Session("c", False, hub, MQTTSettings())
    session.subscribe("a", 1)
    session.subscribe("b", 1, Options(retain_handling=2))
    assert session.options is None
    session.subscribe("c", 1, Options(identifier=3))
    assert session.options is not None
    session.unsubscribe("c")
    assert session.options is None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest_twisted.ensureDeferred
async def test_options_and_identifiers_survive_a_restart(kind, tmp_path):
    """A persistent session keeps its subscriptions' options and identifiers
    in the store; restored, its deliveries look as before."""
    stores = Stores(kind, tmp_path)
    store, _ = stores.open()
    hub = Hub(Clock(), store=store)
    session = Session("c", True, hub, MQTTSettings())
    session.subscribe("a/#", 1, Options(no_local=True, identifier=11))
    session.subscribe("a/b", 0, Options(retain_as_published=True, retain_handling=1))
    session.subscribe("plain", 1)
    await durable(store)
    _, state = await stores.reopen()
    try:
        (stored,) = state.sessions
        assert stored.subscriptions == {"a/#": 1, "a/b": 0, "plain": 1}
        assert stored.options == {"a/#": (0x04, 11), "a/b": (0x08 | 0x10, 0)}
        again = Hub(Clock(), store=stores.current)
        restore_sessions(again, [stored], MQTTSettings())
        routing = again.get_session("c").options.routing("a/b")
        assert routing.identifiers == (11,) and routing.as_published and routing.own
    finally:
        await stores.close()


def test_no_local_keeps_a_clients_own_messages_from_it():
    """[MQTT-3.8.3-3]: on a No Local subscription the client does not get
    what it published; other clients' messages arrive."""
    hub = Hub(Clock())
    session = Session("me", False, hub, MQTTSettings())
    sent = []

    class Connection:
        writable = True

        def send_publish0(self, message, retained):
            sent.append(message.payload)

    session.attach(Connection())
    session.subscribe("t", 0, Options(no_local=True))
    hub.publish(Message("t", b"mine", sender="me"))
    hub.publish(Message("t", b"theirs", sender="other"))
    assert sent == [b"theirs"]
    session.subscribe("#", 0)  # an overlapping subscription without No Local
    hub.publish(Message("t", b"mine again", sender="me"))
    assert sent == [b"theirs", b"mine again"]
