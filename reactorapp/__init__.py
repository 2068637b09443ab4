"""reactorapp: a message hub on Twisted's reactor (MQTT broker, HTTP API, webhooks)."""

__version__ = "0.1.0"
