"""Assemble the running hub from a `Config`: the hub, its listeners, $SYS."""

from __future__ import annotations

import os
import re

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from reactorapp import __version__
from reactorapp.config import Config, ConfigError
from reactorapp.hub.hub import Hub
from reactorapp.hub.systopics import SysTopicsService
from reactorapp.mqtt.protocol import MQTTFactory
from reactorapp.mqtt.session import MQTTSettings


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

    def __init__(self, protocolName: str, description: str, endpoint, factory, reactor):
        super().__init__(endpoint, factory)
        self.protocolName = protocolName
        self.description = description
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
        address = port.getHost()
        if hasattr(address, "port"):
            where = f"{address.host}:{address.port}"
        else:
            where = str(getattr(address, "name", address))
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


def makeHubService(config: Config, reactor) -> HubService:
    """Build the service tree; raise `StartupError` for what cannot work."""
    endpoints = [(d, _parseEndpoint(reactor, d)) for d in config.mqtt]
    _prepareDataDirectory(config.data)

    hub = Hub(reactor, max_queued_messages=config.max_queued_messages)
    settings = MQTTSettings(
        max_packet_size=config.max_packet_size,
        max_inflight=config.max_inflight,
        max_queued_messages=config.max_queued_messages,
    )
    factory = MQTTFactory(hub, reactor, settings)

    top = HubService(hub, config)
    for description, endpoint in endpoints:
        ListenerService("MQTT", description, endpoint, factory, reactor).setServiceParent(top)
    SysTopicsService(hub, reactor, config.sys_interval, __version__).setServiceParent(top)
    return top


def _parseEndpoint(reactor, description: str):
    try:
        return serverFromString(reactor, description)
    except Exception as e:  # each endpoint parser raises its own kinds of error
        reason = re.sub(r"^\w+\(\) ", "", _reason(e))  # "_parseTCP() missing ..."
        raise StartupError(f"invalid MQTT endpoint {description!r}: {reason}.") from None


def _prepareDataDirectory(path: str) -> None:
    """Create the data directory if needed and make sure it can be written."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise StartupError(f"data directory {path!r} exists and is not a directory.") from None
    except OSError as e:
        raise StartupError(f"cannot create data directory {path!r}: {_reason(e)}.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"data directory {path!r} is not writable.")


def _reason(error: BaseException) -> str:
    """The most useful short text of an error, without a trailing period."""
    socket_error = getattr(error, "socketError", None)  # CannotListenError
    if socket_error is not None:
        error = socket_error
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.rstrip(".")
