"""TLS client certificates: listeners that require them, and identities
taken from them.

Twisted's ``ssl:`` server endpoint does not check client certificates. An
``ssl:`` description with ``caCerts=FILE`` (a PEM bundle of the authorities
to trust) is built here instead, with the same other parameters, and then
every client must present a certificate those authorities signed::

    ssl:8883:privateKey=server.key:certKey=server.pem:caCerts=clients-ca.pem
"""

from __future__ import annotations

import re

from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from reactorapp.auth.interfaces import IAuthenticator, Identity

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
    """An endpoint for ``ssl:...:caCerts=FILE``, or None for any other
    description (left to ``serverFromString``)."""
    parts = split_description(description)
    if parts[0] != "ssl" or not any(p.startswith("caCerts=") for p in parts[1:]):
        return None
    from twisted.internet import ssl
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
    cert_key = options.pop("certKey", private_key)
    interface = options.pop("interface", "")
    backlog = int(options.pop("backlog", 50))
    authorities = _certificates(options.pop("caCerts"))
    chain = options.pop("extraCertChain", None)
    if options:
        raise ValueError(f"unknown parameter {sorted(options)[0]!r}")
    server = ssl.PrivateCertificate.loadPEM(_read(cert_key) + b"\n" + _read(private_key))
    context = ssl.CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        extraCertChain=[c.original for c in _certificates(chain)] if chain else None,
        # A trust root makes the server ask for, and require, a client
        # certificate signed by one of these authorities.
        trustRoot=ssl.trustRootFromCertificates(authorities),
    )
    return SSL4ServerEndpoint(reactor, int(port), context, backlog, interface)


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
