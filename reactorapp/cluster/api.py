"""``GET /api/v1/cluster``: the live nodes, read from Redis."""

from __future__ import annotations

from reactorapp.web.errors import ApiError, JSONResource


class ClusterResource(JSONResource):
    """This node's name and every node whose heartbeat has not expired."""

    isLeaf = True

    def __init__(self, node) -> None:
        super().__init__()
        self.node = node

    def json_GET(self, request):
        node = self.node
        if node is None:
            return {"node": None, "nodes": [],
                    "detail": "This hub runs alone (no --cluster)."}
        if not node.commands.connected:
            raise ApiError(503, "redis unavailable",
                           f"{node.not_ready_reason()}; the node list lives there.")
        d = node.describe()
        d.addCallback(lambda nodes: {"node": node.node_name, "nodes": nodes})
        return d
