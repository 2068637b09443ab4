"""Bulk publish on POST /api/v1/publish in memory: a JSON array or NDJSON,
one result per message in order, all or nothing for a bad message, and an
answer that waits until every message is placed."""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from reactorapp.mqtt import packets as P
from reactorapp.hub.commit import Commit
from reactorapp.web.messages import MAX_LISTED_ERRORS
from tests.test_web_api import Response, Web

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def web():
    return Web(max_body_size=1024 * 1024)


def batch(count: int, qos: int = 1) -> list[dict]:
    return [{"topic": f"bulk/{i % 7}", "payload": str(i), "qos": qos} for i in range(count)]


def test_json_array_reaches_a_subscriber_in_order(web):
    client = web.broker.connect("sub")
    client.subscribe(("bulk/#", 1))
    answer = web.post_json("/api/v1/publish", batch(300))
    assert answer.status == 200, answer
    results = answer.json()
    assert [(r["topic"], r["qos"], r["retain"]) for r in results] == [
        (f"bulk/{i % 7}", 1, False) for i in range(300)]
    assert len({r["id"] for r in results}) == 300
    payloads = []
    while len(payloads) < 300:
        packets = client.take()
        assert packets, f"only {len(payloads)} messages arrived"
        for packet in packets:
            payloads.append(packet.payload)
            client.send(P.PubAck(packet.packet_id))
    assert payloads == [str(i).encode() for i in range(300)]
    assert web.hub.stats.traffic["http"].received == [0, 300, 0]


def test_ndjson_lines_with_blank_lines_and_retain(web):
    lines = [json.dumps({"topic": "n/a", "payload": "one", "retain": True}), "",
             json.dumps({"topic": "n/b", "payload": "AAE=", "encoding": "base64"}), ""]
    answer = web.request("POST", "/api/v1/publish", "\n".join(lines).encode(), headers=NDJSON)
    assert answer.status == 200, answer
    assert [(r["topic"], r["retain"]) for r in answer.json()] == [("n/a", True), ("n/b", False)]
    [retained] = web.get("/api/v1/retained?filter=n/%23").json()
    assert retained["payload"] == "one"


def test_one_invalid_message_publishes_none_and_names_its_index(web):
    client = web.broker.connect("sub")
    client.subscribe(("bulk/#", 1))
    messages = batch(5)
    messages[3] = {"topic": "bulk/+", "payload": "bad"}
    messages[0]["retain"] = True
    answer = web.post_json("/api/v1/publish", messages)
    assert answer.status == 400, answer
    document = answer.json()
    assert document["error"] == "invalid batch"
    assert "index 3" in document["detail"] and "none was published" in document["detail"]
    [error] = document["errors"]
    assert (error["index"], error["error"]) == (3, "bad topic")
    assert client.take() == []
    assert web.get("/api/v1/retained?filter=%23").json() == []
    assert web.hub.stats.traffic["http"].received == [0, 0, 0]


def test_ndjson_errors_are_listed_by_line_and_bounded(web):
    lines = [b'{"topic": "t"}', b"{not json", b"[1]"] + [b'{"topic": 5}'] * (MAX_LISTED_ERRORS + 5)
    answer = web.request("POST", "/api/v1/publish", b"\n".join(lines), headers=NDJSON)
    assert answer.status == 400, answer
    document = answer.json()
    errors = document["errors"]
    assert [(e["index"], e["error"]) for e in errors[:3]] == [
        (1, "invalid JSON"), (2, "invalid JSON"), (3, "bad topic")]
    assert len(errors) == MAX_LISTED_ERRORS
    assert document["detail"].startswith(f"{MAX_LISTED_ERRORS + 7} of the {len(lines)} messages")


def test_a_batch_over_the_body_limit_is_refused(web):
    small = Web(max_body_size=2000)
    answer = small.post_json("/api/v1/publish", batch(100))
    assert answer.status == 413, answer


def test_empty_batch_answers_an_empty_list(web):
    answer = web.post_json("/api/v1/publish", [])
    assert (answer.status, answer.json()) == (200, [])


def test_answer_waits_for_every_commit_and_full_subscriber(web):
    """Like a PUBACK per message: the answer goes out once the store's
    commits and every subscriber over its bounds let the batch go."""
    commits = [Commit(), Commit()]
    full = Deferred()
    routed = []

    def route(message):
        routed.append(message)
        n = len(routed)
        return Commit.after(full) if n == 2 else commits[n % 2]

    web.hub.route = route
    channel, transport = web.send(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
        % (len(json.dumps(batch(4))), json.dumps(batch(4)).encode()))
    assert len(routed) == 4 and transport.value() == b""
    commits[0].fire()
    full.callback(None)
    assert transport.value() == b""
    commits[1].fire()
    answer = Response(transport.value())
    assert answer.status == 200 and len(answer.json()) == 4


def test_a_failed_commit_is_a_503(web):
    commit = Commit()
    web.hub.route = lambda message: commit
    channel, transport = web.send(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
        % (len(json.dumps(batch(2))), json.dumps(batch(2)).encode()))
    commit.fire(Failure(RuntimeError("disk full")))
    answer = Response(transport.value())
    assert answer.status == 503 and answer.error() == "not stored"


def test_ndjson_line_with_two_values_is_invalid(web):
    body = b'{"topic": "t"}\n{"topic": "a"}, {"topic": "b", "payload": "x\n  {"topic": "u"}  \n'
    answer = web.request("POST", "/api/v1/publish", body, headers=NDJSON)
    assert answer.status == 400, answer
    assert [e["index"] for e in answer.json()["errors"]] == [1]


def test_a_batch_is_answered_once_the_subscriber_it_congested_drained(web):
    """Flow control: a batch is one input, like a call of Hub.publish; a
    congested subscriber gets every message and holds back the answer."""
    sub = web.broker.connect("sub")
    sub.subscribe(("bulk/#", 0))
    sub.protocol.pauseProducing()
    body = json.dumps(batch(20, qos=0)).encode()
    _, transport = web.send(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body))
    assert [p.payload for p in sub.take()] == [str(i).encode() for i in range(20)]
    assert transport.value() == b""
    assert web.hub.flow.current is None
    sub.protocol.resumeProducing()
    assert Response(transport.value()).status == 200
