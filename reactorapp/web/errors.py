"""JSON answers for the HTTP front end, and the errors a client can cause.

Every mistake a client can make is a 4xx with the body
``{"error": "<short name>", "detail": "<one sentence>"}``; a 500 means a bug
on our side and is logged. Resources here are the building blocks: a
`JSONResource` leaf whose ``json_GET``/``json_POST``/... methods return a
value, and a `Router` whose unknown children are JSON 404s.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger()

#: Reason phrases Twisted does not know.
REASONS = {426: b"Upgrade Required"}

#: Methods that change state; cross-site pages may not send them (CSRF).
UNSAFE_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})


class ApiError(Exception):
    """A request the server will not carry out, and why, as the client sees it."""

    def __init__(self, code: int, error: str, detail: str, headers: dict | None = None,
                 extra: dict | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.error = error
        self.detail = detail
        self.headers = headers or {}
        #: More fields of the answer's body (the invalid messages of a batch).
        self.extra = extra


def bad_request(detail: str, error: str = "bad request") -> ApiError:
    return ApiError(400, error, detail)


def not_found(detail: str) -> ApiError:
    return ApiError(404, "not found", detail)


def compact_json(value) -> bytes:
    """``value`` as compact UTF-8 JSON: answers, events and webhook bodies."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_bytes(value) -> bytes:
    """A JSON answer's body: compact, one line."""
    return compact_json(value) + b"\n"


def write_json(request, value, code: int = 200) -> bytes:
    """Set the status and headers of a JSON answer; return its body."""
    request.setResponseCode(code, REASONS.get(code))
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json_bytes(value)


def error_body(request, error: ApiError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name, value)
    body = {"error": error.error, "detail": error.detail}
    if error.extra:
        body.update(error.extra)
    return write_json(request, body, error.code)


def internal_error_body(request) -> bytes:
    return error_body(request, ApiError(
        500, "internal error", "The server failed to answer; the cause is in its log."))


def check_same_origin(request) -> None:
    """Refuse a state-changing request sent by a page of another site.

    Browsers send ``Origin`` with such requests; other clients (curl, paho,
    services) do not, and are let through.
    """
    origin = request.getHeader(b"Origin")
    if origin is None:
        return
    host = (request.getHeader(b"Host") or b"").decode("latin-1").lower()
    if origin == b"null" or urlsplit(origin.decode("latin-1")).netloc.lower() != host:
        raise ApiError(403, "forbidden",
                       "Cross-origin requests may not change anything on this server.")


class JSONResource(resource.Resource):
    """A leaf answering JSON.

    Subclasses define ``json_GET(request)``, ``json_POST(request)``, ...
    returning a JSON-able value (200), None (204), a `Body`, a Deferred of
    one of those, or `STREAMING`; raising `ApiError` gives a 4xx. Another
    method is a 405 with ``Allow``; a path below the leaf is a 404. HEAD is
    answered like GET.
    """

    isLeaf = True
    #: True when the leaf reads ``request.postpath`` itself.
    takes_subpath = False

    def allowed_methods(self) -> list[str]:
        methods = sorted(name[len("json_"):] for name in dir(self) if name.startswith("json_"))
        if "GET" in methods:
            methods.append("HEAD")
        return methods

    def render(self, request):
        if not self.takes_subpath and request.postpath not in ([], [b""]):
            return error_body(request, not_found(f"There is nothing at {_path(request)}."))
        method = request.method.decode("latin-1")
        handler = getattr(self, "json_" + ("GET" if method == "HEAD" else method), None)
        if handler is None:
            allowed = self.allowed_methods()
            return error_body(request, ApiError(
                405, "method not allowed",
                f"{_path(request)} answers {', '.join(allowed)}, not {method}.",
                {b"Allow": ", ".join(allowed).encode("ascii")},
            ))
        try:
            if request.method in UNSAFE_METHODS:
                check_same_origin(request)
            result = handler(request)
        except ApiError as e:
            return error_body(request, e)
        if result is STREAMING:
            return server.NOT_DONE_YET
        if isinstance(result, Deferred):
            return _render_later(request, result)
        return _body(request, result)


#: Returned by a handler that keeps the response open and writes it itself.
STREAMING = object()


class Body:
    """A handler's answer that is not JSON: bytes and their media type."""

    def __init__(self, data: bytes, content_type: bytes) -> None:
        self.data = data
        self.content_type = content_type


def _body(request, value) -> bytes:
    if value is None:
        request.setResponseCode(204)
        return b""
    if isinstance(value, Body):
        request.setHeader(b"Content-Type", value.content_type)
        return value.data
    return write_json(request, value)


def _render_later(request, result: Deferred):
    """Answer when ``result`` fires, unless the client has gone by then.

    Whatever raises on the way (the handler's Deferred, turning its value
    into a body) is logged once and answered with a JSON 500; if even
    writing fails, the connection is closed: a request is never left open.
    """
    gone = []
    request.notifyFinish().addBoth(gone.append)

    def failed(failure):
        if failure.check(ApiError):
            return error_body(request, failure.value)
        log.failure("Answering {method} {path} failed", failure,
                    method=request.method, path=request.path)
        return internal_error_body(request)

    def send(body):
        if not gone:
            request.write(body)
            request.finish()

    def unsent(failure):
        log.failure("Cannot answer {path}", failure, path=request.path)
        if not gone and not request.finished:
            request.loseConnection()

    result.addCallback(lambda value: _body(request, value))
    result.addErrback(failed).addCallback(send).addErrback(unsent)
    return server.NOT_DONE_YET


def _path(request) -> str:
    return request.path.decode("utf-8", "replace")


class NotFound(resource.Resource):
    """A JSON 404 for any method."""

    isLeaf = True

    def render(self, request):
        return error_body(request, not_found(f"There is nothing at {_path(request)}."))


class Router(resource.Resource):
    """An inner node of the URL tree: itself and unknown children are 404s."""

    def getChild(self, path, request):
        return NotFound()

    def render(self, request):
        return NotFound().render(request)
