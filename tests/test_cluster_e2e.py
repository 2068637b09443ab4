"""Several ``twistd -n reactorapp --cluster`` nodes sharing a real redis-server.

Each test waits on what a user would see: log lines, `/api/v1/cluster`
polled with a deadline, messages with a bounded wait. Nothing sleeps.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager

import pytest

from tests.brokerproc import run_twistd, running_broker
from tests.paho_client import TIMEOUT, PahoClient, Received
from tests.redisserver import REDIS_SERVER, RedisServer, free_port

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

#: Short heartbeats, so a killed node is gone within a second or two.
EXPIRY = "1.5"
#: Seconds between two looks at an endpoint while waiting for a condition.
POLL = 0.05


def get_json(broker, path: str):
    url = f"http://127.0.0.1:{broker.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(broker, name: str) -> float:
    """One sample of ``name`` on ``broker``'s /metrics."""
    url = f"http://127.0.0.1:{broker.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not on /metrics")


def until(check, what: str, timeout: float = TIMEOUT):
    """Poll ``check`` until it returns something true, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        threading.Event().wait(POLL)  # the pause between two looks, under the deadline


def nodes(broker) -> dict:
    status, body = get_json(broker, "/api/v1/cluster")
    return {n["name"]: n for n in body["nodes"]} if status == 200 else {}


def sees_filters(broker, name: str, count: int):
    """``broker`` knows that node ``name`` has ``count`` filters (routing is set up)."""
    return lambda: nodes(broker).get(name, {}).get("filters") == count


@contextmanager
def cluster(tmp_path, redis, *names, extra=()):
    """Start one node per name; yield them once each lists all of them."""
    with ExitStack() as stack:
        brokers = []
        for name in names:
            path = tmp_path / name
            path.mkdir(exist_ok=True)
            brokers.append(stack.enter_context(running_broker(
                path, "--cluster", redis.url, "--node-name", name,
                "--cluster-node-expiry", EXPIRY, "--sys-interval", "0", *extra)))
        for broker in brokers:
            until(lambda: set(names) <= set(nodes(broker)), f"{names} in the node list")
        yield brokers
        for broker in brokers:
            if broker.proc.poll() is None:
                assert "Traceback" not in broker.log, broker.log


@pytest.fixture
def clients():
    made = []

    def connect(broker, client_id: str, clean_session: bool = True, will=None):
        client = PahoClient(broker.host, broker.port, client_id, clean_session, will)
        made.append(client)
        return client.connect()

    yield connect
    for client in made:
        client.close()


def test_two_nodes_list_each_other_and_route_at_each_qos(tmp_path, redis, clients):
    with cluster(tmp_path, redis, "a1", "b1") as (a, b):
        listed = nodes(a)
        assert listed["a1"]["self"] and not listed["b1"]["self"]
        assert listed["b1"]["address"]["mqtt"] == [f"127.0.0.1:{b.port}"]
        subscriber = clients(b, "sub")
        assert subscriber.subscribe(("x/+", 2)) == [2]
        until(sees_filters(a, "b1", 1), "a1 to learn b1's filter")
        publisher = clients(a, "pub")
        for qos in (0, 1, 2):
            publisher.publish_and_wait(f"x/{qos}", b"hello %d" % qos, qos)
        got = sorted(subscriber.take(3), key=lambda m: m.topic)
        assert got == [Received(f"x/{q}", b"hello %d" % q, q, False, False) for q in (0, 1, 2)]
        status, body = get_json(a, "/readyz")
        assert status == 200, body


def test_three_nodes_each_message_reaches_every_node_once_in_order(tmp_path, redis, clients):
    names = ("a3", "b3", "c3")
    with cluster(tmp_path, redis, *names) as brokers:
        subscribers = []
        for broker, name in zip(brokers, names):
            subscriber = clients(broker, f"sub-{name}")
            # Overlapping filters on one node: still once per subscriber.
            assert subscriber.subscribe(("three/#", 1), ("three/+", 1)) == [1, 1]
            subscribers.append(subscriber)
        for broker in brokers:
            for name in names:
                until(sees_filters(broker, name, 2), f"{name}'s filters seen by all")
        publishers = [clients(b, f"pub-{n}") for b, n in zip(brokers, names)]
        for i in range(20):
            for publisher, name in zip(publishers, names):
                publisher.publish(f"three/{name}", b"%d" % i, 1)
        for publisher, name in zip(publishers, names):
            publisher.publish_and_wait(f"three/{name}", b"end", 1)
        for subscriber in subscribers:
            got = subscriber.take(63)
            for name in names:
                payloads = [m.payload for m in got if m.topic == f"three/{name}"]
                assert payloads == [b"%d" % i for i in range(20)] + [b"end"]
            subscriber.assert_nothing_pending()


def test_retained_message_is_seen_from_every_node(tmp_path, redis, clients):
    with cluster(tmp_path, redis, "a4", "b4", "c4") as (a, b, c):
        # No subscriber anywhere: the retained message still reaches every node.
        clients(a, "retainer").publish_and_wait("status/door", b"open", 1, retain=True)
        for broker in (b, c):
            until(lambda: get_json(broker, "/api/v1/retained?filter=status/door")[1],
                  "the retained message on every node")
            late = clients(broker, f"late-{broker.port}")
            late.subscribe(("status/#", 1))
            assert late.next() == Received("status/door", b"open", 1, True, False)


def test_connecting_on_another_node_takes_the_client_id_over(tmp_path, redis, clients):
    """[MQTT-3.1.4-2] across nodes: the first connection closes, its will goes out."""
    with cluster(tmp_path, redis, "a5", "b5") as (a, b):
        watcher = clients(b, "watcher")
        watcher.subscribe(("wills/#", 1))
        until(sees_filters(a, "b5", 1), "a5 to learn the watcher's filter")
        first = clients(a, "roaming", will=("wills/roaming", b"gone", 1, False))
        second = clients(b, "roaming")
        assert first.disconnected.wait(TIMEOUT), "the first connection stayed open"
        assert watcher.next() == Received("wills/roaming", b"gone", 1, False, False)
        assert not second.disconnected.is_set()
        a.wait_for("Client roaming connected to node b5")


def test_a_killed_node_leaves_the_list_and_its_clients_go_elsewhere(tmp_path, redis, clients):
    with cluster(tmp_path, redis, "a6", "b6", "c6") as (a, b, c):
        subscriber = clients(c, "stays")
        subscriber.subscribe(("moved/#", 1))
        until(sees_filters(a, "c6", 1), "a6 to learn c6's filter")
        b.kill()
        until(lambda: set(nodes(a)) == {"a6", "c6"}, "b6 to leave the node list")
        until(lambda: set(nodes(c)) == {"a6", "c6"}, "b6 to leave c6's list")
        # Its clients connect to a node still up, and reach the others.
        clients(a, "was-on-b6").publish_and_wait("moved/1", b"here", 1)
        assert subscriber.next().payload == b"here"


def test_redis_unreachable_at_start_is_one_sentence_and_a_failure(tmp_path):
    port = free_port()
    result = run_twistd(tmp_path, "-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                        "--cluster", f"redis://127.0.0.1:{port}/0", "--data", str(tmp_path))
    assert result.returncode != 0
    assert (f"reactorapp: cannot reach Redis at redis://127.0.0.1:{port}/0 for --cluster:"
            in result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_cluster_url_is_one_sentence(tmp_path):
    result = run_twistd(tmp_path, "-n", "reactorapp", "--cluster", "http://x", "--data",
                        str(tmp_path))
    assert result.returncode != 0
    assert "--cluster 'http://x' must look like redis://HOST:PORT/DB" in result.stderr


def test_redis_restarted_under_load_loses_nothing_acknowledged(tmp_path, clients):
    """Redis stops while a QoS 1 publisher on one node feeds a subscriber on
    another: the nodes stay up, local routing goes on, readiness says why,
    PUBACKs wait, and after the restart every acknowledged message arrives."""
    (tmp_path / "redis").mkdir()
    redis = RedisServer(directory=str(tmp_path / "redis")).start()
    try:
        with cluster(tmp_path, redis, "a7", "b7") as (a, b):
            subscriber = clients(b, "load-sub")
            subscriber.subscribe(("load/#", 1))
            until(sees_filters(a, "b7", 1), "a7 to learn b7's filter")
            local = clients(a, "local-sub")
            local.subscribe(("local/#", 1))
            publisher = clients(a, "load-pub")
            infos = [publisher.publish("load/x", b"%d" % i, 1) for i in range(300)]
            redis.stop()
            a.wait_for("Lost the connection to Redis")
            until(lambda: get_json(a, "/readyz")[0] == 503, "a7 to say it is not ready")
            assert (f"cluster (Redis at redis://127.0.0.1:{redis.port}/0)"
                    in get_json(a, "/readyz")[1]["detail"])
            # Local routing goes on without Redis.
            clients(a, "local-pub").publish_and_wait("local/y", b"alone", 1)
            assert local.next().payload == b"alone"
            more = [publisher.publish("load/x", b"%d" % i, 1) for i in range(300, 400)]
            # Once this arrives, a7 has read all of them (one connection, in
            # order), and none may be acknowledged while Redis is away.
            publisher.publish("local/y", b"after", 0)
            assert local.next().payload == b"after"
            assert not any(info.is_published() for info in more)
            redis.start()
            until(lambda: get_json(a, "/readyz")[0] == 200, "a7 to be ready again")
            until(lambda: get_json(b, "/readyz")[0] == 200, "b7 to be ready again")
            for info in infos + more:
                info.wait_for_publish(TIMEOUT)
            acknowledged = [i for i, info in enumerate(infos + more) if info.is_published()]
            assert acknowledged == list(range(400))
            seen = []
            while len(set(seen)) < 400:
                seen.append(int(subscriber.next().payload))
            # At least once, in order: a batch Redis took just before it
            # stopped may come twice.
            assert sorted(set(seen)) == list(range(400))
            assert [n for i, n in enumerate(seen) if n not in seen[:i]] == list(range(400))
    finally:
        redis.stop()


def test_what_a_killed_node_had_not_handled_reaches_its_persistent_sessions(
        tmp_path, redis, clients):
    """A node stops reading (SIGSTOP), messages for its offline persistent
    session are acknowledged (they are in its stream in Redis), then it is
    killed: a live node takes the session over with those messages, and
    the ones published meanwhile, and the client finds them all there."""
    import os
    import signal

    with cluster(tmp_path, redis, "a8", "b8") as (a, b):
        offline = clients(a, "sleeper", clean_session=False)
        offline.subscribe(("s/#", 1))
        offline.disconnect()
        until(sees_filters(b, "a8", 1), "b8 to learn a8's filter")
        os.kill(a.proc.pid, signal.SIGSTOP)
        publisher = clients(b, "pub-s")
        for i in range(5):
            publisher.publish_and_wait("s/x", b"%d" % i, 1)
        a.kill()
        b.wait_for("Took over 1 session")
        until(lambda: set(nodes(b)) == {"b8"}, "a8 to leave the node list")
        for i in range(5, 8):
            publisher.publish_and_wait("s/x", b"%d" % i, 1)
        back = clients(b, "sleeper", clean_session=False)
        assert back.session_present
        assert [int(m.payload) for m in back.take(8)] == list(range(8))


def test_a_subscriber_node_that_cannot_keep_up_holds_the_publishing_node_back(
        tmp_path, redis):
    """An unpaced QoS 0 publisher on one node, a subscriber on another that
    does not read for a while: the publishing node stops reading its
    publisher (flow control across Redis) rather than drop, and once the
    subscriber reads it gets every message, in order."""
    from tests.blast import TOPIC, Counter, Publisher, receive
    from tests.rawmqtt import RawClient

    each = 60_000
    with cluster(tmp_path, redis, "a9", "b9",
                 extra=("--slow-subscriber-timeout", "60")) as (a, b):
        reader = RawClient(b.host, b.port, rcvbuf=4096)
        reader.connect("slow-reader")
        assert reader.subscribe((TOPIC.decode(), 0)) == [0]
        until(sees_filters(a, "b9", 1), "a9 to learn b9's filter")
        publisher = Publisher(a.host, a.port, 0, each)
        publisher.start()
        try:
            until(lambda: metric(a, "reactorapp_inputs_held_total") > 0,
                  "a9 to hold its publisher back", timeout=30)
            got = receive(reader, Counter(1), each)
            assert got.next == [each] and got.out_of_order == 0
        finally:
            publisher.finish()
            publisher.close()
            reader.close()
