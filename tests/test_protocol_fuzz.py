"""Property tests: whatever bytes a client sends, the protocol only answers
or closes that connection; no exception escapes, and the hub is left
consistent when the client is gone. The codec's own properties are in
test_codec.py; these run the whole server side, with an ACL and limits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reactorapp.auth.acl import ACL, ACLAuthorizer
from reactorapp.auth.guard import Guard
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import encode
from tests.mqtt_harness import Broker

ACL_TEXT = "topic readwrite open/#\ntopic deny open/closed/#\npattern write c/%c/#\n"

topics = st.sampled_from(["open/a", "open/closed/x", "c/fz/t", "other", "$SYS/x"])
client_packets = st.one_of(
    st.builds(lambda t, p, r: P.Publish(t, p, 0, r), topics, st.binary(max_size=50), st.booleans()),
    st.builds(lambda t, q, i: P.Publish(t, b"q", q, packet_id=i),
              topics, st.integers(1, 2), st.integers(1, 5)),
    st.builds(lambda i, f, q: P.Subscribe(i, [P.SubscriptionRequest(f, q)]),
              st.integers(1, 5), st.sampled_from(["open/#", "#", "c/+/t", "open/closed/#"]),
              st.integers(0, 2)),
    st.builds(lambda i: P.Unsubscribe(i, ["open/#"]), st.integers(1, 5)),
    st.builds(P.PubAck, st.integers(1, 5)),
    st.builds(P.PubRec, st.integers(1, 5)),
    st.builds(P.PubRel, st.integers(1, 5)),
    st.builds(P.PubComp, st.integers(1, 5)),
    st.just(P.PingReq()),
)


def _mutated(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for position, value in edits:
        if buf:
            buf[position % len(buf)] = value
    return bytes(buf)


@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(client_packets, max_size=20),
    edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=3),
    garbage=st.binary(max_size=40),
    cuts=st.lists(st.integers(1, 60), max_size=5),
    paused=st.booleans(),
)
def test_any_bytes_after_connect(packets, edits, garbage, cuts, paused):
    """[MQTT-4.8.0-1] errors close only this connection."""
    broker = Broker(max_inflight=2, max_queued_messages=3, max_subscriptions=2,
                    publish_rate=100, publish_burst=3, max_pending_acks=2)
    broker.factory.guard = Guard(authorizer=ACLAuthorizer(ACL.parse(ACL_TEXT)))
    watcher = broker.connect("watcher")
    watcher.subscribe(("open/#", 1))
    client = broker.connect("fz")
    if paused:
        client.protocol.pauseProducing()
    data = _mutated(b"".join(encode(p) for p in packets), edits) + garbage
    for cut in cuts:
        client.send_bytes(data[:cut])
        data = data[cut:]
    client.send_bytes(data)
    client.advance(5)
    client.protocol.resumeProducing()
    client.take()
    client.drop()
    watcher.take()
    assert broker.hub.stats.clients_connected == 1
    assert set(broker.hub.sessions()) == {"watcher"}  # "fz" had a clean session
    assert broker.factory.guard.limiter.total == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=5))
def test_any_bytes_instead_of_connect(data, cuts):
    """[MQTT-3.1.0-1] [MQTT-3.1.4-1] garbage first: closed, nothing kept."""
    broker = Broker()
    client = broker.client()
    for cut in cuts:
        client.send_bytes(data[:cut])
        data = data[cut:]
    client.send_bytes(data)
    client.advance(60)
    client.drop()
    assert broker.hub.stats.clients_connected == 0
    assert not broker.clock.getDelayedCalls()
