"""A JSON resource whose answer fails on the way out: the request is still
answered (a JSON 500), and the failure logged once."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher

from reactorapp.web.errors import JSONResource


class Unjsonable(JSONResource):
    def json_GET(self, request):
        return succeed({"value": object()})  # json.dumps raises TypeError


class Later(JSONResource):
    def __init__(self):
        super().__init__()
        self.pending = Deferred()

    def json_GET(self, request):
        return self.pending


def request(resource, fire=None):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = StubTreq(resource)
        d = client.get("http://hub.test/")
        if fire is not None:
            fire()
        client.flush()
        results = []
        d.addBoth(results.append)
        (response,) = results
        body = []
        response.content().addBoth(body.append)
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if e.get("log_failure") is not None]
    return response.code, json.loads(body[0]), failures


def test_a_value_that_cannot_be_written_is_a_json_500_logged_once():
    code, body, failures = request(Unjsonable())
    assert code == 500 and body["error"] == "internal error"
    assert len(failures) == 1


def test_a_failing_deferred_is_a_json_500_logged_once():
    resource = Later()
    code, body, failures = request(
        resource, lambda: resource.pending.errback(ZeroDivisionError("a bug")))
    assert code == 500 and body["error"] == "internal error"
    assert len(failures) == 1
