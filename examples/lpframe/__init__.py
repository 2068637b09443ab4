"""Length-prefixed binary frames for reactorapp: an example protocol plugin."""
