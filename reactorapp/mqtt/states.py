"""The states of an MQTT connection, as named constants that print their
names (like h11's sentinels), each with its table of what a packet does.

`reactorapp.mqtt.protocol` fills the tables: one dict per state, shared by
every connection, looked up by packet type (no if/elif chain on the state
for every packet, no bound methods per connection).
"""

from __future__ import annotations


class State:
    """One state of a connection: ``handlers`` maps a packet type to the
    function ``handler(protocol, packet)`` that handles it in this state."""

    __slots__ = ("name", "handlers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.handlers: dict = {}

    def __repr__(self) -> str:
        return self.name


#: Connected, no CONNECT yet: only a CONNECT is welcome [MQTT-3.1.0-1].
AWAITING_CONNECT = State("AWAITING_CONNECT")
#: CONNECT received, the authenticator has not answered: packets are held.
AUTHENTICATING = State("AUTHENTICATING")
#: MQTT 5 enhanced authentication: AUTH sent, the client's AUTH awaited.
CHALLENGED = State("CHALLENGED")
#: CONNACK 0 sent: the session is bound.
CONNECTED = State("CONNECTED")
#: Closed or closing: nothing read counts any more [MQTT-3.1.4-5].
CLOSED = State("CLOSED")
