"""The cluster in /metrics: how many nodes, whether Redis is there, traffic."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class ClusterCollector:
    """Read when Prometheus scrapes; ``node`` is None without ``--cluster``."""

    def __init__(self, node=None) -> None:
        self.node = node

    def collect(self):
        node = self.node
        yield GaugeMetricFamily(
            "reactorapp_cluster_nodes",
            "Live nodes this node routes to, itself included (1 without --cluster).",
            value=1 + (len(node.remotes) if node is not None else 0))
        yield GaugeMetricFamily(
            "reactorapp_cluster_redis_connected",
            "1 while every connection to the cluster's Redis is up; 0 while it"
            " reconnects, and without --cluster.",
            value=1 if node is not None and node.connected else 0)
        stats = node.stats if node is not None else None
        yield CounterMetricFamily(
            "reactorapp_cluster_messages_sent",
            "Messages sent to other nodes, counted once per node and confirmed by Redis.",
            value=stats.sent if stats else 0)
        yield CounterMetricFamily(
            "reactorapp_cluster_messages_received",
            "Messages received from other nodes.",
            value=stats.received if stats else 0)
        yield CounterMetricFamily(
            "reactorapp_cluster_messages_dropped",
            "QoS 0 messages for other nodes dropped while Redis was unreachable or"
            " the other node was stuck.",
            value=stats.dropped if stats else 0)
