"""Several nodes as one hub, sharing a Redis server: the Redis store of
retained messages, sessions and webhook rules."""
