"""Prometheus metrics of webhook deliveries, labelled by rule.

The collectors are made on the registry `/metrics` serves (passed in), so
tests can use a registry of their own. Each rule keeps its labelled children
in a `RuleMetrics`, so counting on the delivery path is one attribute lookup
and one ``inc``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, 1800.0, 7200.0)


class RuleMetrics:
    """The children of every webhook metric for one rule."""

    __slots__ = ("delivered", "failed", "retries", "dead", "dead_dropped", "dropped",
                 "expired", "in_flight", "pending", "latency")

    def __init__(self, parent: WebhookMetrics, rule: str) -> None:
        self.delivered = parent.delivered.labels(rule)
        self.failed = parent.failed.labels(rule)
        self.retries = parent.retries.labels(rule)
        self.dead = parent.dead.labels(rule)
        self.dead_dropped = parent.dead_dropped.labels(rule)
        self.dropped = parent.dropped.labels(rule)
        self.expired = parent.expired.labels(rule)
        self.in_flight = parent.in_flight.labels(rule)
        self.pending = parent.pending.labels(rule)
        self.latency = parent.latency.labels(rule)


class WebhookMetrics:
    """Every webhook collector, registered once on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ("rule",)
        kw = {"labelnames": labels, "registry": registry}
        self.delivered = Counter(
            "reactorapp_webhook_delivered", "Deliveries answered with a 2xx.", **kw)
        self.failed = Counter(
            "reactorapp_webhook_failed_attempts",
            "Attempts that failed: connection error, timeout or a non-2xx answer.", **kw)
        self.retries = Counter(
            "reactorapp_webhook_retries", "Attempts scheduled again after a failure.", **kw)
        self.dead = Counter(
            "reactorapp_webhook_dead_lettered",
            "Deliveries moved to the dead-letter list after their last attempt.", **kw)
        self.dead_dropped = Counter(
            "reactorapp_webhook_dead_letters_dropped",
            "Oldest dead letters dropped to keep the list within --max-dead-letters.", **kw)
        self.dropped = Counter(
            "reactorapp_webhook_dropped",
            "QoS 0 deliveries dropped because the rule's queue was full.", **kw)
        self.expired = Counter(
            "reactorapp_webhook_expired",
            "Deliveries dropped unsent because the message's MQTT 5 expiry interval"
            " ran out first.", **kw)
        self.in_flight = Gauge(
            "reactorapp_webhook_in_flight", "Requests sent and not yet answered.", **kw)
        self.pending = Gauge(
            "reactorapp_webhook_pending",
            "Deliveries waiting in the outbox, in memory or in the store.", **kw)
        self.latency = Histogram(
            "reactorapp_webhook_delivery_seconds",
            "From queueing a delivery to its 2xx answer, retries included.",
            buckets=LATENCY_BUCKETS, **kw)
        self._rules: dict[str, RuleMetrics] = {}

    def for_rule(self, rule: str) -> RuleMetrics:
        metrics = self._rules.get(rule)
        if metrics is None:
            metrics = self._rules[rule] = RuleMetrics(self, rule)
        return metrics

    def forget(self, rule: str) -> None:
        """Drop a deleted rule's series from the scrape."""
        if self._rules.pop(rule, None) is not None:
            for collector in (self.delivered, self.failed, self.retries, self.dead,
                              self.dead_dropped, self.dropped, self.expired, self.in_flight, self.pending, self.latency):
                collector.remove(rule)
