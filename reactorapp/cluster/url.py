"""The ``--cluster`` URL, and the one look at Redis made before start-up.

``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``; ``rediss://`` is the same
over TLS, checked against the system's trusted certificates (or those of
``--cluster-ca``) and the host name. Both the Twisted connections and the
blocking reads at start-up take their TLS settings from here, so that they
trust the same authorities.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from reactorapp.config import ConfigError
from reactorapp.errors import SetupError

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisURL:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    #: PEM file of the authorities trusted for ``rediss://`` (``--cluster-ca``);
    #: None: the system's.
    ca: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for a blocking socket: the certificate and host name checked."""
        return ssl_context(self.ca)

    def client_tls(self):
        """TLS for a Twisted endpoint (`wrapClientTLS`), checked the same way."""
        return client_tls(self.host, self.ca)

    def __str__(self) -> str:
        """The address without the password, for logs and errors."""
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def ssl_context(ca: str | bool | None = None) -> ssl.SSLContext:
    """Python's TLS checking a Redis server: against the certificates in
    the file ``ca`` (``--cluster-ca``), or the system's (``ca`` not a
    string), and its host name."""
    return ssl.create_default_context(cafile=ca if isinstance(ca, str) else None)


def client_tls(host: str, ca: str | bool | None = None):
    """Twisted's TLS checking ``host`` the same way as `ssl_context`."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

    trust = None
    if isinstance(ca, str):
        with open(ca, "rb") as f:
            trust = trustRootFromCertificates(
                [Certificate.loadPEM(pem) for pem in _PEM.findall(f.read())])
    return optionsForClientTLS(host, trustRoot=trust)


def parse_url(text: str, ca: str | None = None) -> RedisURL:
    """Check ``--cluster`` (and ``--cluster-ca``, the file of ``ca``); a
    `ConfigError` says what is wrong in one sentence."""
    where = f"--cluster {text!r}" if "@" not in text else "--cluster"
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise ConfigError(f"{where} is not a Redis URL: {e}.") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"{where} must look like redis://HOST:PORT/DB"
                          " (or rediss:// for TLS).")
    path = parts.path.strip("/")
    if not path:
        db = 0
    elif path.isdigit():
        db = int(path)
    else:
        raise ConfigError(f"{where}: the database must be a number, not {path!r}.")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: options after '?' or '#' are not understood.")
    url = RedisURL(parts.hostname, port, db,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password is not None else None,
                   parts.scheme == "rediss")
    return replace(url, ca=_check_ca(ca, url)) if ca else url


def _check_ca(ca: str, url: RedisURL) -> str:
    """The ``--cluster-ca`` file, if it holds certificates that TLS can use."""
    if not url.tls:
        raise ConfigError(f"--cluster-ca is only used with a rediss:// URL, not {url}.")
    try:
        with open(ca, "rb") as f:
            found = _PEM.findall(f.read())
        if found:
            ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        reason = (getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e))
        raise ConfigError(f"--cluster-ca {ca!r} cannot be read: {reason}.") from None
    if not found:
        raise ConfigError(f"--cluster-ca {ca!r} holds no PEM certificate.")
    return ca


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def probe(url: RedisURL, timeout: float = 5.0) -> None:
    """Connect, log in, select the database and PING, blocking: run once
    before anything is served, so that a wrong URL or an absent server stops
    start-up with one sentence (`SetupError`) instead of a node that starts
    alone."""
    commands = []
    if url.password is not None:
        commands.append(_command("AUTH", *([url.username] if url.username else []),
                                 url.password))
    if url.db:
        commands.append(_command("SELECT", str(url.db)))
    commands.append(_command("PING"))
    try:
        with socket.create_connection((url.host, url.port), timeout=timeout) as raw:
            conn = raw
            if url.tls:
                conn = url.ssl_context().wrap_socket(raw, server_hostname=url.host)
            reader = conn.makefile("rb")
            for command in commands:
                conn.sendall(command)
                line = reader.readline()
                if line.startswith(b"-"):
                    reason = line[1:].decode(errors="replace").strip()
                    raise SetupError(f"Redis at {url} for --cluster refused the"
                                     f" connection: {reason}.")
                if not line:
                    raise SetupError(f"Redis at {url} for --cluster closed the connection.")
    except ssl.SSLCertVerificationError as e:
        raise SetupError(f"Redis at {url} for --cluster has a certificate that is not"
                         f" trusted: {e.verify_message}"
                         f"{' (see --cluster-ca)' if url.ca is None else ''}.") from None
    except OSError as e:
        reason = (getattr(e, "strerror", None) or str(e) or type(e).__name__).rstrip(".")
        raise SetupError(f"cannot reach Redis at {url} for --cluster: {reason}.") from None
