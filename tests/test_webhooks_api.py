"""The webhook service and its HTTP API, without sockets: the API is called
with `StubTreq`, and deliveries go to a receiver resource through another
`StubTreq`. Time is a `Clock`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.task import Clock

from reactorapp.hub.hub import Hub
from reactorapp.hub.message import Message
from reactorapp.web.errors import Router
from reactorapp.webhooks.api import Webhooks
from reactorapp.webhooks.delivery import Delivery
from reactorapp.webhooks.memorystore import MemoryWebhookStore, WebhookTables
from reactorapp.webhooks.rules import parse_rule
from reactorapp.webhooks.service import WebhookService
from tests.webhook_receiver import Receiver

BASE = "http://hub.test/api/v1/webhooks"
RULE = {"name": "api-rule", "filters": ["s/#"], "url": "http://receiver.test/hook",
        "secret": "k", "retry": {"max_attempts": 2, "base_delay": 1, "max_delay": 1}}
CONFIG_RULE = parse_rule({"name": "from-file", "filters": ["f/#"],
                          "url": "http://receiver.test/file"})


def start(tables=None, status=200):
    clock = Clock()
    hub = Hub(clock)
    receiver = Receiver(lambda number, received: t.status)
    deliveries = StubTreq(receiver)
    registry = CollectorRegistry()
    tables = tables if tables is not None else WebhookTables()
    service = WebhookService(hub, MemoryWebhookStore(None, tables), clock,
                             rules=[CONFIG_RULE], registry=registry, client=deliveries,
                             clock=clock, jitter=lambda: 0.0)
    service.startService()
    root, v1 = Router(), Router()
    root.putChild(b"api", Router())
    root.children[b"api"].putChild(b"v1", v1)
    v1.putChild(b"webhooks", Webhooks(service))
    api = StubTreq(root)
    t = SimpleNamespace(clock=clock, hub=hub, receiver=receiver, deliveries=deliveries,
                        registry=registry, service=service, api=api, tables=tables,
                        status=status)
    return t


def call(t, method, path="", body=None, raw=None):
    """One API request; (status, headers, JSON or None)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    d = t.api.request(method, BASE + path, data=data)
    t.api.flush()
    response = successResult(d)
    content = successResult(response.content())
    return response.code, response.headers, json.loads(content) if content else None


def successResult(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def publish(t, payload=b"hello", topic="s/x", qos=1):
    t.hub.publish(Message(topic, payload, qos))
    t.deliveries.flush()


def test_list_shows_config_rules_read_only():
    t = start()
    code, _, rules = call(t, "GET")
    assert code == 200
    assert [(r["name"], r["source"], r["pending"]) for r in rules] == [("from-file", "config", 0)]
    code, _, error = call(t, "PUT", "/from-file", {**RULE, "name": "from-file"})
    assert code == 409 and "comes from the config file" in error["detail"]
    code, _, error = call(t, "DELETE", "/from-file")
    assert code == 409


def test_create_read_replace_delete():
    t = start()
    code, headers, made = call(t, "POST", body=RULE)
    assert code == 201
    assert headers.getRawHeaders(b"Location") == [b"/api/v1/webhooks/api-rule"]
    assert made["signed"] is True and "secret" not in made and made["source"] == "api"
    assert call(t, "GET", "/api-rule")[2]["url"] == RULE["url"]
    assert call(t, "POST", body=RULE)[0] == 409

    code, _, replaced = call(t, "PUT", "/api-rule", {**RULE, "filters": ["t/#"], "format": "raw"})
    assert code == 200 and replaced["filters"] == ["t/#"] and replaced["format"] == "raw"
    code, _, _ = call(t, "PUT", "/second", {k: v for k, v in RULE.items() if k != "name"})
    assert code == 201
    assert [r["name"] for r in call(t, "GET")[2]] == ["api-rule", "from-file", "second"]

    assert call(t, "DELETE", "/api-rule")[0] == 204
    code, _, error = call(t, "GET", "/api-rule")
    assert code == 404 and error["error"] == "not found"
    assert call(t, "DELETE", "/api-rule")[0] == 404


@pytest.mark.parametrize("body, raw, detail", [
    (None, b"{nope", "The body is not JSON"),
    ({**RULE, "colour": "red"}, None, "Unknown field 'colour'"),
    ({**RULE, "url": "mailto:x@y"}, None, "'url' must be an http or https URL"),
    ({**RULE, "filters": ["a/#/b"]}, None, "'filters' has a bad topic filter"),
])
def test_invalid_rules_are_refused_with_the_reason(body, raw, detail):
    t = start()
    code, _, error = call(t, "POST", body=body, raw=raw)
    assert code == 400 and detail in error["detail"]
    assert call(t, "GET")[2][0]["name"] == "from-file" and len(call(t, "GET")[2]) == 1


def test_a_name_in_the_body_must_match_the_path():
    t = start()
    code, _, error = call(t, "PUT", "/other", RULE)
    assert code == 400 and "differs from 'other'" in error["detail"]


def test_api_rules_are_stored_and_come_back_after_a_restart():
    t = start()
    call(t, "POST", body=RULE)
    t.service.stopService()
    again = start(tables=t.tables)
    (rule,) = [r for r in call(again, "GET")[2] if r["name"] == "api-rule"]
    assert rule["source"] == "api" and rule["signed"] is True
    publish(again)
    assert len(again.receiver.requests) == 1


def test_dead_letters_listed_and_sent_again():
    t = start(status=404)
    call(t, "POST", body=RULE)
    publish(t, b"one")
    publish(t, b"\xfftwo")
    code, _, page = call(t, "GET", "/api-rule/dead")
    assert code == 200 and page["next"] is None
    first, second = page["dead"]
    assert (first["payload"], first["encoding"], first["attempts"]) == ("one", "utf-8", 1)
    assert first["reason"] == "HTTP 404 Not Found"
    assert second["encoding"] == "base64"
    assert call(t, "GET", "/api-rule/dead?limit=1")[2]["next"] == first["id"]
    assert call(t, "GET", "/api-rule/dead?limit=0")[0] == 400

    t.status = 200
    code, _, answer = call(t, "POST", f"/api-rule/dead/{first['id']}/retry")
    t.deliveries.flush()
    assert code == 202 and answer["id"] == first["id"]
    assert t.receiver.requests[-1].body.startswith(b'{"topic":"s/x","payload":"one"')
    assert call(t, "POST", f"/api-rule/dead/{first['id']}/retry")[0] == 404

    code, _, answer = call(t, "POST", "/api-rule/dead/retry-all")
    t.deliveries.flush()
    assert code == 202 and answer == {"retried": 1}
    assert call(t, "GET", "/api-rule/dead")[2]["dead"] == []
    assert t.tables.outbox == {}
    delivered = t.registry.get_sample_value(
        "reactorapp_webhook_delivered_total", {"rule": "api-rule"})
    assert delivered == 2


def test_retried_then_dead_with_the_clock():
    t = start(status=503)
    call(t, "POST", body=RULE)
    publish(t)
    assert len(t.receiver.requests) == 1
    t.clock.advance(0.5)  # base delay 1 s with the lowest jitter
    t.deliveries.flush()
    assert len(t.receiver.requests) == 2
    (dead,) = call(t, "GET", "/api-rule/dead")[2]["dead"]
    assert dead["attempts"] == 2


def test_unknown_paths_and_methods():
    t = start()
    assert call(t, "GET", "/nope/dead")[0] == 404
    assert call(t, "GET", "/from-file/elsewhere")[0] == 404
    assert call(t, "PATCH", "/from-file")[0] == 405
    assert call(t, "GET", "/from-file/dead/1/retry")[0] == 405


def test_a_rule_made_again_takes_up_what_its_namesake_left_pending():
    tables = WebhookTables()
    tables.outbox[7] = Delivery(7, "gone", "s/x", b"left behind", 1, False, "k7", 0.0, 0.0, True)
    t = start(tables=tables)  # no rule "gone": its delivery waits
    assert t.receiver.requests == []
    assert call(t, "POST", body={**RULE, "name": "gone"})[0] == 201
    t.deliveries.flush()
    assert [json.loads(r.body)["payload"] for r in t.receiver.requests] == ["left behind"]
    assert tables.outbox == {}


@pytest.mark.parametrize("value", ["%B2", "%C2%B2", "1" * 5000, "-1", "+3", " 4", "1e3"])
def test_numbers_in_the_query_are_parsed_strictly(value):
    """'²' passes str.isdigit and breaks int(); 5000 digits break int() too:
    each is a 400 with a JSON body, never a 500."""
    t = start(status=404)
    call(t, "POST", body=RULE)
    code, _, answer = call(t, "GET", f"/api-rule/dead?limit={value}")
    assert code == 400 and "limit" in answer["detail"]


@pytest.mark.parametrize("segment", ["%C2%B2", "1" * 5000])
def test_a_dead_letter_id_that_is_not_a_number_is_not_found(segment):
    t = start(status=404)
    call(t, "POST", body=RULE)
    assert call(t, "POST", f"/api-rule/dead/{segment}/retry")[0] == 404


@pytest.mark.parametrize("raw", [b'{"name": ' + b"1" * 5000 + b"}", b"[" * 100_000])
def test_a_body_json_cannot_read_is_a_400(raw):
    """Too many digits for an int, nesting too deep for the decoder."""
    t = start()
    code, _, answer = call(t, "POST", raw=raw)
    assert code == 400 and answer["error"] == "invalid JSON"


def test_a_retry_after_of_superscript_two_is_retried_not_lost():
    """A 429 with 'Retry-After: ²' is a retry after the rule's back-off: the
    delivery is neither dropped nor left stuck."""
    t = start()
    t.receiver.answer = lambda number, received: (
        (429, {b"Retry-After": "\u00b2".encode("latin-1")}) if number == 1 else 200)
    call(t, "POST", body=RULE)
    publish(t, b"one")
    assert len(t.receiver.requests) == 1
    t.clock.advance(1)
    t.deliveries.flush()
    assert len(t.receiver.requests) == 2
    assert t.tables.outbox == {}
