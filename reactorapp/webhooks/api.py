"""Managing webhooks over HTTP, under /api/v1/webhooks.

::

    GET    /api/v1/webhooks                          every rule
    POST   /api/v1/webhooks                          make a rule (201)
    GET    /api/v1/webhooks/{name}                   one rule, with its queue
    PUT    /api/v1/webhooks/{name}                   make or replace a rule
    DELETE /api/v1/webhooks/{name}                   remove it (and what it had pending)
    GET    /api/v1/webhooks/{name}/dead?after=&limit= its dead letters, oldest first
    POST   /api/v1/webhooks/{name}/dead/{id}/retry   send one dead letter again
    POST   /api/v1/webhooks/{name}/dead/retry-all    send all of them again

Changes answer once they are stored. The secret is never shown back;
``"signed"`` says whether a rule has one.
"""

from __future__ import annotations

from reactorapp.web.errors import (
    ApiError, Body, JSONResource, NotFound, bad_request, json_bytes, not_found,
)
from reactorapp.web.messages import parse_count, parse_json, query
from reactorapp.webhooks.openapi import OPENAPI
from reactorapp.webhooks.rules import RuleError, parse_rule
from reactorapp.webhooks.service import RuleConflict, UnknownRule

DEAD_PAGE = 100
MAX_DEAD_PAGE = 1000


def rule_json(service, rule) -> dict:
    return {**rule.to_dict(), "source": service.source(rule.name), **service.stats(rule.name)}


def _body(request) -> object:
    return parse_json(request.content.read())


def _rule(data, name=None):
    try:
        return parse_rule(data, name=name)
    except RuleError as e:
        raise ApiError(400, "bad rule", str(e)) from None


def _calling(function, *args):
    """Call into the service, turning its refusals into HTTP answers."""
    try:
        return function(*args)
    except UnknownRule as e:
        raise not_found(str(e)) from None
    except RuleConflict as e:
        raise ApiError(409, "conflict", str(e)) from None


def _created(request, value, location: str) -> Body:
    request.setResponseCode(201)
    request.setHeader(b"Location", location.encode("utf-8"))
    return Body(json_bytes(value), b"application/json; charset=utf-8")


def _when_stored(written, answer):
    """``answer`` now, or once the store says the change is durable."""
    if written is None:
        return answer
    return written.addCallback(lambda _: answer)


def _int_query(request, name: str, default: int, low: int, high: int) -> int:
    values = query(request).get(name.encode("ascii"))
    if not values:
        return default
    text = values[-1].decode("latin-1")
    number = parse_count(text)
    if number is None or not low <= number <= high:
        raise bad_request(f"'{name}' must be a whole number from {low} to {high}, not {text!r}.")
    return number


def _name(segment: bytes) -> str:
    return segment.decode("utf-8", "replace")


class Webhooks(JSONResource):
    """GET and POST /api/v1/webhooks."""

    isLeaf = False
    #: Merged into /api/v1/openapi.json.
    openapi = OPENAPI

    def __init__(self, service) -> None:
        super().__init__()
        self.service = service

    def getChild(self, path, request):
        if path == b"":
            return self
        return Webhook(self.service, _name(path))

    def json_GET(self, request):
        return [rule_json(self.service, rule) for rule in self.service.rules()]

    def json_POST(self, request):
        rule = _rule(_body(request))
        written = _calling(self.service.create, rule)
        answer = _created(request, rule_json(self.service, rule), f"/api/v1/webhooks/{rule.name}")
        return _when_stored(written, answer)


class _RuleResource(JSONResource):
    """A resource about one rule, by name."""

    def __init__(self, service, name: str) -> None:
        super().__init__()
        self.service = service
        self.name = name


class Webhook(_RuleResource):
    """GET, PUT and DELETE /api/v1/webhooks/{name}."""

    isLeaf = False

    def getChild(self, path, request):
        if path == b"":
            return self
        if path == b"dead":
            return DeadLetters(self.service, self.name)
        return NotFound()

    def json_GET(self, request):
        rule = _calling(self.service.rule, self.name)
        return rule_json(self.service, rule)

    def json_PUT(self, request):
        rule = _rule(_body(request), self.name)
        created, written = _calling(self.service.replace, rule)
        value = rule_json(self.service, rule)
        if created:
            value = _created(request, value, f"/api/v1/webhooks/{rule.name}")
        return _when_stored(written, value)

    def json_DELETE(self, request):
        return _when_stored(_calling(self.service.delete, self.name), None)


class DeadLetters(_RuleResource):
    """GET /api/v1/webhooks/{name}/dead, and the retries below it."""

    isLeaf = False

    def getChild(self, path, request):
        if path == b"":
            return self
        if path == b"retry-all":
            return RetryAll(self.service, self.name)
        number = parse_count(path.decode("latin-1"))
        if number is not None and request.postpath == [b"retry"]:
            request.prepath.append(request.postpath.pop())
            return Retry(self.service, self.name, number)
        return NotFound()

    def json_GET(self, request):
        after = _int_query(request, "after", 0, 0, 2 ** 63 - 1)
        limit = _int_query(request, "limit", DEAD_PAGE, 1, MAX_DEAD_PAGE)
        d = _calling(self.service.dead_letters, self.name, after, limit)
        return d.addCallback(self._page, limit)

    @staticmethod
    def _page(dead_letters, limit):
        more = len(dead_letters) == limit
        return {"dead": [dead.to_dict() for dead in dead_letters],
                "next": dead_letters[-1].id if more else None}


class Retry(_RuleResource):
    """POST /api/v1/webhooks/{name}/dead/{id}/retry."""

    def __init__(self, service, name: str, dead_id: int) -> None:
        super().__init__(service, name)
        self.dead_id = dead_id

    def json_POST(self, request):
        d = _calling(self.service.retry_dead, self.name, self.dead_id)
        return d.addCallback(self._answer, request)

    def _answer(self, delivery, request):
        if delivery is None:
            raise not_found(f"Webhook {self.name!r} has no dead letter {self.dead_id}.")
        request.setResponseCode(202)
        return Body(json_bytes({"id": self.dead_id, "delivery": delivery.id}),
                    b"application/json; charset=utf-8")


class RetryAll(_RuleResource):
    """POST /api/v1/webhooks/{name}/dead/retry-all."""

    def json_POST(self, request):
        d = _calling(self.service.retry_all_dead, self.name)
        return d.addCallback(self._answer, request)

    @staticmethod
    def _answer(count, request):
        request.setResponseCode(202)
        return Body(json_bytes({"retried": count}), b"application/json; charset=utf-8")
