"""What a node keeps of a persistent session that moved to another node,
for the messages already on their way to it here.

Other nodes send a message to this node's stream while they believe the
session's filters are here; the session's new node announces the filters
before it tells this node to let the session go, but a node may still add
to this stream what it routed before hearing of the new node, and this node
may read it only later (its reader held by a slow subscriber, say). When
this node lets a session go it puts a `MovedSession` in its place, in the
topic tree only (its filters are not announced): what comes from other
nodes for those filters goes on to the session's holder through the store
(`RedisStore.forward`), until this node has read its stream up to where it
ended one node expiry after the move.

A message a node had already sent to the new node as well arrives there
twice: at least once, across the move.
"""

from __future__ import annotations

from zope.interface import implementer

from reactorapp.cluster.encoding import pack_entry
from reactorapp.hub.interfaces import ISubscriber


@implementer(ISubscriber)
class MovedSession:
    """Stands for the session of ``client_id`` (now on another node) in
    this node's topic tree, for messages from other nodes."""

    def __init__(self, cluster_hub, client_id: str, subscriptions: dict) -> None:
        self.cluster_hub = cluster_hub
        self.client_id = client_id
        #: Plain filters only: a share group is served by its live members.
        self.filters = {f: qos for f, qos in subscriptions.items()
                        if not f.startswith("$share/")}

    def start(self) -> None:
        for topic_filter, qos in self.filters.items():
            self.cluster_hub.add_remote(self, topic_filter, qos)

    def stop(self) -> None:
        self.cluster_hub.remove_remote(self, list(self.filters))

    def deliver(self, message, qos, retained):
        cluster_hub = self.cluster_hub
        if cluster_hub.incoming is not message:
            return None  # published here: routing finds the new node itself
        store = cluster_hub.store
        store.forward(self.client_id, pack_entry(message, qos, False))
        return store.pending_commit() if qos else None

    def __repr__(self) -> str:
        return f"MovedSession({self.client_id!r})"
