"""The same users and ACLs on the HTTP front end.

`GuardedRoot` wraps the site's root resource: every request but the health
checks and ``/mqtt`` (whose MQTT CONNECT carries its own credentials) is
authenticated first, with HTTP Basic (a user of the password file) or a
bearer token (``python -m reactorapp.passwd FILE USER --token``), and gets
``request.identity``. Resources then ask `require_publish`,
`require_subscribe` and `read_filter` about topics. With no authenticator
configured, every request is anonymous and let in; with no ACL, every topic
is open, as over MQTT.

Administration needs, with an ACL, read access (GET) or write access (other
methods) to ``$admin/<name>``, where ``<name>`` is the first path segment
below ``/api/v1/`` (``backup``, ``clients``, ``sessions``, ``stats``, ``webhooks``) or
``metrics`` for ``/metrics``; ``topic readwrite $admin/#`` grants it all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from twisted.internet.defer import fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.util import DeferredResource

from reactorapp.auth.interfaces import Identity, NotAuthorized
from reactorapp.auth.tls import peer_certificate
from reactorapp.web.errors import ApiError, error_body

log = Logger()

REALM = b"reactorapp"
#: Top-level paths served without HTTP authentication.
OPEN = frozenset({b"healthz", b"readyz", b"mqtt"})
#: Paths under /api/v1/ that only administrators may use, given an ACL.
ADMIN = frozenset({b"backup", b"clients", b"sessions", b"shared", b"stats", b"webhooks"})
#: Seconds a successful Basic login is remembered (scrypt costs ~60 ms).
BASIC_CACHE_SECONDS = 60.0
BASIC_CACHE_SIZE = 1024

#: HTTP Basic log-ins checked at once. Each is an scrypt on the reactor's
#: thread pool, which MQTT log-ins use too: past this bound a log-in is
#: answered 503 at once, so a flood of bad ones delays MQTT log-ins by at
#: most this many checks. (Remembered log-ins and bearer tokens cost none.)
MAX_BASIC_CHECKS = 4


class _Busy(Exception):
    """As many HTTP Basic log-ins as allowed are being checked."""


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail,
                    {b"WWW-Authenticate": b'Basic realm="%s", charset="UTF-8"' % REALM})


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", detail)


class _Answer(resource.Resource):
    """A fixed error answer, whatever the path below."""

    isLeaf = True

    def __init__(self, error: ApiError) -> None:
        super().__init__()
        self.error = error

    def render(self, request):
        return error_body(request, self.error)


class _BasicCache:
    """Successful Basic logins for a minute, keyed by an HMAC of the
    credentials (a secret key per process), so repeated API calls do not
    each pay for scrypt."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[float, Identity]] = {}

    def _digest(self, username: str, password: bytes) -> bytes:
        return hmac.new(self._key, username.encode("utf-8") + b"\0" + password,
                        hashlib.sha256).digest()

    def get(self, username: str, password: bytes):
        key = self._digest(username, password)
        found = self._entries.get(key)
        if found is None:
            return None
        expires, identity = found
        if expires < self.clock.seconds():
            del self._entries[key]
            return None
        return identity

    def put(self, username: str, password: bytes, identity: Identity) -> None:
        entries = self._entries
        if len(entries) >= BASIC_CACHE_SIZE:
            del entries[next(iter(entries))]
        entries[self._digest(username, password)] = (
            self.clock.seconds() + BASIC_CACHE_SECONDS, identity)


class GuardedRoot(resource.Resource):
    """Authenticate, then hand the request to the real root."""

    def __init__(self, wrapped, guard, clock) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.guard = guard
        self._cache = _BasicCache(clock)
        #: HTTP Basic log-ins being checked now.
        self.checking = 0

    def getChildWithDefault(self, path, request):
        request.guard = self.guard
        request.identity = None
        # Walk the real tree from its root, with the segment just taken.
        request.postpath.insert(0, request.prepath.pop())
        if path in OPEN:
            return self.wrapped
        d = self._authenticate(request)
        d.addCallbacks(self._cbAuthenticated, self._ebAuthenticated,
                       callbackArgs=(request,), errbackArgs=(request,))
        # Usually answered at once (no password to check, or one checked
        # lately): go on without a DeferredResource, a fifth of a small request.
        settled = []
        d.addBoth(settled.append)
        if not settled:
            return DeferredResource(d.addCallback(lambda _: settled[0]))
        if isinstance(settled[0], Failure):
            return DeferredResource(fail(settled[0]))
        return settled[0]

    def render(self, request):  # pragma: no cover - getChildWithDefault always runs
        return self.wrapped.render(request)

    def _authenticate(self, request):
        authenticator = self.guard.authenticator
        header = request.getHeader(b"Authorization")
        if header is None:
            if authenticator is None:
                return succeed(Identity(None))
            return maybeDeferred(authenticator.authenticate, None, None, "",
                                 request.getClientAddress(), None)
        scheme, _, credentials = header.partition(b" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == b"basic":
            try:
                username, sep, password = base64.b64decode(credentials, validate=True) \
                    .decode("utf-8").partition(":")
            except ValueError:
                return succeed(None)
            if not sep:
                return succeed(None)
            if authenticator is None:
                return succeed(Identity(username))
            cached = self._cache.get(username, password.encode("utf-8"))
            if cached is not None:
                return succeed(cached)
            if self.checking >= MAX_BASIC_CHECKS:
                self.guard.stats.logins_busy += 1
                return fail(_Busy())
            self.checking += 1
            d = maybeDeferred(authenticator.authenticate, username, password.encode("utf-8"),
                              "", request.getClientAddress(),
                              peer_certificate(request.channel.transport
                                               if request.channel is not None else None))
            d.addBoth(self._checked)
            d.addCallback(self._remember, username, password.encode("utf-8"))
            return d
        if scheme == b"bearer" and authenticator is not None:
            try:
                token = credentials.decode("ascii")
            except UnicodeDecodeError:
                return succeed(None)
            return maybeDeferred(authenticator.authenticate_token, token,
                                 request.getClientAddress())
        return succeed(None)

    def _checked(self, result):
        self.checking -= 1
        return result

    def _remember(self, identity, username, password):
        if identity is not None:
            self._cache.put(username, password, identity)
        return identity

    def _cbAuthenticated(self, identity, request):
        if identity is None:
            self.guard.stats.bad_credentials += 1
            return _Answer(unauthorized("Wrong user name, password or token."))
        request.identity = identity
        denied = self._admin_check(request, identity)
        if denied is not None:
            return _Answer(denied)
        return self.wrapped

    def _ebAuthenticated(self, failure, request):
        if failure.check(_Busy):
            return _Answer(ApiError(
                503, "busy", "Too many log-ins are being checked; try again shortly,"
                " or use a bearer token.", {b"Retry-After": b"1"}))
        if failure.check(NotAuthorized):
            self.guard.stats.not_authorized += 1
            return _Answer(unauthorized("Log in: HTTP Basic with a user of the password"
                                        " file, or a bearer token."))
        log.failure("Could not authenticate an HTTP request from {peer}", failure,
                    peer=request.getClientAddress())
        return _Answer(ApiError(503, "unavailable", "Authentication is not available now."))

    def _admin_check(self, request, identity) -> ApiError | None:
        authorizer = self.guard.authorizer
        if authorizer is None:
            return None
        path = request.postpath
        if path[:1] == [b"metrics"]:
            name = b"metrics"
        elif path[:2] == [b"api", b"v1"] and len(path) > 2 and path[2] in ADMIN:
            name = path[2]
        else:
            return None
        topic = "$admin/" + name.decode("ascii")
        if request.method in (b"GET", b"HEAD"):
            allowed = authorizer.can_read(identity, topic)
        else:
            allowed = authorizer.can_publish(identity, topic)
        if allowed:
            return None
        return forbidden(f"The ACL does not give {identity.username or 'anonymous'!s} "
                         f"access to {topic}.")


# -- topic checks for resources ---------------------------------------------------


def _checker(request):
    guard = getattr(request, "guard", None)
    if guard is None or guard.authorizer is None:
        return None, None
    return guard.authorizer, request.identity


def require_publish(request, topic: str) -> None:
    """Raise a 403 unless the request's user may publish to ``topic``."""
    authorizer, identity = _checker(request)
    if authorizer is not None and not authorizer.can_publish(identity, topic):
        raise forbidden(f"The ACL does not let this user publish to {topic!r}.")


def require_subscribe(request, topic_filters) -> None:
    """Raise a 403 unless the request's user may subscribe to every filter."""
    authorizer, identity = _checker(request)
    if authorizer is None:
        return
    for topic_filter in topic_filters:
        if not authorizer.can_subscribe(identity, topic_filter):
            raise forbidden(f"The ACL does not let this user subscribe to {topic_filter!r}.")


def read_filter(request):
    """``may_read(topic) -> bool`` for the request's user, or None (no ACL)."""
    guard = getattr(request, "guard", None)
    if guard is None:
        return None
    return guard.read_filter(request.identity)
