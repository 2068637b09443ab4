"""``--cluster`` against a real redis-server that asks for a password, and
one that only speaks TLS: the nodes log in (or check the certificate) on
every connection, the start-up reads included, and a refusal stops
start-up with one sentence."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests.brokerproc import run_twistd, running_broker
from tests.certs import issue, make_ca
from tests.paho_client import Received
from tests.redisserver import REDIS_SERVER, RedisServer, free_port
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


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """A redis-server that only speaks TLS, its certificate signed by a
    private CA; ``.ca`` is that CA's file, ``.other_ca`` another CA's."""
    certs = tmp_path_factory.mktemp("certs")
    ca = make_ca(certs, "redis-ca")
    cert = issue(certs, ca, "redis-server", server=True)
    port = free_port()
    server = RedisServer(port, str(tmp_path_factory.mktemp("redis")),
                         "--tls-port", str(port), "--port", "0",
                         "--tls-cert-file", str(cert.cert), "--tls-key-file", str(cert.key),
                         "--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", "no").start()
    server.ca = str(ca.cert)
    server.other_ca = str(make_ca(certs, "other-ca").cert)
    yield server
    server.stop()


def twistd_cluster(tmp_path, url: str, *extra: str):
    return run_twistd(tmp_path, "-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                      "--cluster", url, *extra, "--data", str(tmp_path))


def one_sentence(result) -> str:
    """The start-up failed with one line, no traceback, and says it."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    return errors[0]


def start_nodes(stack, tmp_path, urls: dict, *extra: str):
    """One node per ``name: url`` (``""``: in ``extra``); return them once
    each lists all of them."""
    brokers = []
    for name, url in urls.items():
        path = tmp_path / name
        path.mkdir()
        brokers.append(stack.enter_context(running_broker(
            path, *(("--cluster", url) if url else ()), "--node-name", name,
            "--cluster-node-expiry", EXPIRY, "--sys-interval", "0", *extra)))
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
    result = twistd_cluster(tmp_path, url)
    assert one_sentence(result).startswith(
        f"reactorapp: Redis at redis://127.0.0.1:{locked.port}/0 for --cluster refused"
    ), result.stderr
    assert "wrong-pass" not in result.stdout + result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_nodes_over_rediss_trusting_a_private_ca_route(tmp_path, tls_redis, host,
                                                       clients):  # noqa: F811
    url = f"rediss://{host}:{tls_redis.port}/0"
    with ExitStack() as stack:
        a, = start_nodes(stack, tmp_path, {"t1": url}, "--cluster-ca", tls_redis.ca)
        # The second node has both settings in its TOML file.
        config = tmp_path / "reactorapp.toml"
        config.write_text(f'cluster = "{url}"\ncluster-ca = "{tls_redis.ca}"\n')
        b, = start_nodes(stack, tmp_path, {"t2": ""}, "--config", str(config))
        until(lambda: {"t1", "t2"} <= set(nodes(a)), "t2 in t1's node list")
        route_one(a, b, "t2", clients)
        for broker in (a, b):
            assert "Traceback" not in broker.log, broker.log


def test_a_server_certificate_from_another_ca_is_one_sentence(tmp_path, tls_redis):
    url = f"rediss://localhost:{tls_redis.port}/0"
    result = twistd_cluster(tmp_path, url, "--cluster-ca", tls_redis.other_ca)
    assert one_sentence(result).startswith(
        f"reactorapp: Redis at {url} for --cluster has a certificate that is not trusted"
    ), result.stderr


def test_a_certificate_for_another_host_name_is_one_sentence(tmp_path):
    """The private CA is trusted, the host name is still checked."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = make_ca(certs, "ca")
    elsewhere = issue(certs, ca, "elsewhere.example")  # no 127.0.0.1, no localhost
    port = free_port()
    (tmp_path / "redis").mkdir()
    server = RedisServer(port, str(tmp_path / "redis"), "--tls-port", str(port), "--port", "0",
                         "--tls-cert-file", str(elsewhere.cert),
                         "--tls-key-file", str(elsewhere.key),
                         "--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", "no").start()
    try:
        url = f"rediss://localhost:{port}/0"
        result = twistd_cluster(tmp_path, url, "--cluster-ca", str(ca.cert))
    finally:
        server.stop()
    sentence = one_sentence(result)
    assert sentence.startswith(f"reactorapp: Redis at {url} for --cluster has a certificate"
                               " that is not trusted: Hostname mismatch"), result.stderr


def test_without_the_ca_the_system_does_not_trust_it_and_says_where_to_look(tmp_path,
                                                                          tls_redis):
    result = twistd_cluster(tmp_path, f"rediss://localhost:{tls_redis.port}/0")
    assert one_sentence(result).endswith("(see --cluster-ca)."), result.stderr


def test_a_cluster_ca_that_cannot_be_used_is_one_sentence(tmp_path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    port = free_port()
    rediss = f"rediss://127.0.0.1:{port}/0"
    cases = [
        (rediss, str(tmp_path / "missing.pem"), "cannot be read: No such file or directory."),
        (rediss, str(not_pem), "holds no PEM certificate."),
        (f"redis://127.0.0.1:{port}/0", str(not_pem), "is only used with a rediss:// URL"),
    ]
    for url, ca, says in cases:
        assert says in one_sentence(twistd_cluster(tmp_path, url, "--cluster-ca", ca))
