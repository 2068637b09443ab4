"""Retained ``$SYS/broker/...`` topics with the hub's counters, as Mosquitto has them."""

from __future__ import annotations

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from reactorapp.hub.message import Message


def _stat(name):
    return lambda hub: getattr(hub.stats, name)


# Topic -> how to read its value from the hub. Same names as Mosquitto's.
SYS_TOPICS = {
    "$SYS/broker/clients/connected": _stat("clients_connected"),
    "$SYS/broker/clients/maximum": _stat("clients_maximum"),
    "$SYS/broker/clients/total": lambda hub: hub.session_count,
    "$SYS/broker/clients/disconnected":
        lambda hub: hub.session_count - hub.stats.clients_connected,
    "$SYS/broker/messages/received": _stat("messages_received"),
    "$SYS/broker/messages/sent": _stat("messages_sent"),
    "$SYS/broker/publish/messages/received": _stat("publish_received"),
    "$SYS/broker/publish/messages/sent": _stat("publish_sent"),
    "$SYS/broker/publish/messages/dropped": _stat("publish_dropped"),
    "$SYS/broker/bytes/received": _stat("bytes_received"),
    "$SYS/broker/bytes/sent": _stat("bytes_sent"),
    "$SYS/broker/subscriptions/count": lambda hub: hub.subscription_count,
    "$SYS/broker/retained messages/count": lambda hub: hub.retained_count,
}


class SysTopicsService(service.Service):
    """Every ``interval`` seconds, publish the hub's counters as retained messages.

    Like Mosquitto, a topic is published again only when its value changed,
    except the uptime, so that idle brokers stay quiet. An interval of 0 turns
    the topics off.
    """

    log = Logger()

    def __init__(self, hub, clock, interval: float, version: str):
        self.hub = hub
        self.clock = clock
        self.interval = interval
        self.version = version
        self._last: dict[str, bytes] = {}
        self._loop: LoopingCall | None = None

    def startService(self):
        super().startService()
        if self.interval > 0:
            self._loop = LoopingCall(self.publishAll)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True).addErrback(self._ebLoop)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def publishAll(self) -> None:
        """Publish the uptime and every value that changed since last time."""
        self._publish("$SYS/broker/version", f"reactorapp version {self.version}", always=False)
        uptime = int(self.clock.seconds() - self.hub.stats.started_at)
        self._publish("$SYS/broker/uptime", f"{uptime} seconds", always=True)
        for topic, read in SYS_TOPICS.items():
            self._publish(topic, str(read(self.hub)), always=False)

    def _publish(self, topic: str, text: str, always: bool) -> None:
        payload = text.encode("ascii")
        if not always and self._last.get(topic) == payload:
            return
        self._last[topic] = payload
        result = self.hub.publish(Message(topic, payload, qos=0, retain=True))
        if result is not None:
            result.addErrback(self._ebPublish, topic)

    def _ebLoop(self, failure):
        self.log.failure("$SYS updates stopped", failure)

    def _ebPublish(self, failure, topic):
        self.log.failure("Cannot publish {topic}", failure, topic=topic)
