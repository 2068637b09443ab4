"""Retained ``$SYS/broker/...`` topics with the hub's counters, as Mosquitto has them."""

from __future__ import annotations

import math
import os
import resource
import sys

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from reactorapp.hub.counters import sys_topics
from reactorapp.hub.message import Message


# Topic -> how to read its value from the hub. Same names as Mosquitto's.
SYS_TOPICS = sys_topics()

#: ``$SYS/broker/load/NAME/{1min,5min,15min}`` -> the counter it is the rate of.
LOAD_TOPICS = {
    "messages/received": "messages_received",
    "messages/sent": "messages_sent",
    "publish/received": "publish_received",
    "publish/sent": "publish_sent",
    "publish/dropped": "publish_dropped",
    "bytes/received": "bytes_received",
    "bytes/sent": "bytes_sent",
    "connections": "connections",
}
#: Averaging windows, in seconds, and their topic suffixes.
LOAD_WINDOWS = ((60.0, "1min"), (300.0, "5min"), (900.0, "15min"))


class LoadAverages:
    """Per-minute rates of counters, smoothed like Unix load averages.

    Mosquitto's formula: each round, ``rate = delta * 60 / seconds``, and
    every average moves towards it by ``1 - exp(-seconds / window)``.
    """

    def __init__(self, now: float, counters: dict[str, int]) -> None:
        self._at = now
        self._last = dict(counters)
        self.averages = {(name, window): 0.0 for name in counters for window, _ in LOAD_WINDOWS}

    def update(self, now: float, counters: dict[str, int]) -> None:
        seconds = now - self._at
        if seconds <= 0:
            return
        for name, value in counters.items():
            rate = (value - self._last[name]) * 60.0 / seconds
            for window, _ in LOAD_WINDOWS:
                key = (name, window)
                self.averages[key] = rate + math.exp(-seconds / window) * (self.averages[key] - rate)
        self._at = now
        self._last = dict(counters)


def process_memory() -> tuple[int, int] | None:
    """(resident bytes now, most resident bytes so far) of this process, or
    None where the system does not say (the resident size is read from
    /proc, so on Linux only)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    current = pages * os.sysconf("SC_PAGE_SIZE")
    return current, max(peak, current)


class SysTopicsService(service.Service):
    """Every ``interval`` seconds, publish the hub's counters as retained messages.

    Like Mosquitto, a topic is published again only when its value changed,
    except the uptime, so that idle brokers stay quiet. An interval of 0 turns
    the topics off. ``memory`` reads the process's memory for ``heap/*``
    (Python has no heap counter of its own: the resident size stands in).
    """

    log = Logger()

    def __init__(self, hub, clock, interval: float, version: str, memory=process_memory):
        self.hub = hub
        self.clock = clock
        self.interval = interval
        self.version = version
        self.memory = memory
        self._last: dict[str, bytes] = {}
        self._loop: LoopingCall | None = None
        self._load: LoadAverages | None = None

    def startService(self):
        super().startService()
        if self.interval > 0:
            self._load = LoadAverages(self.clock.seconds(), self._counters())
            self._loop = LoopingCall(self.publishAll)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True).addErrback(self._ebLoop)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def _counters(self) -> dict[str, int]:
        stats = self.hub.stats
        return {name: getattr(stats, name) for name in LOAD_TOPICS.values()}

    def publishAll(self) -> None:
        """Publish the uptime and every value that changed since last time."""
        self._publish("$SYS/broker/version", f"reactorapp version {self.version}", always=False)
        now = self.clock.seconds()
        uptime = int(now - self.hub.stats.started_at)
        self._publish("$SYS/broker/uptime", f"{uptime} seconds", always=True)
        for topic, read in SYS_TOPICS.items():
            self._publish(topic, str(read(self.hub)), always=False)
        if self._load is None:
            self._load = LoadAverages(now, self._counters())
        self._load.update(now, self._counters())
        averages = self._load.averages
        for name, counter in LOAD_TOPICS.items():
            for window, suffix in LOAD_WINDOWS:
                self._publish(f"$SYS/broker/load/{name}/{suffix}",
                              f"{averages[counter, window]:.2f}", always=False)
        memory = self.memory()
        if memory is not None:
            self._publish("$SYS/broker/heap/current", str(memory[0]), always=False)
            self._publish("$SYS/broker/heap/maximum", str(memory[1]), always=False)

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
