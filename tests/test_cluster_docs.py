"""The two-node walkthrough of the README and docs/cluster.md, run as written
(on free ports instead of 6379, 1883, 1884, 8080 and 8081)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.brokerproc import BrokerProcess, HTTP_LISTENING, LISTENING
from tests.paho_client import PahoClient
from tests.redisserver import REDIS_SERVER, RedisServer, free_port
from tests.test_cluster_e2e import sees_filters, until
from tests.test_docs_examples import commands, logical_lines

REPO = Path(__file__).resolve().parent.parent
PORTS = ("6379", "1883", "1884", "8080", "8081")

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def walkthrough(page: Path) -> list[list[str]]:
    text = page.read_text()
    section = text.split("redis-server --port 6379", 1)
    assert len(section) == 2, f"{page}: no cluster walkthrough"
    block = "redis-server --port 6379" + section[1].split("```", 1)[0]
    return [c for line in logical_lines(block) for c in commands(line)]


def test_the_readme_and_cluster_md_show_the_same_walkthrough():
    assert walkthrough(REPO / "README.md") == walkthrough(REPO / "docs" / "cluster.md")


def test_the_two_node_walkthrough_runs(tmp_path):
    steps = walkthrough(REPO / "README.md")
    assert [s[0] for s in steps] == ["redis-server", "twistd", "twistd", "curl"]
    ports = {port: str(free_port()) for port in PORTS}

    def local(args):
        return [re.sub(r"\b(%s)\b" % "|".join(PORTS), lambda m: ports[m[1]], a) for a in args]

    redis_args = local(steps[0])
    port = int(redis_args[redis_args.index("--port") + 1])
    redis = RedisServer(port, str(tmp_path), *redis_args[3:]).start()
    nodes = []
    try:
        for step in steps[1:3]:
            node = BrokerProcess(local(step[1:]), cwd=tmp_path, free_http=False)
            nodes.append(node)
            node.port = int(node.wait_for(LISTENING)["port"])
            node.http_port = int(node.wait_for(HTTP_LISTENING)["port"])
        a, b = nodes
        b.wait_for("Cluster node a is here")
        a.wait_for("Cluster node b is here")
        done = subprocess.run([*local(steps[3]), "--max-time", "5"], capture_output=True,
                              text=True, timeout=10)
        listed = json.loads(done.stdout)
        assert {n["name"] for n in listed["nodes"]} == {"a", "b"}
        # What the prose says: a subscriber on b gets what a's publisher sends.
        subscriber = PahoClient("127.0.0.1", b.port, "walk-sub").connect()
        subscriber.subscribe(("sensors/#", 1))
        publisher = PahoClient("127.0.0.1", a.port, "walk-pub").connect()
        try:
            until(sees_filters(a, "b", 1), "a to learn b's filter")
            publisher.publish_and_wait("sensors/door", b"open", 1)
            assert subscriber.next().payload == b"open"
        finally:
            publisher.close()
            subscriber.close()
    finally:
        for node in nodes:
            node.stop()
        redis.stop()
