"""The hub's figures, named once for everyone who shows them.

`/metrics` (a Prometheus name and help text), the `$SYS/broker/...` topics
(Mosquitto's names) and `GET /api/v1/stats` (a place in its JSON) all read
the same numbers. Each `Figure` says how to read one from the hub and under
which names each of them shows it, so a new figure, or a changed reading,
is written here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One number the hub keeps, and where it is shown."""

    #: Reads it from a hub (`reactorapp.hub.interfaces.IHub`).
    read: Callable[[object], float]
    #: ``reactorapp_`` + this on /metrics (without ``_total``), or None.
    metric: str | None = None
    #: "gauge" or "counter" on /metrics.
    kind: str = "counter"
    #: The help text on /metrics.
    help: str = ""
    #: Its ``$SYS/broker/...`` topics (Mosquitto has renamed some).
    sys_topics: tuple[str, ...] = ()
    #: Its place in /api/v1/stats, as keys from the top, or None.
    api: tuple[str, ...] | None = None


def _stat(name: str) -> Callable[[object], float]:
    return lambda hub: getattr(hub.stats, name)


def _disconnected(hub) -> int:
    return hub.session_count - hub.stats.clients_connected


FIGURES = (
    Figure(_stat("clients_connected"), "clients_connected", "gauge",
           "MQTT clients connected now.",
           ("$SYS/broker/clients/connected", "$SYS/broker/clients/active"),
           ("clients", "connected")),
    Figure(_stat("clients_maximum"), "clients_maximum", "gauge",
           "Most MQTT clients connected at once.",
           ("$SYS/broker/clients/maximum",), ("clients", "maximum")),
    Figure(lambda hub: hub.session_count, "sessions", "gauge",
           "MQTT sessions, connected or kept for later.",
           ("$SYS/broker/clients/total",), ("clients", "sessions")),
    Figure(_disconnected,
           sys_topics=("$SYS/broker/clients/disconnected", "$SYS/broker/clients/inactive")),
    Figure(_stat("sessions_expired"), sys_topics=("$SYS/broker/clients/expired",)),
    Figure(lambda hub: hub.subscription_count, "subscriptions", "gauge",
           "Subscriptions in the hub.", ("$SYS/broker/subscriptions/count",),
           ("subscriptions",)),
    Figure(lambda hub: len(hub.shared_groups()), "shared_subscriptions", "gauge",
           "Shared subscriptions ($share/GROUP/FILTER) with at least one member.",
           api=("shared", "groups")),
    Figure(_stat("shared_deliveries"), "shared_deliveries", "counter",
           "Messages given to one member of a shared subscription.",
           api=("shared", "deliveries")),
    Figure(_stat("shared_handed_over"), "shared_handed_over", "counter",
           "Shared-subscription messages given to another member because the first"
           " went away without acknowledging them.", api=("shared", "handed_over")),
    Figure(lambda hub: hub.retained_count, "retained_messages", "gauge",
           "Retained messages stored.", ("$SYS/broker/retained messages/count",),
           ("retained",)),
    Figure(_stat("publish_dropped"), "messages_dropped", "counter",
           "Messages not delivered because a queue or buffer was full.",
           ("$SYS/broker/publish/messages/dropped",), ("messages", "dropped")),
    Figure(_stat("publish_too_large"), "messages_too_large", "counter",
           "Messages not sent to an MQTT 5 client because they were larger than its"
           " Maximum Packet Size.", (), ("messages", "too_large")),
    Figure(_stat("messages_expired"), "messages_expired", "counter",
           "MQTT 5 messages never delivered because their Message Expiry Interval passed.",
           ("$SYS/broker/publish/messages/expired",), ("messages", "expired")),
    Figure(_stat("publish_received"), sys_topics=("$SYS/broker/publish/messages/received",)),
    Figure(_stat("publish_sent"), sys_topics=("$SYS/broker/publish/messages/sent",)),
    Figure(_stat("messages_received"), "mqtt_packets_received", "counter",
           "MQTT control packets received.", ("$SYS/broker/messages/received",),
           ("mqtt", "packets_received")),
    Figure(_stat("messages_sent"), "mqtt_packets_sent", "counter",
           "MQTT control packets sent.", ("$SYS/broker/messages/sent",),
           ("mqtt", "packets_sent")),
    Figure(_stat("bytes_received"), "mqtt_received_bytes", "counter",
           "Bytes received on MQTT connections.", ("$SYS/broker/bytes/received",),
           ("mqtt", "bytes_received")),
    Figure(_stat("bytes_sent"), "mqtt_sent_bytes", "counter",
           "Bytes sent on MQTT connections.", ("$SYS/broker/bytes/sent",),
           ("mqtt", "bytes_sent")),
)


def sys_topics() -> dict[str, Callable[[object], float]]:
    """``$SYS`` topic -> how to read its value, for every figure."""
    return {topic: figure.read for figure in FIGURES for topic in figure.sys_topics}


def api_tree(hub) -> dict:
    """The figures that /api/v1/stats shows, nested as it shows them."""
    tree: dict = {}
    for figure in FIGURES:
        if figure.api is None:
            continue
        *parents, leaf = figure.api
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = figure.read(hub)
    return tree
