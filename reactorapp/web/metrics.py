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
        yield GaugeMetricFamily("reactorapp_clients_connected",
                                "MQTT clients connected now.", value=stats.clients_connected)
        yield GaugeMetricFamily("reactorapp_clients_maximum",
                                "Most MQTT clients connected at once.",
                                value=stats.clients_maximum)
        yield GaugeMetricFamily("reactorapp_sessions",
                                "MQTT sessions, connected or kept for later.",
                                value=hub.session_count)
        yield GaugeMetricFamily("reactorapp_subscriptions", "Subscriptions in the hub.",
                                value=hub.subscription_count)
        yield GaugeMetricFamily("reactorapp_retained_messages", "Retained messages stored.",
                                value=hub.retained_count)

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
        yield CounterMetricFamily(
            "reactorapp_messages_dropped",
            "Messages not delivered because a queue or buffer was full.",
            value=stats.publish_dropped)
        yield CounterMetricFamily("reactorapp_mqtt_packets_received",
                                  "MQTT control packets received.", value=stats.messages_received)
        yield CounterMetricFamily("reactorapp_mqtt_packets_sent",
                                  "MQTT control packets sent.", value=stats.messages_sent)
        yield CounterMetricFamily("reactorapp_mqtt_received_bytes",
                                  "Bytes received on MQTT connections.",
                                  value=stats.bytes_received)
        yield CounterMetricFamily("reactorapp_mqtt_sent_bytes",
                                  "Bytes sent on MQTT connections.", value=stats.bytes_sent)


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
