"""One table of the hub's figures (hub/counters.py) serves /metrics, the
$SYS topics and /api/v1/stats: the three show the same numbers."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.task import Clock

from reactorapp.hub.counters import FIGURES, api_tree, sys_topics
from reactorapp.hub.hub import Hub
from reactorapp.hub.systopics import SYS_TOPICS
from reactorapp.web.metrics import HubCollector


def busy_hub() -> Hub:
    hub = Hub(Clock())
    stats = hub.stats
    for n, name in enumerate(("clients_connected", "clients_maximum", "publish_dropped",
                              "publish_received", "publish_sent", "messages_received",
                              "messages_sent", "bytes_received", "bytes_sent",
                              "sessions_expired"), start=3):
        setattr(stats, name, n * 7)
    return hub


def test_every_figure_is_shown_somewhere_and_read_once():
    assert all(f.metric or f.sys_topics or f.api for f in FIGURES)
    metrics = [f.metric for f in FIGURES if f.metric]
    assert len(metrics) == len(set(metrics))
    assert SYS_TOPICS == sys_topics()


def test_metrics_sys_topics_and_the_api_show_the_same_numbers():
    hub = busy_hub()
    registry = CollectorRegistry()
    registry.register(HubCollector(hub))
    text = generate_latest(registry).decode()
    tree = api_tree(hub)
    for figure in FIGURES:
        value = figure.read(hub)
        if figure.metric:
            suffix = "_total" if figure.kind == "counter" else ""
            assert f"reactorapp_{figure.metric}{suffix} {float(value)}" in text
        for topic in figure.sys_topics:
            assert SYS_TOPICS[topic](hub) == value
        if figure.api:
            node = tree
            for key in figure.api:
                node = node[key]
            assert node == value
