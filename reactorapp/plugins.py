"""Protocols and authenticators found through Twisted's plugin system.

A package adds a protocol by shipping a module in its own ``twisted/plugins/``
directory (no ``__init__.py`` there) with an object that provides
`IHubProtocolPlugin`; usually a `ProtocolPlugin`, which names the code to
import instead of importing it, so that scanning plugins stays cheap and
cannot fail. ``twisted.plugins`` spans every installed distribution, so
`getPlugins` finds the built-in protocols and everybody else's the same way.
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass

from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface, implementer

from reactorapp.config import ConfigError

__all__ = [
    "IHubProtocolPlugin", "IAuthenticatorPlugin", "ProtocolPlugin",
    "AuthenticatorPlugin", "protocolPlugins", "authenticatorPlugins",
    "Listener", "parseListener", "loadAuthenticator",
]


class IHubProtocolPlugin(Interface):
    """A protocol that can serve the hub on a ``--listen NAME:ENDPOINT``."""

    name = Attribute("The NAME in --listen NAME:ENDPOINT: short, lower case.")
    description = Attribute("One line for `twistd reactorapp --help`.")
    options = Attribute(
        "A twisted.python.usage.Options subclass for the listener's own flags"
        " (given after the endpoint: --listen 'NAME:ENDPOINT --flag=value'), or None.")

    def makeFactory(hub, options):
        """Return the protocol factory for one listener.

        ``hub`` is the running `Hub`; ``options`` a parsed instance of
        `options`, or None when the plugin has none.
        """


class IAuthenticatorPlugin(Interface):
    """A way to decide who connects, chosen by name in the configuration."""

    name = Attribute("The name the configuration uses to choose it.")
    description = Attribute("One line for `twistd reactorapp --help`.")
    options = Attribute("A usage.Options subclass for its settings, or None.")

    def makeAuthenticator(options):
        """Return an `IAuthenticator` provider (which may also provide
        `IAuthorizer`); ``options`` as for `IHubProtocolPlugin`."""


class _LazyPlugin:
    """Names its code by dotted path and imports it only when used."""

    def __init__(self, name: str, description: str, make: str, options: str | None = None):
        self.name = name
        self.description = description
        self._make = make
        self._options = options

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} -> {self._make}>"

    @property
    def options(self):
        return None if self._options is None else namedAny(self._options)


@implementer(IPlugin, IHubProtocolPlugin)
class ProtocolPlugin(_LazyPlugin):
    """A protocol plugin for a dropin module.

    ``factory`` is the dotted name of a callable ``(hub, options)`` returning
    a protocol factory, usually a `reactorapp.protocols.HubFactory`
    subclass; ``options`` the dotted name of its `usage.Options`, if any.
    """

    def __init__(self, name: str, description: str, factory: str, options: str | None = None):
        super().__init__(name, description, factory, options)

    def makeFactory(self, hub, options):
        return namedAny(self._make)(hub, options)


@implementer(IPlugin, IAuthenticatorPlugin)
class AuthenticatorPlugin(_LazyPlugin):
    """An authenticator plugin for a dropin module; ``authenticator`` is the
    dotted name of a callable ``(options)`` returning an `IAuthenticator`."""

    def __init__(self, name: str, description: str, authenticator: str,
                 options: str | None = None):
        super().__init__(name, description, authenticator, options)

    def makeAuthenticator(self, options):
        return namedAny(self._make)(options)


def protocolPlugins() -> dict[str, IHubProtocolPlugin]:
    """Installed protocol plugins by name; the first found wins a name."""
    return _byName(IHubProtocolPlugin)


def authenticatorPlugins() -> dict[str, IAuthenticatorPlugin]:
    """Installed authenticator plugins by name."""
    return _byName(IAuthenticatorPlugin)


def _byName(interface) -> dict:
    import twisted.plugins

    found = {}
    for plugin in getPlugins(interface, twisted.plugins):
        found.setdefault(plugin.name, plugin)
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class Listener:
    """One ``--listen`` value, checked: which plugin, where, with what options."""

    text: str
    plugin: IHubProtocolPlugin
    endpoint: str
    options: usage.Options | None

    @property
    def name(self) -> str:
        return self.plugin.name

    def makeFactory(self, hub):
        return self.plugin.makeFactory(hub, self.options)


def parseListener(text: str, plugins: dict[str, IHubProtocolPlugin] | None = None) -> Listener:
    """Read ``NAME:ENDPOINT [plugin flags]``; raise `ConfigError` with one
    sentence when the name is unknown or the flags are wrong."""
    if plugins is None:
        plugins = protocolPlugins()
    words = _words(text, "the listener")
    name, _, endpoint = (words[0] if words else "").partition(":")
    if not name or not endpoint:
        raise ConfigError(
            f"the listener {text!r} must look like NAME:ENDPOINT, as in 'line:tcp:7000'.")
    plugin = plugins.get(name)
    if plugin is None:
        raise ConfigError(f"no protocol named {name!r} for the listener {text!r}"
                          f"{_suggest(name, plugins)}.")
    return Listener(text, plugin, endpoint, _parseOptions(plugin, words[1:], text))


def loadAuthenticator(text: str, plugins: dict[str, IAuthenticatorPlugin] | None = None):
    """The authenticator ``--authenticator 'NAME [plugin flags]'`` names,
    made by its plugin; `ConfigError` as for `parseListener`."""
    if plugins is None:
        plugins = authenticatorPlugins()
    words = _words(text, "the authenticator")
    plugin = plugins.get(words[0]) if words else None
    if plugin is None:
        raise ConfigError(f"no authenticator plugin named {text!r}"
                          f"{_suggest(words[0] if words else '', plugins)}.")
    return plugin.makeAuthenticator(_parseOptions(plugin, words[1:], text))


def _words(text: str, what: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"cannot read {what} {text!r}: {e}.") from None


def _parseOptions(plugin, arguments: list[str], text: str):
    optionsClass = plugin.options
    if optionsClass is None:
        if arguments:
            raise ConfigError(f"the plugin {plugin.name!r} takes no options, "
                              f"but {text!r} gives some.")
        return None
    options = optionsClass()
    try:
        options.parseOptions(arguments)
    except usage.UsageError as e:
        raise ConfigError(f"in {text!r}: {str(e).rstrip('.')}.") from None
    return options


def _suggest(name: str, plugins: dict) -> str:
    if not plugins:
        return "; none is installed"
    close = difflib.get_close_matches(name, list(plugins), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; installed: {', '.join(plugins)}"
