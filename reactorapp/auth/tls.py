"""TLS listeners: certificates read again without a restart, client
certificates required where asked, and identities taken from them.

Every ``ssl:`` server endpoint is built here, with the parameters of
Twisted's (``privateKey``, ``certKey``, ``extraCertChain``, ``dhParameters``,
``sslmethod``, ``interface``, ``backlog``) and one more: ``caCerts=FILE`` (a
PEM bundle of the authorities to trust), with which every client must present
a certificate those authorities signed::

    ssl:8883:privateKey=server.key:certKey=server.pem:caCerts=clients-ca.pem

Its files are read again (`ReloadingTLS`) when they change or on SIGHUP: new
connections get the new certificate, open ones keep the one they began with.
"""

from __future__ import annotations

import os
import re
import signal

import attr
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ISSLTransport
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.auth.interfaces import IAuthenticator, Identity

log = Logger()

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def split_description(description: str) -> list[str]:
    """Split on ``:`` where not escaped with a backslash (Twisted's syntax)."""
    parts, current, chars = [], [], iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _certificates(path: str) -> list:
    from twisted.internet import ssl

    found = [ssl.Certificate.loadPEM(pem) for pem in _PEM_CERT.findall(_read(path))]
    if not found:
        raise ValueError(f"no PEM certificate in {path!r}")
    return found


def server_endpoint(reactor, description: str):
    """An endpoint for an ``ssl:`` description, whose connection creator (a
    `ReloadingTLS`) is its ``tls`` attribute; None for any other description
    (left to ``serverFromString``)."""
    parts = split_description(description)
    if parts[0] != "ssl":
        return None
    from twisted.internet.endpoints import SSL4ServerEndpoint

    positional, options = [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            options[key] = value
        else:
            positional.append(part)
    port = options.pop("port", None) or (positional[0] if positional else None)
    if port is None:
        raise ValueError("ssl endpoint needs a port")
    private_key = options.pop("privateKey", "server.pem")
    files = TLSFiles(
        private_key=private_key,
        cert_key=options.pop("certKey", private_key),
        chain=options.pop("extraCertChain", None),
        authorities=options.pop("caCerts", None),
        dh_parameters=options.pop("dhParameters", None),
        method=options.pop("sslmethod", None),
    )
    interface = options.pop("interface", "")
    backlog = int(options.pop("backlog", 50))
    if options:
        raise ValueError(f"unknown parameter {sorted(options)[0]!r}")
    tls = ReloadingTLS(files)
    endpoint = SSL4ServerEndpoint(reactor, int(port), tls, backlog, interface)
    endpoint.tls = tls
    return endpoint


@attr.s(frozen=True, auto_attribs=True)
class TLSFiles:
    """The files (and method) one ``ssl:`` listener is built from."""

    private_key: str
    cert_key: str
    chain: str | None = None
    authorities: str | None = None
    dh_parameters: str | None = None
    method: str | None = None

    def paths(self) -> list[str]:
        return [p for p in (self.private_key, self.cert_key, self.chain, self.authorities,
                            self.dh_parameters) if p]

    def load(self):
        """Read the files into `CertificateOptions`; raise if they do not fit."""
        from twisted.internet import ssl

        server = ssl.PrivateCertificate.loadPEM(_read(self.cert_key) + b"\n"
                                                + _read(self.private_key))
        extra = {}
        if self.method is not None:
            extra["method"] = getattr(ssl.SSL, self.method)
        if self.dh_parameters is not None:
            from twisted.python.filepath import FilePath

            extra["dhParameters"] = ssl.DiffieHellmanParameters.fromFile(
                FilePath(self.dh_parameters))
        if self.authorities is not None:
            # A trust root makes the server ask for, and require, a client
            # certificate signed by one of these authorities.
            extra["trustRoot"] = ssl.trustRootFromCertificates(
                _certificates(self.authorities))
        options = ssl.CertificateOptions(
            privateKey=server.privateKey.original,
            certificate=server.original,
            extraCertChain=[c.original for c in _certificates(self.chain)] if self.chain else None,
            **extra,
        )
        options.getContext()  # a key that does not match its certificate fails here
        return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingTLS:
    """Hands each new connection the certificate last read from ``files``.

    `check` reads the files again when one of them changed (size, time or
    inode: a renewal that swaps a symbolic link counts); `reload` does it in
    any case (SIGHUP). Files that cannot be read or do not fit together
    (a key renewed before its certificate) are logged and the certificate in
    use is kept, so a listener always has one.
    """

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._stamps = self._stamp()
        self.options = files.load()
        #: Times the files were read again and taken into use.
        self.reloads = 0

    def serverConnectionForTLS(self, protocol):
        return self.options.serverConnectionForTLS(protocol)

    def _stamp(self) -> tuple:
        stamps = []
        for path in self.files.paths():
            try:
                found = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((found.st_mtime_ns, found.st_size, found.st_ino))
        return tuple(stamps)

    def check(self) -> bool:
        """Reload if a file changed since the last look; True if reloaded."""
        stamps = self._stamp()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return self.reload()

    def reload(self) -> bool:
        try:
            options = self.files.load()
        except Exception as e:  # OpenSSL, cryptography and the OS each raise their own
            log.error("Keeping the TLS certificate in use: cannot load {cert}: {error}",
                      cert=self.files.cert_key, error=e)
            return False
        self.options = options
        self.reloads += 1
        log.info("TLS certificate {cert} loaded again; new connections use it",
                 cert=self.files.cert_key)
        return True


def peer_certificate(transport):
    """The client's verified certificate as a ``cryptography`` object, or None."""
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    x509 = transport.getPeerCertificate()
    return x509.to_cryptography() if x509 is not None else None


def common_name(certificate) -> str | None:
    from cryptography.x509.oid import NameOID

    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) and value else None


@implementer(IAuthenticator)
class CertificateAuthenticator:
    """A client with a verified certificate is the user named by its CN;
    others are left to ``fallback`` (anyone is let in if there is none)."""

    def __init__(self, fallback=None) -> None:
        self.fallback = fallback

    def authenticate(self, username, password, client_id, peer, certificate):
        if certificate is not None:
            name = common_name(certificate)
            return succeed(Identity(name, client_id) if name is not None else None)
        if self.fallback is None:
            return succeed(Identity(username, client_id))
        return maybeDeferred(self.fallback.authenticate,
                             username, password, client_id, peer, certificate)

    def authenticate_token(self, token, peer):
        if self.fallback is None:
            return succeed(None)
        return maybeDeferred(self.fallback.authenticate_token, token, peer)


#: Seconds between looks at the TLS files for changes.
TLS_CHECK_INTERVAL = 5.0


class TLSReloader(Service):
    """Reads the TLS listeners' files again when they change (looked at
    every `TLS_CHECK_INTERVAL` seconds) and on SIGHUP, which then also
    calls each of ``on_hangup`` (the ACL and password files' checks). With it SIGHUP never
    ends the hub, whatever it has to reload."""

    def __init__(self, listeners: list[ReloadingTLS], reactor,
                 interval: float = TLS_CHECK_INTERVAL, on_hangup=()) -> None:
        self.listeners = listeners
        self.on_hangup = list(on_hangup)
        self._reactor = reactor
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor
        self._interval = interval
        self._previous = None

    def check(self) -> None:
        for tls in self.listeners:
            tls.check()

    def reload(self) -> None:
        log.info("SIGHUP: reading {count} TLS certificate(s), the ACL and password files again",
                 count=len(self.listeners))
        for tls in self.listeners:
            tls.reload()
        for call in self.on_hangup:
            call()

    def _hangup(self, signum, frame) -> None:
        self._reactor.callFromThread(self.reload)

    def startService(self) -> None:
        super().startService()
        if self.listeners:
            self._loop.start(self._interval, now=False).addErrback(
                lambda f: log.failure("Looking at the TLS files failed", f))
        if hasattr(signal, "SIGHUP"):
            self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()
