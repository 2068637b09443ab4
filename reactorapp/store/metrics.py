"""The store's health in /metrics: can it write, and how often it could not."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class StoreCollector:
    """Read when Prometheus scrapes; the store counts on its own."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        yield GaugeMetricFamily(
            "reactorapp_store_writable",
            "1 while the store writes, 0 while its writes fail and are retried"
            " (nothing that needs the store is acknowledged meanwhile).",
            value=1 if self.store.writable else 0)
        yield CounterMetricFamily(
            "reactorapp_store_write_failures",
            "Batches of writes the store could not make (each is tried again).",
            value=getattr(self.store, "write_failures", 0))
