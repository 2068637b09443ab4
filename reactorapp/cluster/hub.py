"""The hub of a cluster node: the one-node `Hub`, plus what the cluster
must know of it (which filters have local subscribers, which client ids
connect) and the two ways a message leaves it for other nodes."""

from __future__ import annotations

from reactorapp.hub.commit import Commit, placed
from reactorapp.hub.hub import Hub
from reactorapp.hub.topics import is_broker_topic, parse_shared


class ClusterHub(Hub):
    """A `Hub` that tells its `node` about local filters and client ids.

    Other nodes are subscribers in the same `TopicTree` as local ones
    (`reactorapp.cluster.remote.RemoteNode`, added with `add_remote`), so
    routing finds them the way it finds anyone: once each, at most once per
    message. A message that came from another node is routed with
    ``incoming`` set to it, and the remote nodes skip it: a message crosses
    the cluster once, and is never forwarded again.
    """

    def __init__(self, clock, **kwargs) -> None:
        super().__init__(clock, **kwargs)
        #: The `reactorapp.cluster.node.ClusterNode`, set at wiring time.
        self.node = None
        #: The message being routed from another node, if any.
        self.incoming = None
        #: Filter (shared ones by their inner filter) -> {(subscriber, filter)}.
        self._local: dict[str, set] = {}

    # -- local subscriptions, as other nodes must know them ----------------

    def subscribe(self, subscriber, topic_filter, qos):
        retained = super().subscribe(subscriber, topic_filter, qos)
        self._added(subscriber, topic_filter)
        return retained

    def unsubscribe(self, subscriber, topic_filter):
        existed = super().unsubscribe(subscriber, topic_filter)
        if existed:
            self._removed(subscriber, topic_filter)
        return existed

    def unsubscribe_all(self, subscriber, topic_filters):
        topic_filters = list(topic_filters)
        super().unsubscribe_all(subscriber, topic_filters)
        for topic_filter in topic_filters:
            self._removed(subscriber, topic_filter)

    def local_filters(self) -> list[str]:
        """The filters this node has subscribers for (a shared one as its
        inner filter: a share group is served per node)."""
        return list(self._local)

    def _added(self, subscriber, topic_filter: str) -> None:
        if getattr(subscriber, "cluster_local", False):
            return  # wants only what is published on this node (webhook rules)
        inner = parse_shared(topic_filter)[1]
        holders = self._local.get(inner)
        if holders is None:
            holders = self._local[inner] = set()
            if self.node is not None:
                self.node.filter_added(inner)
        holders.add((subscriber, topic_filter))

    def _removed(self, subscriber, topic_filter: str) -> None:
        if getattr(subscriber, "cluster_local", False):
            return
        inner = parse_shared(topic_filter)[1]
        holders = self._local.get(inner)
        if holders is None:
            return
        holders.discard((subscriber, topic_filter))
        if not holders:
            del self._local[inner]
            if self.node is not None:
                self.node.filter_removed(inner)

    # -- other nodes as subscribers ----------------------------------------

    def add_remote(self, remote, topic_filter: str) -> None:
        """Route messages matching ``topic_filter`` to the node ``remote``
        (at the published QoS: its own subscribers get what they asked for)."""
        self._subscriptions.add(topic_filter, remote, 2)

    def remove_remote(self, remote, topic_filters) -> None:
        self._subscriptions.remove_all(remote, list(topic_filters))

    # -- routing -----------------------------------------------------------

    def route_incoming(self, message):
        """Route a message from another node to this node's subscribers only."""
        self.incoming = message
        try:
            return self.route(message)
        finally:
            self.incoming = None

    def route(self, message):
        commit = super().route(message)
        node = self.node
        if (message.retain and node is not None and self.incoming is None
                and not is_broker_topic(message.topic)):
            # Every node keeps the retained messages, not only the nodes
            # with a matching subscriber now.
            more = node.broadcast_retained(message)
            if more is not None and more is not commit:
                commit = more if commit is None else Commit.after(placed(commit, [more.deferred()]))
        return commit

    # -- client ids ---------------------------------------------------------

    def claim(self, client_id: str) -> None:
        if self.node is not None:
            self.node.claim(client_id)
