"""Building the guard from the configuration, and the open-listener check."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from reactorapp.auth.acl import ACLAuthorizer
from reactorapp.auth.configure import is_local, lets_anyone_in, make_guard
from reactorapp.auth.interfaces import IAuthenticator, IAuthorizer
from reactorapp.auth.passwd import PasswordFileAuthenticator, set_password
from reactorapp.auth.tls import CertificateAuthenticator, server_endpoint, split_description
from reactorapp.config import Config, ConfigError
from tests.certs import issue, make_ca


@pytest.mark.parametrize("description, local", [
    ("tcp:1883:interface=127.0.0.1", True),
    ("tcp:1883:interface=\\:\\:1", True),
    ("tcp6:1883:interface=\\:\\:1", True),
    ("tcp:1883:127.0.0.1", True),
    ("tcp:1883:interface=localhost", True),
    ("unix:/run/x.sock", True),
    ("tcp:1883", False),
    ("tcp:1883:interface=0.0.0.0", False),
    ("ssl:8883:privateKey=k.pem:interface=192.168.1.2", False),
    ("systemd:domain=INET:index=0", False),
])
def test_is_local(description, local):
    assert is_local(description) is local


def test_split_description_honours_escapes():
    assert split_description("tcp:1883:interface=\\:\\:1") == ["tcp", "1883", "interface=::1"]


def test_no_settings_no_guarding():
    guard = make_guard(Config(), MemoryReactorClock())
    assert guard.authenticator is None and guard.authorizer is None
    assert lets_anyone_in(guard)


def test_password_file_and_acl(tmp_path):
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    set_password(str(passwd), "u", b"p", n=16)
    acl.write_text("user u\ntopic a/#\n")
    guard = make_guard(Config(passwd=str(passwd), acl=str(acl), max_connections=5,
                              max_connections_per_address=2), MemoryReactorClock())
    assert isinstance(guard.authenticator, PasswordFileAuthenticator)
    assert isinstance(guard.authorizer, ACLAuthorizer)
    assert (guard.limiter.max_total, guard.limiter.max_per_address) == (5, 2)
    assert not lets_anyone_in(guard)
    anonymous = make_guard(Config(passwd=str(passwd), allow_anonymous=True), MemoryReactorClock())
    assert lets_anyone_in(anonymous)


def test_certificates_alone_let_others_in():
    guard = make_guard(Config(tls_cert_auth=True), MemoryReactorClock())
    assert isinstance(guard.authenticator, CertificateAuthenticator)
    assert lets_anyone_in(guard)


@pytest.mark.parametrize("setting", ["passwd", "acl"])
def test_unreadable_files_stop_start_up(tmp_path, setting):
    with pytest.raises(ConfigError, match="cannot read"):
        make_guard(Config(**{setting: str(tmp_path / "missing")}), MemoryReactorClock())


def test_bad_acl_stops_start_up(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic read a/#/b\n")
    with pytest.raises(ConfigError, match="line 1"):
        make_guard(Config(acl=str(acl)), MemoryReactorClock())


def test_a_plugin_can_authorize_too():
    @implementer(IAuthenticator, IAuthorizer)
    class Both:
        def authenticate(self, *args): ...
        def authenticate_token(self, token, peer): ...
        def can_publish(self, identity, topic): ...
        def can_subscribe(self, identity, topic_filter): ...
        def can_read(self, identity, topic): ...

    both = Both()
    guard = make_guard(Config(), MemoryReactorClock(), both)
    assert guard.authenticator is both and guard.authorizer is both


def test_ssl_endpoints_are_ours(tmp_path):
    ca = make_ca(tmp_path, "ca")
    server = issue(tmp_path, ca, "localhost", server=True)
    base = f"ssl:0:privateKey={server.key}:certKey={server.cert}"
    reactor = MemoryReactorClock()
    assert isinstance(server_endpoint(reactor, base), SSL4ServerEndpoint)
    assert server_endpoint(reactor, "tcp:0") is None
    endpoint = server_endpoint(reactor, base + f":caCerts={ca.cert}:interface=127.0.0.1")
    assert isinstance(endpoint, SSL4ServerEndpoint)
    with pytest.raises(ValueError, match="unknown parameter"):
        server_endpoint(reactor, base + f":caCerts={ca.cert}:frobnicate=1")
    with pytest.raises(ValueError, match="no PEM certificate"):
        server_endpoint(reactor, base + f":caCerts={server.key}")


def test_metrics_name_every_counter():
    from prometheus_client import generate_latest

    from reactorapp.auth.guard import Guard
    from reactorapp.auth.metrics import GuardCollector
    from reactorapp.hub.hub import Hub
    from reactorapp.web.metrics import new_registry

    guard, hub = Guard(), Hub(MemoryReactorClock())
    guard.stats.publish_denied = 3
    hub.stats.queue_spilled = 7
    hub.stats.spill_bytes = 4096
    registry = new_registry()
    registry.register(GuardCollector(guard, hub))
    text = generate_latest(registry).decode()
    assert "reactorapp_publish_denied_total 3.0" in text
    assert "reactorapp_queue_spilled_total 7.0" in text
    assert "reactorapp_connections_open 0.0" in text
    assert "reactorapp_queue_spill_bytes 4096.0" in text


def test_true_false_settings_in_the_file_and_as_flags(tmp_path):
    from reactorapp.config import load_config
    from reactorapp.tap import Options

    path = tmp_path / "reactorapp.toml"
    path.write_text("allow-anonymous = true\ntls-cert-auth = false\n")
    assert load_config(str(path)) == {"allow_anonymous": True, "tls_cert_auth": False}
    path.write_text('allow-anonymous = "yes"\n')
    with pytest.raises(ConfigError, match="true or false"):
        load_config(str(path))
    options = Options()
    options.parseOptions(["--allow-anonymous"])
    assert options.flags == {"allow_anonymous": True}


def test_the_acl_file_is_read_again_when_it_changes(tmp_path):
    """Like the password file, an ACL edit takes effect without a restart,
    for subscriptions already made too; an edit that does not parse keeps
    the rules in force."""
    from twisted.logger import formatEvent, globalLogPublisher

    from reactorapp.auth.interfaces import Identity
    from reactorapp.service import ACL_CHECK_INTERVAL, makeHubService

    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic read a/#\n")
    reactor = MemoryReactorClock()
    # The file is looked at on the thread pool; here, a pool that runs at once.
    reactor.getThreadPool = lambda: InlinePool()
    reactor.callFromThread = lambda f, *args, **kwargs: f(*args, **kwargs)
    service = makeHubService(Config(mqtt=("tcp:0",), http=(), acl=str(acl), passwd=None,
                                    data=str(tmp_path / "data")), reactor)
    service.privilegedStartService()
    service.startService()
    authorizer, alice = service.guard.authorizer, Identity("alice", "phone")
    assert authorizer.can_read(alice, "a/1") and not authorizer.can_read(alice, "b/1")

    acl.write_text("user alice\ntopic read b/#\n# moved to b\n")
    reactor.advance(ACL_CHECK_INTERVAL)
    assert authorizer.can_read(alice, "b/1") and not authorizer.can_read(alice, "a/1")

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        acl.write_text("user alice\ntopic read a/#/b\n")
        reactor.advance(ACL_CHECK_INTERVAL)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert authorizer.can_read(alice, "b/1")
    assert any("Keeping the previous rules" in formatEvent(event) for event in events)
    service.stopService()


class InlinePool:
    """A thread pool that runs each call at once, in the caller's thread."""

    def callInThreadWithCallback(self, onResult, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except Exception:  # handed to the Deferred, as the real pool does
            from twisted.python.failure import Failure
            onResult(False, Failure())
        else:
            onResult(True, result)


def test_the_password_file_is_read_again_on_a_timer_off_the_reactor(tmp_path):
    """Log-ins read the users in memory; the service looks at the file every
    ACL_CHECK_INTERVAL seconds, on the thread pool."""
    from reactorapp.auth.passwd import set_password
    from reactorapp.service import ACL_CHECK_INTERVAL, makeHubService

    passwd = tmp_path / "passwd"
    set_password(str(passwd), "alice", b"one", n=2 ** 4)
    reactor = MemoryReactorClock()
    calls = []

    class CountingPool(InlinePool):
        def callInThreadWithCallback(self, onResult, function, *args, **kwargs):
            calls.append(function.__name__)
            return super().callInThreadWithCallback(onResult, function, *args, **kwargs)

    reactor.getThreadPool = lambda: CountingPool()
    reactor.callFromThread = lambda f, *args, **kwargs: f(*args, **kwargs)
    service = makeHubService(Config(mqtt=("tcp:0",), http=(), passwd=str(passwd),
                                    data=str(tmp_path / "data")), reactor)
    service.privilegedStartService()
    service.startService()
    passwords = service.guard.authenticator.passwords
    set_password(str(passwd), "bob", b"two", n=2 ** 4)
    assert sorted(passwords.users.passwords) == ["alice"]
    reactor.advance(ACL_CHECK_INTERVAL)
    assert sorted(passwords.users.passwords) == ["alice", "bob"]
    assert "reread" in calls
    service.stopService()
