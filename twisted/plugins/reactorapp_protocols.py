"""The protocols built into reactorapp, offered to ``--listen`` as plugins.

Only descriptors: the protocol code is imported when a listener uses it.
"""

from reactorapp.plugins import ProtocolPlugin

line = ProtocolPlugin(
    "line",
    "Text lines for telnet and netcat: LOGIN, SUB, UNSUB, PUB, PING.",
    factory="reactorapp.protocols.line.LineFactory",
    options="reactorapp.protocols.line.LineOptions",
)
