"""Bulk publish end to end: ``twistd -n reactorapp``, one HTTP request with
10,000 messages, a paho-mqtt subscriber that gets them all, in order."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.brokerproc import running_broker
from tests.test_web_e2e import TIMEOUT, Paho

COUNT = 10_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with running_broker(tmp_path_factory.mktemp("bulk"), "--max-body-size", str(4 << 20),
                        "--sys-interval", "0") as broker:
        yield broker
    assert "Traceback" not in broker.log
    assert "Unhandled" not in broker.log


def post(broker, body: bytes, content_type: str):
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT * 3)
    try:
        connection.request("POST", "/api/v1/publish", body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_ten_thousand_messages_in_one_request_arrive_in_order(broker):
    subscriber = Paho(broker, "bulk-reader")
    try:
        subscriber.subscribe("bulk/#", 1)
        body = "\n".join(json.dumps({"topic": f"bulk/{i % 10}", "payload": str(i), "qos": 1})
                         for i in range(COUNT)).encode()
        status, results = post(broker, body, "application/x-ndjson")
        assert status == 200, results
        assert [r["topic"] for r in results] == [f"bulk/{i % 10}" for i in range(COUNT)]
        received = [subscriber.message() for _ in range(COUNT)]
        assert [m.payload for m in received] == [str(i).encode() for i in range(COUNT)]
        assert {m.qos for m in received} == {1}
    finally:
        subscriber.close()


def test_a_batch_with_one_invalid_message_publishes_none(broker):
    subscriber = Paho(broker, "bulk-checker")
    try:
        subscriber.subscribe("check/#", 1)
        messages = [{"topic": "check/a", "payload": str(i), "qos": 1} for i in range(5)]
        messages[2]["qos"] = 7
        status, answer = post(broker, json.dumps(messages).encode(), "application/json")
        assert status == 400
        assert answer["error"] == "invalid batch"
        assert [e["index"] for e in answer["errors"]] == [2]
        # The next publish is the first thing the subscriber sees.
        status, _ = post(broker, json.dumps([{"topic": "check/a", "payload": "after"}]).encode(),
                         "application/json")
        assert status == 200
        assert subscriber.message().payload == b"after"
    finally:
        subscriber.close()
