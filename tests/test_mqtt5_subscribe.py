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
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.session import MQTTSettings, Session, restore_sessions
from reactorapp.mqtt.suboptions import Options, OptionTable
from tests.mqtt5_harness import Broker, connect5
from tests.test_store import durable, stores  # noqa: F401 (a fixture)


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


@pytest_twisted.ensureDeferred
async def test_options_and_identifiers_survive_a_restart(stores):
    """A persistent session keeps its subscriptions' options and identifiers
    in the store (memory, SQLite, Redis); restored, its deliveries look as before."""
    store, _ = await stores.open()
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


# -- on the wire -----------------------------------------------------------------

def test_no_local_on_the_wire():
    """[MQTT-3.8.3-3]: a client subscribed with No Local does not get its
    own PUBLISH; another client on the same filter does."""
    broker = Broker()
    me = connect5(broker, "me")
    other = connect5(broker, "other")
    me.subscribe(P.SubscriptionRequest("chat/#", 1, no_local=True))
    other.subscribe(("chat/#", 1))
    me.publish("chat/room", b"hello", 1)
    assert [type(p) for p in me.take()] == [P.PubAck]
    assert [p.payload for p in other.take()] == [b"hello"]
    other.publish("chat/room", b"hi back", 1)
    assert [p.payload for p in me.take() if type(p) is P.Publish] == [b"hi back"]


def test_retain_as_published_keeps_the_flag_on_live_messages():
    """[MQTT-3.3.1-12]: without it a live message goes out with RETAIN 0;
    [MQTT-3.3.1-13]: with it, with the publisher's flag."""
    broker = Broker()
    kept = connect5(broker, "kept")
    plain = connect5(broker, "plain")
    kept.subscribe(P.SubscriptionRequest("s/#", 0, retain_as_published=True))
    plain.subscribe(("s/#", 0))
    pub = connect5(broker, "pub")
    pub.publish("s/1", b"r", retain=True)
    pub.publish("s/2", b"n")
    assert [(p.payload, p.retain) for p in kept.take()] == [(b"r", True), (b"n", False)]
    assert [(p.payload, p.retain) for p in plain.take()] == [(b"r", False), (b"n", False)]


@pytest.mark.parametrize("handling, first, again", [(0, 1, 1), (1, 1, 0), (2, 0, 0)])
def test_retain_handling(handling, first, again):
    """[MQTT-3.3.1-9] 0: retained messages at every SUBSCRIBE;
    [MQTT-3.3.1-10] 1: only when the subscription is new;
    [MQTT-3.3.1-11] 2: never. They carry RETAIN 1 (§3.3.1.3)."""
    broker = Broker()
    pub = connect5(broker, "pub")
    pub.publish("r/t", b"kept", 1, retain=True)
    sub = connect5(broker, "sub")
    request = P.SubscriptionRequest("r/#", 1, retain_handling=handling)
    _, sent = sub.subscribe(request)
    assert [(p.payload, p.retain) for p in sent] == [(b"kept", True)] * first
    _, sent = sub.subscribe(request)  # the same filter again: not new
    assert [(p.payload, p.retain) for p in sent] == [(b"kept", True)] * again


def test_overlapping_subscriptions_get_one_publish_with_every_identifier():
    """[MQTT-3.3.4-3] [MQTT-3.3.4-4]: one copy for overlapping subscriptions,
    carrying the identifiers of all that match (Mosquitto sends a copy per
    subscription); at the highest QoS granted among them [MQTT-3.3.4-2]."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("home/#", 0), identifier=1)
    sub.subscribe(("home/+/temp", 1), identifier=2)
    sub.subscribe(("home/kitchen/temp", 1))  # no identifier
    pub = connect5(broker, "pub")
    pub.publish("home/kitchen/temp", b"21", 1)
    pub.publish("home/kitchen/light", b"on", 1)
    first, second = [p for p in sub.take() if type(p) is P.Publish]
    assert first.payload == b"21" and first.qos == 1
    assert sorted(first.properties["subscription_identifier"]) == [1, 2]
    assert second.properties["subscription_identifier"] == [1]
    sub.send(P.Unsubscribe(sub.packet_id(), ["home/#"]))
    sub.take()
    pub.publish("home/kitchen/temp", b"22", 1)
    (third,) = [p for p in sub.take() if type(p) is P.Publish]
    assert third.properties["subscription_identifier"] == [2]


def test_a_replaced_subscription_takes_its_new_identifier():
    """[MQTT-3.8.4-3]: the same filter again replaces the subscription,
    options and identifier included."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("x", 0), identifier=7)
    sub.subscribe(("x", 0), identifier=8)
    pub = connect5(broker, "pub")
    pub.publish("x", b"1")
    (p,) = sub.take()
    assert p.properties["subscription_identifier"] == [8]
    sub.subscribe(("x", 0))
    pub.publish("x", b"2")
    (p,) = sub.take()
    assert "subscription_identifier" not in p.properties


def test_retained_messages_carry_the_identifier_of_the_new_subscription():
    broker = Broker()
    pub = connect5(broker, "pub")
    pub.publish("r/t", b"kept", 0, retain=True)
    sub = connect5(broker, "sub")
    _, (retained,) = sub.subscribe(("r/#", 0), identifier=99)
    assert retained.properties["subscription_identifier"] == [99]


def test_suback_reason_codes():
    """[MQTT-3.9.3-1] [MQTT-3.9.3-2]: one code per filter, in order: the QoS
    granted, 0x8F for an invalid filter, 0x97 past the subscription quota."""
    broker = Broker(max_subscriptions=2)
    sub = connect5(broker, "sub")
    codes, _ = sub.subscribe(("a/#", 2), ("bad/#/x", 1), ("b", 1), ("c", 0))
    assert codes == [2, 0x8F, 1, 0x97]


def test_suback_says_not_authorized():
    """§3.9.3: a filter the ACL refuses gets 0x87 Not authorized."""
    from reactorapp.auth.acl import ACL, ACLAuthorizer
    from reactorapp.auth.guard import Guard

    broker = Broker()
    broker.factory.guard = Guard(authorizer=ACLAuthorizer(ACL.parse("topic readwrite open/#\n")))
    sub = connect5(broker, "sub")
    codes, _ = sub.subscribe(("open/x", 1), ("closed/x", 1))
    assert codes == [1, 0x87]


def test_unsuback_reason_codes():
    """[MQTT-3.11.3-1] [MQTT-3.11.3-2]: 0x00 for a removed subscription, 0x11
    No subscription existed, 0x8F for a filter that cannot exist."""
    broker = Broker()
    sub = connect5(broker, "sub")
    sub.subscribe(("a", 0))
    sub.send(P.Unsubscribe(9, ["a", "b", "a/#/b"]))
    (unsuback,) = sub.take()
    assert (unsuback.packet_id, unsuback.reason_codes) == (9, [0, 0x11, 0x8F])
