"""``GET /api/v1/cluster``: the live nodes, read from Redis."""

from __future__ import annotations

from reactorapp.web.errors import ApiError, JSONResource


_NODE = {"type": "object", "properties": {
    "name": {"type": "string"}, "self": {"type": "boolean"},
    "address": {"type": "object", "description": "Listener addresses by protocol (mqtt, http).",
                "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    "started": {"type": "number", "description": "Unix time the node started."},
    "heartbeat": {"type": "number", "description": "Unix time of its last heartbeat."},
    "clients": {"type": "integer", "description": "Clients connected at that heartbeat."},
    "filters": {"type": "integer",
                "description": "Filters this node knows the other has subscribers for."},
}}

OPENAPI = {"paths": {"/api/v1/cluster": {"get": {
    "summary": "The live nodes of the cluster", "operationId": "cluster",
    "description": "Nodes whose heartbeat has not expired, read from Redis. Without"
                   " --cluster: this node alone is the hub, and the list is empty.",
    "responses": {
        "200": {"description": "This node's name and the live nodes.", "content": {
            "application/json": {"schema": {"type": "object", "properties": {
                "node": {"type": ["string", "null"]},
                "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/ClusterNode"}},
            }}}}},
        "503": {"description": "Redis is unreachable from this node.", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    }}}},
    "components": {"schemas": {"ClusterNode": _NODE}}}


class ClusterResource(JSONResource):
    """This node's name and every node whose heartbeat has not expired."""

    isLeaf = True
    #: Merged into /api/v1/openapi.json.
    openapi = OPENAPI

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
