"""docs/metrics.md lists exactly the metrics /metrics serves."""

from __future__ import annotations

import re

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


def test_metric_names_in_the_other_pages_exist():
    """A metric named anywhere in README.md or docs/ is one /metrics serves."""
    served = {name.strip("`") for names, *_ in registry_families() for name in names.split(", ")}
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    pages.remove(PAGE)
    named = 0
    for page in pages:
        for name in re.findall(r"`(reactorapp_[a-z0-9_]+)`", page.read_text()):
            assert name in served, f"{page.name} names {name}, which /metrics does not serve"
            named += 1
    assert named >= 10, named
