"""Assemble the running hub from a `Config`: the hub, its listeners, $SYS."""

from __future__ import annotations

import os
import re
from functools import partial

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from reactorapp import __version__
from reactorapp.addresses import address_text
from reactorapp.auth.acl import ACLAuthorizer, ACLFile
from reactorapp.auth.configure import make_guard, on_thread, warn_if_open
from reactorapp.auth.limits import ConnectionLimiter
from reactorapp.auth.passwd import PasswordFile
from reactorapp.auth.metrics import GuardCollector
from reactorapp.auth.tls import TLSReloader, server_endpoint, split_description
from reactorapp.cluster.api import ClusterResource
from reactorapp.cluster.metrics import ClusterCollector
from reactorapp.config import Config, ConfigError
from reactorapp.hub.hub import Hub
from reactorapp.hub.systopics import SysTopicsService
from reactorapp.mqtt.backlog import Backlog
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings, restore_sessions
from reactorapp.mqtt.shutdown import DisconnectOnStop
from reactorapp.mqtt.writes import nodelay_for_accepted
from reactorapp.plugins import loadAuthenticator, parseListener, protocolPlugins
from reactorapp.protocols import HubFactory
from reactorapp.store import make_store
from reactorapp.store.metrics import StoreCollector
from reactorapp.store.service import StoreService
from reactorapp.web.backup import Backup
from reactorapp.web.guard import GuardedRoot
from reactorapp.web.health import Readiness
from reactorapp.web.metrics import new_registry
from reactorapp.web.site import make_site
from reactorapp.web.stats import WebStats
from reactorapp.web.stream_tables import IStreamTables
from reactorapp.web.streams import StreamSessions
from reactorapp.webhooks.api import Webhooks as WebhooksResource
from reactorapp.webhooks.service import WebhookService
from reactorapp.webhooks.service import store_for as webhook_store_for


#: Seconds between looks at the ACL file for changes.
#: Seconds between looks at the ACL and password files (off the reactor).
ACL_CHECK_INTERVAL = 2.0


class StartupError(ConfigError):
    """The hub cannot start as configured; the message is one sentence."""


class ListenerService(StreamServerEndpointService):
    """Listens on one endpoint, fails synchronously, and says where it listens.

    Binding happens in `privilegedStartService` (before twistd sheds root), and
    a failure to bind raises `StartupError` right there instead of being
    logged and forgotten, so a broker never runs without its listener.
    "listening on" is logged once the reactor runs, when clients are served
    and a SIGTERM already means a clean shutdown.
    """

    log = Logger()
    _raiseSynchronously = True

    def __init__(self, protocolName: str, description: str, endpoint, factory, reactor,
                 *, nodelay: bool = False):
        super().__init__(endpoint, factory)
        #: Accepted connections start with TCP_NODELAY (MQTT's, not HTTP's).
        self.nodelay = nodelay
        self.protocolName = protocolName
        self.description = description
        #: Where it listens (host:port), once it does.
        self.address = None
        self._reactor = reactor

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except Exception as e:  # endpoints may fail with any error
            raise StartupError(
                f"cannot listen on {self.protocolName} endpoint"
                f" {self.description!r}: {_reason(e)}."
            ) from e
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        if self.nodelay:
            nodelay_for_accepted(port)
        where = self.address = address_text(port.getHost())
        self._reactor.callWhenRunning(
            self.log.info, "{protocol} listening on {where}",
            protocol=self.protocolName, where=where,
        )
        return port


class HubService(MultiService):
    """The whole hub: `hub`, its listeners and $SYS, started and stopped together."""

    def __init__(self, hub, config: Config):
        super().__init__()
        self.hub = hub
        self.config = config
        #: What /metrics shows: register more collectors or metrics here.
        self.metrics = new_registry()
        #: What /readyz checks: add a check for whatever must be up first.
        self.readiness = Readiness()
        self.readiness.add_check("listeners", lambda: bool(self.running))
        self._bound = False

    def privilegedStartService(self):
        """Bind every listener, or none: a failure releases those already bound."""
        self._bound = True
        started = []
        for child in self:
            try:
                child.privilegedStartService()
            except StartupError:
                for done in reversed(started):
                    done.stopService()
                raise
            started.append(child)

    def startService(self):
        if not self._bound:
            self.privilegedStartService()
        super().startService()


def makeHubService(config: Config, reactor, owner: tuple[int, int] | None = None) -> HubService:
    """Build the service tree; raise `StartupError` for what cannot work.

    ``owner`` is the (uid, gid) twistd will switch to after binding
    (``--uid``/``--gid``): the data directory is made theirs.
    """
    backlog = config.listen_backlog
    endpoints = [(d, _parseEndpoint(reactor, d, "MQTT", backlog)) for d in config.mqtt]
    http = () if config.http == ("none",) else config.http
    httpEndpoints = [(d, _parseEndpoint(reactor, d, "HTTP", backlog)) for d in http]
    pluginListeners = _parseListeners(reactor, config.listen, backlog)
    authenticator = loadAuthenticator(config.authenticator) if config.authenticator else None
    _prepareDataDirectory(config.data, owner)
    cluster = _clusterURL(config)
    nodeName = _nodeName(config) if cluster is not None else None
    # A cluster keeps retained messages, sessions and webhook rules in Redis.
    store = (make_store(config.store, config.data, reactor) if cluster is None
             else _clusterStore(cluster, nodeName, reactor))
    hubClass = Hub
    if cluster is not None:
        from reactorapp.cluster.hub import ClusterHub as hubClass
    hub = hubClass(reactor, max_queued_messages=config.max_queued_messages, store=store)
    settings = MQTTSettings(
        max_packet_size=config.max_packet_size,
        max_inflight=config.max_inflight,
        max_queued_messages=config.max_queued_messages,
        connect_timeout=config.connect_timeout,
        max_subscriptions=config.max_subscriptions,
        publish_rate=config.publish_rate,
        publish_burst=config.publish_burst,
        max_queued_bytes=config.max_queued_bytes,
        max_spill_bytes=config.max_spill_bytes,
        max_spill_total_bytes=config.max_spill_total_bytes,
        spill_directory=(_prepareSpillDirectory(config, owner) if config.max_spill_bytes
                         else None),
        max_pending_acks=config.max_pending_acks,
        send_buffer=config.send_buffer,
        slow_subscriber_timeout=config.slow_subscriber_timeout,
        max_keepalive=config.max_keepalive,
        session_expiry=config.session_expiry,
        topic_alias_maximum=config.topic_alias_maximum,
        response_information=config.response_information,
    )
    guard = make_guard(config, reactor, authenticator)
    warn_if_open(guard, [("MQTT", d) for d in config.mqtt] + [("HTTP", d) for d in http]
                 + [(listener.name, listener.endpoint) for listener, _ in pluginListeners],
                 reactor)
    factory = MQTTFactory(hub, reactor, settings)
    factory.guard = guard

    top = HubService(hub, config)
    top.guard = guard
    top.metrics.register(GuardCollector(guard, hub))
    top.metrics.register(StoreCollector(store))
    # A full disk: what needs the store waits, so the hub is not ready.
    top.readiness.add_check("store", lambda: store.writable)
    # First child: restored before clients are served, closed after the
    # listeners stop.
    StoreService(store, lambda state: _restore(hub, settings, state)).setServiceParent(top)
    node = (_clusterNode(top, hub, cluster, nodeName, config, reactor,
                         _adopter(store, hub, settings)) if cluster is not None else None)
    top.metrics.register(ClusterCollector(node))
    if httpEndpoints:
        webStats = WebStats()
        # Named event-stream sessions: queued like MQTT sessions, restored
        # from the store before clients are served (and before the outbox
        # below starts reading the store in its writer thread).
        streamSessions = StreamSessions(
            hub, reactor, stream_tables_for(store), lambda: Backlog(settings, hub.stats),
            settings, webStats)
        streamSessions.setServiceParent(top)
    # Next: the outbox is resumed from the store before clients are served.
    webhooks = WebhookService(hub, webhook_store_for(store), reactor, rules=config.webhooks,
                              registry=top.metrics, queue_size=config.max_queued_messages,
                              max_dead_letters=config.max_dead_letters)
    webhooks.setServiceParent(top)
    for description, endpoint in endpoints:
        ListenerService("MQTT", description, endpoint, factory, reactor,
                        nodelay=True).setServiceParent(top)
    if httpEndpoints:
        # /mqtt runs the same MQTT protocol, counted as "websocket".
        websocketFactory = MQTTFactory(hub, reactor, settings, front_end="websocket")
        websocketFactory.guard = guard
        site = make_site(hub, reactor, websocketFactory, max_body_size=config.max_body_size,
                         readiness=top.readiness, registry=top.metrics, stats=webStats,
                         api={b"webhooks": WebhooksResource(webhooks),
                              b"backup": Backup(store, config.data, reactor),
                              b"cluster": ClusterResource(node)},
                         stream_sessions=streamSessions,
                         limiter=ConnectionLimiter(config.max_http_connections,
                                                   config.max_connections_per_address))
        # The same users and ACLs as MQTT (Basic auth or bearer tokens).
        site.resource = GuardedRoot(site.resource, guard, reactor)
        for description, endpoint in httpEndpoints:
            ListenerService("HTTP", description, endpoint, site, reactor).setServiceParent(top)
    for listener, endpoint in pluginListeners:
        pluginFactory = listener.makeFactory(hub)
        if isinstance(pluginFactory, HubFactory):
            pluginFactory.guard = guard  # the same ACL and connection limits as MQTT
        ListenerService(listener.name, listener.endpoint, endpoint, pluginFactory,
                        reactor).setServiceParent(top)
    SysTopicsService(hub, reactor, config.sys_interval, __version__).setServiceParent(top)
    tls = [endpoint.tls for _, endpoint in endpoints + httpEndpoints
           + [(None, endpoint) for _, endpoint in pluginListeners] if hasattr(endpoint, "tls")]
    hangup = []
    watched = []
    if config.acl and isinstance(guard.authorizer, ACLAuthorizer):
        watched.append(ACLFile(config.acl, guard.authorizer, partial(on_thread, reactor)))
    passwords = getattr(getattr(guard.authenticator, "fallback", guard.authenticator),
                        "passwords", None)
    if isinstance(passwords, PasswordFile):
        watched.append(passwords)
    for watch in watched:
        # The ACL and password files are read again when they change.
        watcher = TimerService(ACL_CHECK_INTERVAL, watch.check)
        watcher.clock = reactor
        watcher.setServiceParent(top)
        hangup.append(watch.check)
    # SIGHUP reads the certificates (and the ACL and password files) again at once.
    TLSReloader(tls, reactor, on_hangup=hangup).setServiceParent(top)
    # Last, so it stops first: MQTT 5 clients hear DISCONNECT 0x8B.
    DisconnectOnStop(hub, reactor).setServiceParent(top)
    return top


def _clusterURL(config: Config):
    """The ``--cluster`` URL, checked, with Redis answering; None without one.
    Redis unreachable at start stops start-up with one sentence."""
    if not config.cluster:
        return None
    from reactorapp.cluster.url import parse_url, probe

    url = parse_url(config.cluster, config.cluster_ca or None)
    probe(url)
    return url


def _nodeName(config: Config) -> str:
    from reactorapp.cluster.node import default_node_name

    return config.node_name or default_node_name(config.mqtt)


def _clusterStore(url, name: str, reactor):
    """The Redis store of a cluster node: the sessions it makes are held
    by ``name`` (see reactorapp/cluster/redisstore.py)."""
    from reactorapp.cluster.redisstore import RedisStore

    return RedisStore(reactor, host=url.host, port=url.port, db=url.db, username=url.username,
                      password=url.password, tls=url.ca or url.tls, node=name)


def _adopter(store, hub, settings):
    """What takes over the sessions of a gone node: with a shared store only."""
    from reactorapp.cluster.adopt import Adopter
    from reactorapp.hub.interfaces import ISessionLoader

    if ISessionLoader(store, None) is None:
        return None
    return Adopter(store, lambda stored: restore_sessions(hub, [stored], settings),
                   hub.get_session)


def _clusterNode(top, hub, url, name: str, config: Config, reactor, adopter=None):
    """Join the cluster once the store has restored the sessions (their
    filters are announced with the rest) and before clients are served."""
    from reactorapp.cluster.node import ClusterNode

    def addresses():
        found: dict[str, list] = {}
        for child in top:
            if isinstance(child, ListenerService) and child.address:
                found.setdefault(child.protocolName.lower(), []).append(child.address)
        return found

    node = ClusterNode(hub, url, name, reactor,
                       expiry=config.cluster_node_expiry,
                       slow_timeout=config.slow_subscriber_timeout, addresses=addresses,
                       adopter=adopter)
    node.setServiceParent(top)
    # The check's name is what /readyz says while it fails.
    top.readiness.add_check(f"cluster (Redis at {url})", lambda: node.connected)
    return node


def stream_tables_for(store):
    """Where named event-stream sessions are kept: the SQLite database, or
    nowhere beyond the process (chosen by adaptation)."""
    return IStreamTables(store)


def _restore(hub, settings, state) -> None:
    hub.restore_retained(state.retained)
    restore_sessions(hub, state.sessions, settings)


def _parseListeners(reactor, texts, backlog: int):
    """Each ``--listen NAME:ENDPOINT`` with its installed protocol plugin."""
    if not texts:
        return []
    plugins = protocolPlugins()
    listeners = [parseListener(text, plugins) for text in texts]
    return [(listener, _parseEndpoint(reactor, listener.endpoint, listener.name, backlog))
            for listener in listeners]


#: Endpoint types whose parsers take ``backlog=``.
BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``backlog=`` added where its type takes one and
    it does not set its own. Twisted's default, 50, makes a fleet that
    reconnects at once lose SYNs, which clients retry only a second later."""
    parts = split_description(description)
    if parts[0].lower() not in BACKLOG_TYPES or any(p.startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


def _parseEndpoint(reactor, description: str, protocol: str = "MQTT", backlog: int = 0):
    full = with_backlog(description, backlog) if backlog else description
    try:
        # ssl: is ours (certificates reloaded, client certificates); the rest Twisted's.
        return server_endpoint(reactor, full) or serverFromString(reactor, full)
    except Exception as e:  # each endpoint parser raises its own kinds of error
        reason = re.sub(r"^\w+\(\) ", "", _reason(e))  # "_parseTCP() missing ..."
        raise StartupError(f"invalid {protocol} endpoint {description!r}: {reason}.") from None


def _prepareDataDirectory(path: str, owner: tuple[int, int] | None = None) -> None:
    """Create the data directory if needed and make sure it can be written.

    twistd builds the services as root and only then switches to ``--uid``:
    with an ``owner``, the directory and the database files already in it
    are given to that user, who opens and writes them from then on.
    """
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise StartupError(f"data directory {path!r} exists and is not a directory.") from None
    except OSError as e:
        raise StartupError(f"cannot create data directory {path!r}: {_reason(e)}.") from None
    if owner is not None:
        _giveTo(path, owner)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"data directory {path!r} is not writable.")


#: Files of the SQLite store that a new owner must be able to write.
_DATABASE_FILES = ("reactorapp.sqlite3", "reactorapp.sqlite3-wal", "reactorapp.sqlite3-journal")


def _giveTo(path: str, owner: tuple[int, int]) -> None:
    uid, gid = owner
    try:
        os.chown(path, uid, gid)
        for name in _DATABASE_FILES:
            file = os.path.join(path, name)
            if os.path.isfile(file):
                os.chown(file, uid, gid)
    except OSError as e:
        raise StartupError(f"cannot give data directory {path!r} to uid {uid}:"
                           f" {_reason(e)}.") from None


def _prepareSpillDirectory(config: Config, owner: tuple[int, int] | None = None) -> str:
    """DIR/spill, where full session queues overflow to (anonymous files)."""
    path = os.path.join(config.data, "spill")
    _prepareDataDirectory(path, owner)
    return path


def _reason(error: BaseException) -> str:
    """The most useful short text of an error, without a trailing period."""
    socket_error = getattr(error, "socketError", None)  # CannotListenError
    if socket_error is not None:
        error = socket_error
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.rstrip(".")
