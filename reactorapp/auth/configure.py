"""Build the `Guard` from the configuration, and say loudly when a listener
is open to the network without authentication."""

from __future__ import annotations

import ipaddress
from functools import partial

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from reactorapp.auth.acl import ACLAuthorizer, ACLError, read_acl
from reactorapp.auth.guard import Guard
from reactorapp.auth.interfaces import IAuthorizer
from reactorapp.auth.limits import ConnectionLimiter
from reactorapp.auth.passwd import PasswordFile, PasswordFileAuthenticator, PasswordFileError
from reactorapp.auth.tls import CertificateAuthenticator, split_description
from reactorapp.config import ConfigError

log = Logger()


def make_guard(config, reactor, authenticator=None, authorizer=None) -> Guard:
    """The guard ``config`` asks for. An ``authenticator`` or ``authorizer``
    given here (from a plugin) replaces the password file or the ACL file;
    an authenticator that also provides `IAuthorizer` is the authorizer too,
    unless --acl is given."""
    if authorizer is None and not config.acl and IAuthorizer.providedBy(authenticator):
        authorizer = authenticator
    try:
        if authenticator is None and config.passwd:
            run = partial(on_thread, reactor)
            authenticator = PasswordFileAuthenticator(
                PasswordFile(config.passwd, run=run), config.allow_anonymous, run=run)
        if authorizer is None and config.acl:
            authorizer = ACLAuthorizer(read_acl(config.acl))
    except (PasswordFileError, ACLError) as e:
        raise ConfigError(str(e).rstrip(".") + ".") from None
    if config.tls_cert_auth:
        authenticator = CertificateAuthenticator(authenticator)
    limiter = ConnectionLimiter(config.max_connections, config.max_connections_per_address)
    return Guard(authenticator, authorizer, limiter, config.max_subscriptions)


def on_thread(reactor, function, *args):
    """Run scrypt, or reading a file, on the reactor's thread pool, never on
    the reactor itself."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)


def is_local(description: str) -> bool:
    """Whether an endpoint description only accepts connections from this
    machine (loopback address or Unix socket)."""
    parts = split_description(description)
    kind = parts[0]
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    interface = options.get("interface", positional[1] if len(positional) > 1 else "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False  # "" is every interface


def lets_anyone_in(guard) -> bool:
    """Whether a client without credentials is accepted."""
    authenticator = guard.authenticator
    if isinstance(authenticator, CertificateAuthenticator):
        authenticator = authenticator.fallback
    return authenticator is None or getattr(authenticator, "allow_anonymous", False)


def warn_if_open(guard, descriptions, reactor) -> None:
    """Log a warning for each network listener that lets anyone in."""
    if not lets_anyone_in(guard):
        return
    for protocol, description in descriptions:
        if is_local(description) or "caCerts=" in description:
            continue  # only this machine, or only holders of a client certificate
        reactor.callWhenRunning(
            log.warn,
            "WARNING: {protocol} listener {description} accepts clients from the"
            " network without a password: anyone who can reach it can publish and"
            " subscribe. Use --passwd (and --acl), or bind to 127.0.0.1.",
            protocol=protocol, description=description)
