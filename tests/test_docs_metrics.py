"""docs/metrics.md lists exactly the metrics /metrics serves."""

from __future__ import annotations

from reactorapp.metricsdoc import COMMAND, registry_families, render
from tests.brokerproc import REPO

PAGE = REPO / "docs" / "metrics.md"


def test_the_page_is_the_registry():
    assert PAGE.read_text() == render(), (
        f"docs/metrics.md differs from the metrics the hub registers: run `{COMMAND}`.")


def test_every_metric_says_what_it_means():
    for names, kind, labels, meaning in registry_families():
        assert names.startswith("`reactorapp_"), names
        assert meaning.strip().endswith("."), names
        assert kind in ("counter", "gauge", "histogram"), names


def test_names_as_served():
    """Counters are listed with the _total that /metrics serves."""
    text = PAGE.read_text()
    assert "`reactorapp_messages_dropped_total`" in text
    assert "`reactorapp_queue_refused_total`" in text
    assert "`reactorapp_clients_connected`" in text
