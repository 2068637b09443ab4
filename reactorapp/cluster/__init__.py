"""Several nodes as one broker, sharing a Redis (or Valkey) server.

See docs/cluster.md for the design: the node registry (`node`), which
filters each node wants (`hub`, `remote`), messages between nodes on one
Redis stream per node (`outbox`, `inbox`, `frames`), the connections to
Redis (`link`, `url`), and what the nodes keep in Redis: retained messages
and persistent sessions (`redisstore`, `scripts`, `encoding`, `blocking`),
webhook rules and outboxes (`webhookstore`).
"""
