"""The twistd dropin for reactorapp.

Nothing but a ServiceMaker: scanning plugins must never import the
application, and a dropin that fails to import silently vanishes from twistd.
"""

from twisted.application.service import ServiceMaker

reactorapp = ServiceMaker(
    "reactorapp",
    "reactorapp.tap",
    "An MQTT broker and message hub on Twisted's reactor.",
    "reactorapp",
)
