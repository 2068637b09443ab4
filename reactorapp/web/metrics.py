"""GET /metrics: the hub's counters in Prometheus' text format.

The numbers live where they are counted (`HubStats`, `WebStats`); the
collectors here only read them when Prometheus scrapes, so counting costs
the hot path nothing more. Other parts of the hub add their own metrics to
the same registry (``HubService.metrics``): a prometheus_client metric
created with ``registry=...`` or any collector passed to ``register``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from reactorapp.hub.counters import FIGURES
from reactorapp.web.errors import Body, JSONResource

QOS_LABELS = ("0", "1", "2")

class HubCollector:
    """Clients, sessions and messages in and out by front end and QoS."""

    def __init__(self, hub) -> None:
        self.hub = hub

    def collect(self):
        hub, stats = self.hub, self.hub.stats
        yield GaugeMetricFamily("reactorapp_start_time_seconds",
                                "When the hub started, in seconds since the epoch.",
                                value=stats.started_at)
        for figure in FIGURES:
            if figure.metric is not None:
                family = GaugeMetricFamily if figure.kind == "gauge" else CounterMetricFamily
                yield family(f"reactorapp_{figure.metric}", figure.help, value=figure.read(hub))
        received = CounterMetricFamily(
            "reactorapp_messages_received",
            "Messages published into the hub, by front end and QoS.",
            labels=("protocol", "qos"))
        sent = CounterMetricFamily(
            "reactorapp_messages_sent",
            "Messages delivered by the hub, by front end and QoS.",
            labels=("protocol", "qos"))
        for name, traffic in sorted(stats.traffic.items()):
            for qos in range(3):
                received.add_metric((name, QOS_LABELS[qos]), traffic.received[qos])
                sent.add_metric((name, QOS_LABELS[qos]), traffic.sent[qos])
        yield received
        yield sent
        connected = GaugeMetricFamily(
            "reactorapp_clients_connected_by_version",
            "MQTT clients connected now, by protocol version.", labels=("version",))
        accepted = CounterMetricFamily(
            "reactorapp_connections_by_version",
            "MQTT connections accepted (CONNACK 0) since start-up, by protocol version.",
            labels=("version",))
        for version, (now, total) in sorted(stats.by_version.items()):
            connected.add_metric((version,), now)
            accepted.add_metric((version,), total)
        yield connected
        yield accepted

class WebCollector:
    """Server-Sent Events streams and WebSocket connections."""

    def __init__(self, stats) -> None:
        self.stats = stats

    def collect(self):
        stats = self.stats
        yield GaugeMetricFamily("reactorapp_sse_streams",
                                "Server-Sent Events streams open now.", value=stats.sse_streams)
        yield CounterMetricFamily(
            "reactorapp_sse_dropped",
            "QoS 0 messages dropped because an event stream's reader was too slow "
            "(also counted in reactorapp_messages_dropped_total).",
            value=stats.sse_dropped)
        yield CounterMetricFamily(
            "reactorapp_sse_overflowed",
            "Event streams closed because a QoS 1 or 2 message found their buffer full.",
            value=stats.sse_overflowed)
        yield CounterMetricFamily(
            "reactorapp_sse_expired",
            "Messages not written to an event stream because their MQTT 5 message expiry"
            " interval ran out first.",
            value=stats.sse_expired)
        yield GaugeMetricFamily("reactorapp_sse_sessions",
                                "Named event-stream sessions kept now.",
                                value=stats.sse_sessions)
        yield CounterMetricFamily(
            "reactorapp_sse_resumed",
            "Event streams that attached to an existing named session.",
            value=stats.sse_resumed)
        yield CounterMetricFamily(
            "reactorapp_sse_replayed",
            "Events a resumed stream got from what its session kept (queued while no"
            " stream was attached, or sent and not acknowledged).",
            value=stats.sse_replayed)
        yield GaugeMetricFamily("reactorapp_websocket_connections",
                                "MQTT connections over WebSocket open now.",
                                value=stats.websocket_connections)

def new_registry() -> CollectorRegistry:
    """A registry of our own: the process-wide default one would collect
    every hub a test process builds."""
    return CollectorRegistry(auto_describe=True)

class Metrics(JSONResource):
    """GET /metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def json_GET(self, request):
        """The format the scraper asks for in Accept (Prometheus text 0.0.4
        when it names none, OpenMetrics when asked)."""
        accept = (request.getHeader(b"Accept") or b"").decode("latin-1")
        encode, content_type = choose_encoder(accept)
        return Body(encode(self.registry), content_type.encode("latin-1"))
