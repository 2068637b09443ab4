"""The reference of every metric on ``/metrics``, in Markdown, from the registry.

``python -m reactorapp.metricsdoc > docs/metrics.md`` writes the page; a test
fails when the page and the registry differ. The hub is built as twistd would
build it (SQLite store in a temporary directory, one webhook rule so that the
labelled webhook metrics show their labels) on a MemoryReactor: nothing
listens and nothing is sent.
"""

from __future__ import annotations

import sys
import tempfile

from twisted.internet.testing import MemoryReactorClock

from reactorapp.config import Config
from reactorapp.service import makeHubService
from reactorapp.webhooks.rules import rules_from_config

COMMAND = "python -m reactorapp.metricsdoc > docs/metrics.md"

HEADER = f"""\
# Metrics

`GET /metrics` on the `--http` listener serves these in Prometheus' text
format (OpenMetrics when the scraper asks for it). A counter is served with
`_total` after its name (and `_created`, the time it started, as
prometheus_client adds); a histogram as `_bucket`, `_sum` and `_count`. With
`--passwd`, `/metrics` needs a login, and with an ACL, `read` access to
`$admin/metrics` (see [security.md](security.md)).

Labels: `protocol` is the front end a message came in or went out on (`mqtt`,
`websocket`, `http`, `sse`, or a protocol plugin's name), `qos` its QoS (`0`,
`1`, `2`), `rule` a webhook rule's name.

<!-- Generated from the registry by `{COMMAND}`: edit the help
texts in the code, not this table. -->

| Name | Type | Labels | Meaning |
| --- | --- | --- | --- |
"""

_SERVED = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
_NOT_LABELS = {"le", "quantile"}


def registry_families():
    """(names as served, type, labels, help) of every metric, sorted by name."""
    with tempfile.TemporaryDirectory() as data:
        rule = {"name": "example", "filters": ["#"], "url": "http://127.0.0.1:9/"}
        config = Config(data=data, sys_interval=0, webhooks=rules_from_config([rule]))
        service = makeHubService(config, MemoryReactorClock())
        service.startService()
        try:
            families = list(service.metrics.collect())
        finally:
            service.stopService()
    rows = []
    for family in families:
        labels = set(getattr(family, "_labelnames", ()) or ())
        for sample in family.samples:
            labels.update(sample.labels)
        suffixes = _SERVED.get(family.type, ("",))
        name = ", ".join(f"`{family.name}{suffix}`" for suffix in suffixes)
        rows.append((family.name, name, family.type, sorted(labels - _NOT_LABELS),
                     family.documentation))
    return [row[1:] for row in sorted(rows)]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    lines = [HEADER]
    for name, kind, labels, meaning in registry_families():
        shown = ", ".join(f"`{label}`" for label in labels) or "—"
        lines.append(f"| {name} | {kind} | {shown} | {_cell(meaning)} |\n")
    return "".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
