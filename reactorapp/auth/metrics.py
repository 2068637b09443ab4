"""Refusals and limits on /metrics: a collector that reads `GuardStats` and
the slow-subscriber counters of `HubStats`."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_COUNTERS = (
    ("connections_refused", "Connections closed at once because of --max-connections or"
                            " --max-connections-per-address."),
    ("connect_timeouts", "Connections closed because CONNECT did not arrive within"
                         " --connect-timeout."),
    ("bad_credentials", "Clients refused for a wrong user name, password or certificate."),
    ("not_authorized", "Clients refused as not authorised (anonymous, or a forbidden will)."),
    ("publish_denied", "PUBLISHes dropped because the ACL forbids the topic."),
    ("subscribe_denied", "Topic filters refused (0x80) because the ACL forbids them."),
    ("deliveries_denied", "Messages not delivered because the ACL forbids reading the topic."),
    ("subscriptions_over_limit", "Topic filters refused (0x80) because of --max-subscriptions."),
    ("publish_throttled", "Times a client was paused for publishing faster than --publish-rate."),
    ("logins_busy", "HTTP Basic log-ins answered 503 because as many as the bound were"
                    " being checked (scrypt) already."),
)


_QUEUE_COUNTERS = (
    ("queue_dropped_qos0", "QoS 0 messages dropped, oldest first, from a full session queue"
                           " (also in reactorapp_messages_dropped_total)."),
    ("queue_refused", "QoS 1 and 2 messages refused by an offline session with no room left"
                      " (also in reactorapp_messages_dropped_total)."),
    ("queue_spilled", "QoS 1 and 2 messages moved to a session's spill file on disk."),
    ("publishers_held", "Times a publisher's acknowledgement waited for a full subscriber."),
    ("inputs_held", "Times the broker stopped reading from a publisher (or answering an HTTP"
                    " publish) until a subscriber over --send-buffer drained."),
    ("slow_subscribers", "Times a client drained nothing for --slow-subscriber-timeout and was"
                         " marked slow: it holds no publisher back, its QoS 0 messages are"
                         " dropped past its queue bounds."),
)


class GuardCollector:
    def __init__(self, guard, hub) -> None:
        self.guard = guard
        self.hub = hub

    def collect(self):
        stats = self.guard.stats
        for name, text in _COUNTERS:
            yield CounterMetricFamily(f"reactorapp_{name}", text, value=getattr(stats, name))
        hub_stats = self.hub.stats
        for name, text in _QUEUE_COUNTERS:
            yield CounterMetricFamily(f"reactorapp_{name}", text, value=getattr(hub_stats, name))
        yield GaugeMetricFamily("reactorapp_queue_spill_bytes",
                                "Bytes in sessions' spill files on disk, not yet read back.",
                                value=hub_stats.spill_bytes)
        yield GaugeMetricFamily("reactorapp_connections_open",
                                "MQTT connections open now, authenticated or not.",
                                value=self.guard.limiter.total)
