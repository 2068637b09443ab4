"""Several nodes as one broker, sharing a Redis (or Valkey) server.

See docs/cluster.md for the design: the node registry (`node`), which
filters each node wants (`hub`, `remote`), messages between nodes on one
Redis stream per node (`outbox`, `inbox`, `frames`), and the connections to
Redis (`link`, `url`).
"""
