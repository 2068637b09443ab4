"""Offers the lpframe protocol to ``twistd reactorapp --listen lpframe:ENDPOINT``.

Names the code instead of importing it: scanning plugins stays cheap.
"""

from reactorapp.plugins import ProtocolPlugin

lpframe = ProtocolPlugin(
    "lpframe",
    "Length-prefixed binary frames (example plugin).",
    factory="lpframe.protocol.FrameFactory",
    options="lpframe.protocol.FrameOptions",
)
