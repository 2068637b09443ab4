"""A 5.0 and a 3.1.1 client on the same topic get the same messages; what
3.1.1 cannot carry (properties) is left out on the way to it. And one wire
form per message and protocol level, shared by every subscriber that needs
nothing of its own."""

from __future__ import annotations

from reactorapp.mqtt import packets as P
from tests.mqtt5_harness import Broker, connect5


def test_both_levels_get_the_same_messages():
    """Same topics, payloads, QoS and order; the 3.1.1 subscriber's
    PUBLISHes have no properties (its wire format has no room for them)."""
    broker = Broker()
    old = broker.connect("old")
    old.subscribe(("m/#", 2))
    new = connect5(broker, "new")
    new.subscribe(("m/#", 2))
    pub5 = connect5(broker, "pub5")
    pub3 = broker.connect("pub3")
    for i in range(3):
        pub5.publish("m/5", b"five %d" % i, i, content_type="text/plain",
                     user_property=[("i", str(i))], message_expiry_interval=100)
        pub3.publish("m/3", b"three %d" % i, i)
    got_old = [(p.topic, p.payload, p.qos) for p in old.take() if p.type == "PUBLISH"]
    got_new = [p for p in new.take() if type(p) is P.Publish]
    assert got_old == [(p.topic, p.payload, p.qos) for p in got_new]
    assert len(got_old) == 6
    assert [p.properties for p in got_new if p.topic == "m/3"] == [{}] * 3
    assert [p.properties["user_property"] for p in got_new if p.topic == "m/5"] == [
        [("i", "0")], [("i", "1")], [("i", "2")]]


def test_a_message_is_encoded_once_per_level():
    """`Message.encoded`: three subscribers at each level, one encoding per
    level (the 3.1.1 ones under their old keys, the 5.0 ones under keys that
    start with 5); a 5.0 subscriber with a Subscription Identifier gets its
    own packet and leaves the shared ones alone."""
    broker = Broker()
    olds = [broker.connect("old%d" % i) for i in range(3)]
    news = [connect5(broker, "new%d" % i) for i in range(3)]
    for client in olds + news:
        client.subscribe(("c/#", 1))
    special = connect5(broker, "special")
    special.subscribe(("c/#", 1), identifier=3)
    captured = []
    route = broker.hub.route
    broker.hub.route = lambda message: captured.append(message) or route(message)
    pub = connect5(broker, "pub")
    pub.publish("c/x", b"payload", 1, content_type="text/plain")
    (message,) = captured
    keys = set(message.encoded)
    assert keys == {(1, False), (5, 1, False, None), (5, "properties", None)}
    bodies = {bytes(c.transport.value()) for c in news}
    assert len(bodies) == 1  # same bytes, same packet id 1 for each
    (mine,) = [p for p in special.take() if type(p) is P.Publish]
    assert mine.properties == {"subscription_identifier": [3], "content_type": "text/plain"}
