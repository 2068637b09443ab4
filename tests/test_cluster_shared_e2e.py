"""A shared subscription with members on two ``twistd -n reactorapp
--cluster`` nodes and a real redis-server: each message goes to one member
of the group in the whole cluster, and plain subscribers on every node
still get everything. Nothing sleeps: each client's share is what it got
before markers that travel the same way as the messages."""

from __future__ import annotations

import pytest

from tests.redisserver import REDIS_SERVER
from tests.test_cluster_e2e import clients, cluster, sees_filters, until  # noqa: F401

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

N = 30
FILTERS = (("$share/workers/jobs/#", 1), ("mark/#", 1))


def before_markers(client, markers: set[str]) -> list:
    """What ``client`` got before it saw a message on each topic in
    ``markers``. A node handles one publisher's messages in order, on its
    own and through the other node's stream, so a marker published after
    the messages proves that any copy of them has arrived before it."""
    waiting = set(markers)
    got = []
    while waiting:
        message = client.next()
        if message.topic in waiting:
            waiting.discard(message.topic)
        else:
            got.append(message)
    return got


def test_a_group_with_members_on_two_nodes_gets_each_message_once(tmp_path, redis, clients):
    with cluster(tmp_path, redis, "sa", "sb") as (a, b):
        members = [clients(a, "worker-a1"), clients(b, "worker-b1"), clients(b, "worker-b2")]
        for member in members:
            assert member.subscribe(*FILTERS) == [1, 1]
        watchers = [clients(a, "watch-a"), clients(b, "watch-b")]
        for watcher in watchers:
            assert watcher.subscribe(("jobs/#", 1), ("mark/#", 1)) == [1, 1]
        # Each node knows the other's three filters: the group, jobs/#, mark/#.
        until(sees_filters(a, "sb", 3), "sa to learn sb's filters")
        until(sees_filters(b, "sa", 3), "sb to learn sa's filters")

        sent = []
        for broker, name in ((a, "a"), (b, "b")):
            publisher = clients(broker, f"pub-{name}")
            for i in range(N):
                payload = b"%s-%d" % (name.encode(), i)
                publisher.publish(f"jobs/{name}", payload, 1)
                sent.append(payload)
            publisher.publish_and_wait(f"mark/{name}", b"end", 1)
        markers = {"mark/a", "mark/b"}

        shares = [[m.payload for m in before_markers(member, markers)] for member in members]
        taken = [payload for share in shares for payload in share]
        assert sorted(taken) == sorted(sent), "each message once to the group"
        assert all(shares), f"every member had a turn: {[len(s) for s in shares]}"
        # The members on node b got messages published on both nodes.
        assert {p[:1] for p in shares[1] + shares[2]} == {b"a", b"b"}

        for watcher in watchers:
            got = [m.payload for m in before_markers(watcher, markers)]
            for name in (b"a", b"b"):
                assert [p for p in got if p[:1] == name] == [
                    b"%s-%d" % (name, i) for i in range(N)]
            assert len(got) == 2 * N
        for client in members + watchers:
            client.assert_nothing_pending()
