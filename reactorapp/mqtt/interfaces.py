"""The seam between an MQTT `Session` and the live connection it delivers to.

A `Session` (and the admin API, which finds sessions in the hub's registry)
use a connection only through `IConnection`: web/ never reaches into an MQTT
protocol's transport, factory or keep-alive. No logic here.
"""

from zope.interface import Attribute, Interface


class IConnection(Interface):
    """One client's live connection, bound to its session after CONNACK."""

    writable = Attribute(
        "True while the connection's output is not congested: a message "
        "handed to it now is written at once (`reactorapp.hub.flow`).")

    def hold_input():
        """Congested but draining: hold back the input being routed now (the
        publisher) and return True, so the message may be written all the
        same; False if the output is stuck and nobody may be held."""

    def send_publish0(message, retained):
        """Write a QoS 0 PUBLISH of ``message``; False if it was not written
        because it is larger than the client takes (MQTT 5 Maximum Packet
        Size), True otherwise."""

    def send_publish(message, qos, retained, packet_id, dup):
        """Write a QoS 1/2 PUBLISH of ``message`` under ``packet_id``; False
        if it was not written, being larger than the client takes: the
        session is then done with it, as if acknowledged [MQTT-3.1.2-25]."""

    def send_pubrel(packet_id):
        """Write a PUBREL (re-sent for an unfinished QoS 2 exchange)."""

    def take_over():
        """Another connection claimed this client id: close (MQTT 5:
        DISCONNECT 0x8E), handing on the will (this is not a DISCONNECT)."""

    def disconnect(reason_code=0x98):
        """Drop the connection as the server does on a protocol error (MQTT
        5 clients get a DISCONNECT with ``reason_code``, 0x98 Administrative
        action by default): the will is handed on, a persistent session
        stays [MQTT-3.1.2-8]."""

    def describe():
        """What the admin API shows of the connection, as JSON values:
        ``front_end`` ("mqtt", "websocket", ...), ``keep_alive`` (seconds),
        ``peer`` (host:port, or None), ``protocol_version`` ("5.0", "3.1.1"
        or "3.1"), and for MQTT 5 ``limits``: what each side allows (receive
        maximum, maximum packet size, topic alias maximum) and the
        session's expiry in seconds (None: never)."""
