"""Telling connected clients that the broker is going away.

On SIGTERM twistd stops the services, then the reactor drops every
connection. MQTT 5 clients are told first: DISCONNECT 0x8B Server shutting
down (3.1.1 clients, which have no such packet, are closed as before), and
the broker waits a moment, bounded, for those packets to be written.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from reactorapp.mqtt.packets import ReasonCode

#: Seconds shutdown waits at most for the DISCONNECTs to be written.
DRAIN = 1.0
#: Seconds between two looks.
LOOK = 0.05


class DisconnectOnStop(Service):
    """Added last to the hub's service, so it stops first (a `MultiService`
    stops its children in reverse), before the store closes."""

    def __init__(self, hub, clock) -> None:
        self.hub = hub
        self.clock = clock

    def stopService(self):
        super().stopService()
        transports = []
        for session in list(self.hub.sessions().values()):
            connection = session.connection
            if connection is not None:
                transports.append(connection.transport)
                connection.disconnect(ReasonCode.SERVER_SHUTTING_DOWN)
        open_ = [t for t in transports if getattr(t, "connected", False)]
        if not open_:
            return None
        deadline = self.clock.seconds() + DRAIN

        def look():
            if self.clock.seconds() >= deadline or not any(
                    getattr(t, "connected", False) for t in open_):
                loop.stop()

        loop = LoopingCall(look)
        loop.clock = self.clock
        return loop.start(LOOK, now=False).addCallback(lambda _: None)
