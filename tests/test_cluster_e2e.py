"""Several ``twistd -n reactorapp --cluster`` nodes sharing a real redis-server.

Each test waits on what a user would see: log lines, `/api/v1/cluster`
polled with a deadline, messages with a bounded wait. Nothing sleeps.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager

import pytest

from tests.brokerproc import running_broker
from tests.paho_client import TIMEOUT, PahoClient, Received
from tests.redisserver import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

#: Short heartbeats, so a killed node is gone within a second or two.
EXPIRY = "1.5"


def get_json(broker, path: str):
    url = f"http://127.0.0.1:{broker.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def until(check, what: str, timeout: float = TIMEOUT):
    """Poll ``check`` until it returns something true, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def nodes(broker) -> dict:
    status, body = get_json(broker, "/api/v1/cluster")
    return {n["name"]: n for n in body["nodes"]} if status == 200 else {}


def sees_filters(broker, name: str, count: int):
    """``broker`` knows that node ``name`` has ``count`` filters (routing is set up)."""
    return lambda: nodes(broker).get(name, {}).get("filters") == count


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(directory=str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


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
