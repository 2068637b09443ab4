"""MQTT front end: a sans-I/O codec, per-client sessions and the Twisted protocol."""
