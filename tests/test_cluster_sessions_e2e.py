"""Persistent sessions that move between ``twistd -n reactorapp --cluster``
nodes, with their queued QoS 1 messages, and a node killed with SIGKILL."""

from __future__ import annotations

import pytest

from reactorapp.cluster.blocking import BlockingRedis
from tests.redisserver import REDIS_SERVER
from tests.test_cluster_e2e import cluster, clients, nodes, sees_filters, until  # noqa: F401

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def queued_in_redis(redis, client_id: str, count: int):
    """The session of ``client_id`` holds ``count`` messages in Redis."""
    def check():
        connection = BlockingRedis("127.0.0.1", redis.port)
        try:
            return int(connection.call(b"HLEN", b"reactorapp:q:" + client_id.encode())) == count
        finally:
            connection.close()
    return check


def offline_subscriber(clients, broker, client_id: str, topic_filter: str):
    subscriber = clients(broker, client_id, clean_session=False)
    assert subscriber.subscribe((topic_filter, 1)) == [1]
    subscriber.disconnect()


def test_a_session_moves_to_another_node_with_its_queued_messages(tmp_path, redis, clients):
    with cluster(tmp_path, redis, "a4", "b4") as (a, b):
        offline_subscriber(clients, a, "mover", "m/#")
        until(sees_filters(b, "a4", 1), "b4 to learn a4's filter")
        publisher = clients(b, "pub-m")
        for i in range(5):
            publisher.publish_and_wait("m/x", b"queued %d" % i, 1)
        until(queued_in_redis(redis, "mover", 5), "the queued messages in Redis")

        moved = clients(b, "mover", clean_session=False)
        assert moved.session_present
        got = moved.take(5)
        assert [(m.payload, m.qos) for m in got] == [(b"queued %d" % i, 1) for i in range(5)]
        # b4 holds the session now: a message published on a4 reaches it once.
        until(sees_filters(a, "b4", 1), "a4 to learn that b4 has the filter now")
        clients(a, "pub-m2").publish_and_wait("m/x", b"after the move", 1)
        assert moved.until("m/x", b"after the move") == []
        moved.publish_and_wait("m/x", b"marker", 1)  # to itself, after anything else
        assert moved.until("m/x", b"marker") == []


def test_a_killed_nodes_client_resumes_on_another_node(tmp_path, redis, clients):
    """SIGKILL the node holding an offline persistent session: its client
    connects to the other node and gets every message acknowledged for it."""
    with cluster(tmp_path, redis, "a5", "b5") as (a, b):
        offline_subscriber(clients, a, "survivor", "k/#")
        until(sees_filters(b, "a5", 1), "b5 to learn a5's filter")
        publisher = clients(b, "pub-k")
        for i in range(5):
            publisher.publish_and_wait("k/x", b"kept %d" % i, 1)
        until(queued_in_redis(redis, "survivor", 5), "the queued messages in Redis")
        a.kill()
        until(lambda: "a5" not in nodes(b), "a5 to leave the node list")

        resumed = clients(b, "survivor", clean_session=False)
        assert resumed.session_present
        assert [m.payload for m in resumed.take(5)] == [b"kept %d" % i for i in range(5)]
        publisher.publish_and_wait("k/x", b"live", 1)
        assert resumed.next().payload == b"live"


def test_messages_left_in_the_old_nodes_stream_follow_a_session_that_moved(
        tmp_path, redis, clients):
    """Node a's stream reader is held (a subscriber on a that does not read)
    while QoS 1 messages for an offline persistent session on a are
    acknowledged by b (in a's stream, unread). The session's client then
    connects to b, and a lets the session go before it reads them. Once a
    reads on, they reach the session on b: nothing acknowledged is lost."""
    from tests.blast import TOPIC, Publisher
    from tests.test_cluster_e2e import metric
    from tests.rawmqtt import RawClient

    with cluster(tmp_path, redis, "a6", "b6",
                 extra=("--slow-subscriber-timeout", "120")) as (a, b):
        offline_subscriber(clients, a, "wanderer", "w/#")
        reader = RawClient(a.host, a.port, rcvbuf=4096)
        reader.connect("stuck-reader")
        assert reader.subscribe((TOPIC.decode(), 0)) == [0]
        until(sees_filters(b, "a6", 2), "b6 to learn a6's filters")
        flood = Publisher(b.host, b.port, 0, 60_000)
        flood.start()
        try:
            until(lambda: metric(b, "reactorapp_inputs_held_total") > 0,
                  "a6 to fall behind (b6 holds its publisher back)", timeout=30)
            for i in range(3):  # one publisher each: b6 holds each after its message
                clients(b, f"pub-w{i}").publish_and_wait("w/x", b"waiting %d" % i, 1)

            connection = BlockingRedis("127.0.0.1", redis.port)
            try:  # the window: they wait, unread, in a6's stream
                assert int(connection.call(b"XLEN", b"reactorapp:stream:a6")) > 0
            finally:
                connection.close()
            moved = clients(b, "wanderer", clean_session=False)
            assert moved.session_present
            until(sees_filters(b, "a6", 1), "a6 to let the session go")
        finally:
            reader.close()  # a6 reads its stream on
            flood.close()
            flood.join(60)
        got = sorted(m.payload for m in moved.take(3))
        assert got == [b"waiting %d" % i for i in range(3)]
