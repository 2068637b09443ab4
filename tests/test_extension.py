"""The extension API, the protocol base classes, plugin discovery and the
testing kit, all in memory."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from twisted.internet.address import IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import twisted.plugins
from reactorapp.api import ClientClosed, Forbidden, InvalidTopic, NotAuthorized
from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import IAuthorizer, Identity
from reactorapp.auth.limits import ConnectionLimiter
from reactorapp.config import Config, ConfigError
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.plugins import (
    IAuthenticatorPlugin, IHubProtocolPlugin, authenticatorPlugins, loadAuthenticator,
    parseListener, protocolPlugins,
)
from reactorapp.protocols import HubFactory, HubProtocol
from reactorapp.protocols.line import LineFactory
from reactorapp.testing import MemoryHub

REPO = Path(__file__).resolve().parent.parent


@implementer(IAuthorizer)
class OnlyMine:
    """Alice may use alice/#; nobody may use anything else."""

    def can_publish(self, identity, topic):
        return identity.username == "alice" and topic.startswith("alice/")

    can_read = can_publish

    def can_subscribe(self, identity, topic_filter):
        return identity.username == "alice" and topic_filter.startswith("alice/")


class Passwords:
    """An authenticator: alice/secret; anonymous only when allowed."""

    def __init__(self, anonymous=False):
        self.anonymous = anonymous

    def authenticate(self, username, password, client_id, peer, certificate):
        if username is None:
            if self.anonymous:
                return succeed(Identity(None, client_id))
            return fail(NotAuthorized("anonymous clients are not allowed"))
        return succeed(Identity(username, client_id) if password == b"secret" else None)


# -- HubClient ---------------------------------------------------------------

class PublishTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()
        self.client = self.kit.client("dev-1")

    def test_publish_fires_with_none_once_placed(self):
        self.assertIsNone(self.successResultOf(self.client.publish("a/b", b"x", qos=1)))
        message = self.kit.assert_published("a/b", b"x", qos=1, retain=False)
        self.assertEqual(message.sender, "dev-1")

    def test_messages_from_mqtt_clients_are_recorded_too(self):
        """The kit's hub records what MQTT connections publish (they place
        messages through `Hub.route`, not `Hub.publish`)."""
        from reactorapp.mqtt import packets as P
        from reactorapp.mqtt.codec import encode
        from reactorapp.mqtt.protocol import MQTTFactory

        factory = MQTTFactory(self.kit.hub, self.kit.clock)
        factory.guard = Guard(authenticator=Passwords(anonymous=True))
        device = self.kit.connect(factory)
        device.send(encode(P.Connect(client_id="sensor", clean_session=True, keep_alive=0))
                    + encode(P.Publish("a/b", b"x", qos=1, packet_id=1)))
        message = self.kit.assert_published("a/b", b"x", qos=1)
        self.assertEqual(message.sender, "sensor")
        self.assertTrue(device.received().endswith(b"\x40\x02\x00\x01"))  # PUBACK 1

    def test_text_payload_is_utf8(self):
        self.client.publish("a", "é")
        self.kit.assert_published("a", "é".encode("utf-8"))

    def test_waits_for_a_hub_that_stores(self):
        stored = Deferred()
        self.kit.hub.publish = lambda message: stored
        d = self.client.publish("a", b"x", qos=1)
        self.assertNoResult(d)
        stored.callback("whatever the store says")
        self.assertIsNone(self.successResultOf(d))

    def test_retained(self):
        self.client.publish("a", b"x", retain=True)
        self.assertEqual([m.payload for m in self.successResultOf(self.client.retained("#"))],
                         [b"x"])

    def test_mistakes_fail_the_deferred(self):
        for args, error in [
            (("a/+", b""), InvalidTopic),          # [MQTT-4.7.1-1]
            (("", b""), InvalidTopic),             # [MQTT-4.7.3-1]
            (("$SYS/x", b""), InvalidTopic),
            (("a", b"", 3), ValueError),
            (("a", b"", True), ValueError),
            (("a", 42), TypeError),
        ]:
            self.failureResultOf(self.client.publish(*args), error)
        self.kit.assert_nothing_published()

    def test_counted(self):
        self.client.publish("a", b"x", qos=2)
        self.assertEqual(self.kit.hub.stats.traffic["test"].received, [0, 0, 1])
        self.assertEqual(self.kit.hub.stats.publish_received, 1)


class SubscribeTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()
        self.client = self.kit.client("dev-1")
        self.got = []

    def subscribe(self, topic_filter, qos=0):
        return self.successResultOf(self.client.subscribe(topic_filter, qos, self.got.append))

    def test_delivers_and_cancels(self):
        subscription = self.subscribe("a/+")
        self.assertTrue(verifyObject(ISubscriber, subscription))
        self.kit.publish("a/b", b"1")
        self.kit.publish("b", b"2")
        subscription.cancel()
        subscription.cancel()  # again: nothing happens
        self.kit.publish("a/b", b"3")
        self.assertEqual([m.payload for m in self.got], [b"1"])
        self.assertFalse(subscription.active)
        self.assertEqual(self.client.subscriptions, ())
        self.assertEqual(self.kit.hub.subscription_count, 0)

    def test_retained_are_kept_for_the_caller(self):
        """[MQTT-3.3.1-6] The retained messages a new filter matches are handed
        over with the subscription, not delivered before the caller answers."""
        self.kit.publish("a/b", b"kept", retain=True)
        subscription = self.subscribe("a/#")
        self.assertEqual(self.got, [])
        self.assertEqual([m.payload for m in subscription.retained], [b"kept"])

    def test_overlapping_filters_each_deliver(self):
        self.subscribe("a/#")
        self.subscribe("a/+")
        self.kit.publish("a/b", b"x")
        self.assertEqual(len(self.got), 2)

    def test_close_cancels_everything_and_refuses_more(self):
        self.subscribe("a")
        self.subscribe("b")
        self.client.close()
        self.assertEqual(self.kit.hub.subscription_count, 0)
        self.failureResultOf(self.client.subscribe("c", 0, self.got.append), ClientClosed)
        self.successResultOf(self.client.publish("a", b"a will, say"))

    def test_bad_filter_and_qos(self):
        self.failureResultOf(self.client.subscribe("a/#/b", 0, self.got.append), InvalidTopic)
        self.failureResultOf(self.client.subscribe("a", 5, self.got.append), ValueError)
        self.failureResultOf(self.client.retained("a/#/b"), InvalidTopic)

    def test_deliveries_counted(self):
        self.subscribe("a", qos=1)
        self.kit.publish("a", b"x", qos=2)
        self.assertEqual(self.kit.hub.stats.traffic["test"].sent, [0, 1, 0])


class GuardTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()
        self.guard = Guard(authorizer=OnlyMine())
        self.got = []

    def test_acl_applies(self):
        alice = self.kit.client("c1", identity=Identity("alice", "c1"), guard=self.guard)
        self.successResultOf(alice.publish("alice/x", b""))
        self.failureResultOf(alice.publish("bob/x", b""), Forbidden)
        self.failureResultOf(alice.subscribe("#", 0, self.got.append), Forbidden)
        self.successResultOf(alice.subscribe("alice/#", 0, self.got.append))
        self.assertEqual((self.guard.stats.publish_denied, self.guard.stats.subscribe_denied),
                         (1, 1))

    def test_reading_is_checked_per_message(self):
        eve = self.kit.client("c3", identity=Identity("eve", "c3"),
                              guard=Guard(authorizer=_ReadNothing()))
        self.kit.publish("x", b"old", retain=True)
        subscription = self.successResultOf(eve.subscribe("#", 0, self.got.append))
        self.kit.publish("x", b"new")
        self.assertEqual((subscription.retained, self.got), ([], []))
        self.assertEqual(self.successResultOf(eve.retained("#")), [])

    def test_must_log_in_when_there_is_an_authenticator(self):
        guard = Guard(authenticator=Passwords())
        client = self.kit.client("c4", guard=guard)
        self.assertFalse(client.authenticated)
        self.failureResultOf(client.publish("a", b""), Forbidden)
        self.failureResultOf(client.subscribe("a", 0, self.got.append), Forbidden)
        self.failureResultOf(client.authenticate(None, None), NotAuthorized)
        self.assertIsNone(self.successResultOf(client.authenticate("alice", b"wrong")))
        self.assertEqual(guard.stats.bad_credentials, 1)
        identity = self.successResultOf(client.authenticate("alice", b"secret"))
        self.assertEqual((identity, client.identity, client.authenticated),
                         (Identity("alice", "c4"), identity, True))
        self.successResultOf(client.publish("a", b""))

    def test_without_authenticator_everyone_is_who_they_say(self):
        client = self.kit.client("c5")
        self.assertEqual(client.identity, Identity(None, "c5"))
        self.assertTrue(client.authenticated)
        self.assertEqual(self.successResultOf(client.authenticate("bob", None)),
                         Identity("bob", "c5"))


@implementer(IAuthorizer)
class _ReadNothing:
    def can_publish(self, identity, topic):
        return True

    def can_subscribe(self, identity, topic_filter):
        return True

    def can_read(self, identity, topic):
        return False


# -- HubProtocol / HubFactory ----------------------------------------------

class Echo(HubProtocol, LineReceiver):
    """A tiny protocol: each line is published to echo/<line> and answered."""

    delimiter = b"\n"

    def connectionMade(self):
        self.events = ["made"]

    def lineReceived(self, line):
        self.run(self.handle, line.decode())

    async def handle(self, line):
        if line == "boom":
            raise ZeroDivisionError("a bug in the subclass")
        await self.hub.publish("echo/" + line, b"")
        self.sendLine(line.encode())


class EchoFactory(HubFactory):
    protocol = Echo
    name = "echo"


class HubProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.kit = MemoryHub()
        self.factory = EchoFactory(self.kit.hub)

    def test_client_id_and_counters_use_the_factory_name(self):
        connection = self.kit.connect(self.factory)
        self.assertEqual(connection.protocol.hub.client_id, "echo:192.0.2.7:50123")
        connection.send(b"x\n")
        self.assertEqual(self.kit.hub.stats.traffic["echo"].received, [1, 0, 0])

    def test_client_ids_for_other_addresses(self):
        ids = [self.factory.buildProtocol(a).hub.client_id for a in
               (IPv6Address("TCP", "::1", 5), UNIXAddress("/run/x.sock"), None)]
        self.assertEqual(ids, ["echo:[::1]:5", "echo:/run/x.sock", "echo:local"])

    def test_runs_in_order_while_waiting_for_the_hub(self):
        stored = Deferred()
        self.kit.hub.publish = lambda message: stored
        connection = self.kit.connect(self.factory)
        connection.send(b"one\ntwo\n")
        self.assertEqual(connection.received(), b"")
        self.kit.hub.publish = lambda message: None
        stored.callback(None)
        self.assertEqual(connection.received(), b"one\ntwo\n")

    def test_unhandled_failure_is_logged_and_drops_the_connection(self):
        connection = self.kit.connect(self.factory)
        connection.send(b"boom\nnext\n")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.received(), b"")

    def test_nothing_queued_runs_after_an_unhandled_failure(self):
        stored, topics = Deferred(), []
        self.kit.hub.publish = lambda message: topics.append(message.topic) or stored
        connection = self.kit.connect(self.factory)
        connection.send(b"one\ntwo\n")
        stored.errback(ZeroDivisionError("the store broke"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(topics, ["echo/one"])
        self.assertTrue(connection.closed)

    def test_nothing_runs_after_the_connection_is_lost(self):
        stored = Deferred()
        self.kit.hub.publish = lambda message: stored
        connection = self.kit.connect(self.factory)
        connection.send(b"one\ntwo\n")
        connection.lose()
        stored.callback(None)
        self.assertEqual(len(self.kit.published), 0)

    def test_connection_limits_apply(self):
        self.factory.guard = Guard(limiter=ConnectionLimiter(max_per_address=1))
        first = self.kit.connect(self.factory)
        second = self.kit.connect(self.factory)
        self.assertEqual((first.closed, second.closed), (False, True))
        self.assertFalse(hasattr(second.protocol, "events"))  # connectionMade not called
        self.assertEqual(self.factory.guard.stats.connections_refused, 1)
        first.lose()
        self.assertFalse(self.kit.connect(self.factory).closed)

    def test_a_peer_that_does_not_read_loses_messages_not_memory(self):
        connection = self.kit.connect(LineFactory(self.kit.hub))
        connection.send(b"SUB a\n")
        connection.received()
        self.assertIs(connection.transport.producer, connection.protocol)
        connection.protocol.pauseProducing()  # the transport's buffer is full
        self.kit.publish("a", b"lost")
        connection.protocol.resumeProducing()
        self.kit.publish("a", b"kept")
        self.assertEqual(connection.lines(), [b"MSG a kept"])
        self.assertEqual(self.kit.hub.stats.publish_dropped, 1)

    def test_with_passwords_only_login_opens_the_hub(self):
        guard = Guard(authenticator=Passwords())
        line = LineFactory(self.kit.hub)
        line.guard = guard
        user = self.kit.connect(line)
        user.send(b"PUB a x\nLOGIN alice nope\nLOGIN alice secret\nPUB a x\n")
        self.assertEqual(user.lines(), [
            b"ERR Log in first: this hub checks who its clients are.",
            b"ERR Wrong user name or password.",
            b"OK LOGIN alice",
            b"OK PUB a",
        ])
        self.assertEqual(self.kit.assert_published("a").sender, "line:192.0.2.7:50123")

    def test_anonymous_allowed_needs_no_login(self):
        line = LineFactory(self.kit.hub)
        line.guard = Guard(authenticator=Passwords(anonymous=True))
        user = self.kit.connect(line)
        user.send(b"PUB a x\n")
        self.assertEqual(user.lines(), [b"OK PUB a"])


# -- plugins -----------------------------------------------------------------

DROPIN = '''
from reactorapp.plugins import AuthenticatorPlugin, ProtocolPlugin
shout = ProtocolPlugin("shout", "Echoes loudly.", factory="shoutpkg.Factory",
                       options="shoutpkg.Options")
quiet = ProtocolPlugin("quiet", "No options.", factory="shoutpkg.Factory")
ldap = AuthenticatorPlugin("ldapish", "Asks a directory.", authenticator="shoutpkg.make",
                           options="shoutpkg.Options")
'''

PACKAGE = '''
from twisted.python import usage
from reactorapp.protocols import HubFactory
IMPORTED = True
class Options(usage.Options):
    optParameters = [["volume", None, 1, "How loud.", int]]
class Factory(HubFactory):
    name = "shout"
def make(options):
    return ("authenticator", options["volume"])
'''


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A package installed elsewhere, with its own twisted/plugins dropin."""
    (tmp_path / "twisted" / "plugins").mkdir(parents=True)
    (tmp_path / "twisted" / "plugins" / "shout_dropin.py").write_text(DROPIN)
    (tmp_path / "shoutpkg.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(twisted.plugins, "__path__",
                        [*twisted.plugins.__path__, str(tmp_path / "twisted" / "plugins")])
    yield
    sys.modules.pop("shoutpkg", None)


def test_line_is_found_through_getplugins():
    plugin = protocolPlugins()["line"]
    assert verifyObject(IHubProtocolPlugin, plugin)
    assert IPlugin.providedBy(plugin)
    assert issubclass(plugin.options, usage.Options)


def test_builtin_dropin_imports_only_the_descriptor():
    """A dropin that fails to import disappears silently: keep it trivial."""
    tree = ast.parse((REPO / "twisted" / "plugins" / "reactorapp_protocols.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [
        ("reactorapp.plugins", ["ProtocolPlugin"])]


def test_third_party_plugins_are_found_lazily(third_party):
    plugins = protocolPlugins()
    assert {"line", "shout", "quiet"} <= set(plugins)
    assert plugins["shout"].description == "Echoes loudly."
    assert "shoutpkg" not in sys.modules  # scanning imports nothing
    listener = parseListener("shout:tcp:7000 --volume=11")
    assert (listener.name, listener.endpoint) == ("shout", "tcp:7000")
    assert listener.options["volume"] == 11
    factory = listener.makeFactory(MemoryHub().hub)
    assert isinstance(factory, HubFactory) and factory.options["volume"] == 11


def test_authenticator_plugins(third_party):
    plugin = authenticatorPlugins()["ldapish"]
    assert verifyObject(IAuthenticatorPlugin, plugin)
    assert loadAuthenticator("ldapish --volume 3") == ("authenticator", 3)
    with pytest.raises(ConfigError, match="no authenticator plugin named 'ldap'"):
        loadAuthenticator("ldap")


@pytest.mark.parametrize("text, words", [
    ("lin:tcp:7000", "no protocol named 'lin' for the listener 'lin:tcp:7000' "
                     "(did you mean 'line'?); installed: line"),
    ("line", "must look like NAME:ENDPOINT"),
    ("", "must look like NAME:ENDPOINT"),
    ("line:tcp:7000 --nope", "in 'line:tcp:7000 --nope': option --nope not recognized."),
    ("line:tcp:7000 --max-line=x", "Parameter type enforcement failed"),
    ("line:tcp:7000 'unclosed", "cannot read the listener"),
])
def test_listener_mistakes_are_one_sentence(text, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        parseListener(text, {"line": protocolPlugins()["line"]})


def test_options_given_to_a_plugin_without_options(third_party):
    with pytest.raises(ConfigError, match="'quiet' takes no options"):
        parseListener("quiet:tcp:0 --volume=2")


# -- twistd and the service --------------------------------------------------

def test_help_lists_protocol_plugins(third_party):
    from reactorapp.tap import Options

    text = str(Options())
    assert "Protocols for --listen NAME:ENDPOINT:" in text
    assert "  line   Text lines for telnet and netcat" in text
    assert "  shout  Echoes loudly." in text
    assert "Authenticators for --authenticator NAME:\n  ldapish  Asks a directory." in text


def test_listen_flag_is_repeatable_and_in_toml(tmp_path):
    from reactorapp.config import load_config, merge
    from reactorapp.tap import Options

    options = Options()
    options.parseOptions(["--listen", "line:tcp:7000", "--listen", "line:unix:/tmp/l --max-line=9"])
    assert options.flags["listen"] == ("line:tcp:7000", "line:unix:/tmp/l --max-line=9")
    path = tmp_path / "r.toml"
    path.write_text('listen = ["line:tcp:7001"]\n')
    assert merge(load_config(str(path)), {}).listen == ("line:tcp:7001",)
    assert Config().listen == ()


def _service(tmp_path, **settings):
    from reactorapp.service import makeHubService

    config = Config(mqtt=(), http=("none",), store="memory", data=str(tmp_path / "data"),
                    **settings)
    return makeHubService(config, MemoryReactorClock())


def test_service_listens_with_the_plugin_factory_and_the_shared_guard(tmp_path):
    top = _service(tmp_path, listen=("line:tcp:7000 --max-line=99", "line:tcp:7001"))
    listeners = [s for s in top if getattr(s, "protocolName", None) == "line"]
    assert [s.description for s in listeners] == ["tcp:7000", "tcp:7001"]
    factory = listeners[0].factory
    assert isinstance(factory, LineFactory)
    assert factory.options["max-line"] == 99
    assert factory.hub is top.hub and factory.guard is top.guard


def test_service_refuses_unknown_protocols(tmp_path):
    with pytest.raises(ConfigError, match="no protocol named 'telnet'"):
        _service(tmp_path, listen=("telnet:tcp:23",))
    with pytest.raises(ConfigError, match="invalid line endpoint 'tcpx:1'"):
        _service(tmp_path, listen=("line:tcpx:1",))


def test_service_uses_an_authenticator_plugin(tmp_path, third_party):
    top = _service(tmp_path, authenticator="ldapish --volume=2")
    assert top.guard.authenticator == ("authenticator", 2)


# -- the testing kit itself ---------------------------------------------------

class Client(LineReceiver):
    def connectionMade(self):
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def connectionLost(self, reason):
        self.reason = reason


class KitTests(SynchronousTestCase):
    def test_pair_moves_bytes_both_ways_and_closes_both(self):
        kit = MemoryHub()
        client = Client()
        pump = kit.pair(LineFactory(kit.hub), client)
        client.sendLine(b"SUB a")
        client.sendLine(b"PUB a hi")
        pump.flush()
        self.assertEqual(client.lines, [b"OK SUB a", b"MSG a hi", b"OK PUB a"])
        client.transport.loseConnection()
        pump.flush()
        client.reason.trap(ConnectionDone)
        self.assertEqual(kit.hub.subscription_count, 0)

    def test_assertions_say_what_was_published(self):
        kit = MemoryHub()
        kit.publish("a", b"x")
        with self.assertRaises(AssertionError) as caught:
            kit.assert_published("a", b"y")
        self.assertIn("payload=b'y'", str(caught.exception))
        self.assertIn("Message(topic='a'", str(caught.exception))
        self.assertRaises(AssertionError, kit.assert_nothing_published)

    def test_inbox_and_clock(self):
        kit = MemoryHub()
        inbox = kit.subscribe("a/#", qos=1)
        kit.publish("a/b", b"x", qos=2)
        self.assertEqual(inbox.deliveries[0][1:], (1, False))
        calls = []
        kit.clock.callLater(5, calls.append, "late")
        kit.advance(5)
        self.assertEqual(calls, ["late"])
