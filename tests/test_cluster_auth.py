"""``--cluster`` against a real redis-server that asks for a password, and
one that only speaks TLS: the nodes log in (or check the certificate) on
every connection, the start-up reads included, and a refusal stops
start-up with one sentence."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests.brokerproc import run_twistd, running_broker
from tests.paho_client import Received
from tests.redisserver import REDIS_SERVER, RedisServer
from tests.test_cluster_e2e import EXPIRY, clients, nodes, sees_filters, until  # noqa: F401

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

PASSWORD = "s3cret-pass"
#: A Redis 7 ACL user with every right, and its password.
USER, USER_PASSWORD = "hub", "hub-pass"


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A redis-server with a password for the default user and one ACL user."""
    server = RedisServer(None, str(tmp_path_factory.mktemp("redis")),
                         "--requirepass", PASSWORD,
                         "--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all").start()
    yield server
    server.stop()


def start_nodes(stack, tmp_path, urls: dict):
    """One node per ``name: url``; return them once each lists all of them."""
    brokers = []
    for name, url in urls.items():
        path = tmp_path / name
        path.mkdir()
        brokers.append(stack.enter_context(running_broker(
            path, "--cluster", url, "--node-name", name,
            "--cluster-node-expiry", EXPIRY, "--sys-interval", "0")))
    for broker in brokers:
        until(lambda: set(urls) <= set(nodes(broker)), f"{list(urls)} in the node list")
    return brokers


def route_one(a, b, b_name: str, clients) -> None:  # noqa: F811
    """A message published on ``a`` reaches a subscriber on ``b`` (node ``b_name``)."""
    subscriber = clients(b, "sub")
    assert subscriber.subscribe(("t/+", 1)) == [1]
    until(sees_filters(a, b_name, 1), "the first node to learn the filter")
    clients(a, "pub").publish_and_wait("t/1", b"over redis", 1)
    assert subscriber.next() == Received("t/1", b"over redis", 1, False, False)


def test_nodes_log_in_with_a_password_or_an_acl_user_and_route(tmp_path, locked,
                                                               clients):  # noqa: F811
    urls = {"pw": f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0",
            "acl": f"redis://{USER}:{USER_PASSWORD}@127.0.0.1:{locked.port}/0"}
    with ExitStack() as stack:
        a, b = start_nodes(stack, tmp_path, urls)
        route_one(a, b, "acl", clients)
        for broker in (a, b):
            assert "Traceback" not in broker.log, broker.log
            assert PASSWORD not in broker.log and USER_PASSWORD not in broker.log


@pytest.mark.parametrize("userinfo", [":wrong-pass", f"{USER}:wrong-pass", ""])
def test_a_wrong_or_missing_password_is_one_sentence(tmp_path, locked, userinfo):
    at = f"{userinfo}@" if userinfo else ""
    url = f"redis://{at}127.0.0.1:{locked.port}/0"
    result = run_twistd(tmp_path, "-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                        "--cluster", url, "--data", str(tmp_path))
    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(
        f"reactorapp: Redis at redis://127.0.0.1:{locked.port}/0 for --cluster refused"
    ), result.stderr
    assert "wrong-pass" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
