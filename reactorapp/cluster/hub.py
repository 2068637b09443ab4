"""The hub of a cluster node: the one-node `Hub`, plus what the cluster
must know of it (which filters have local subscribers, which client ids
connect) and the two ways a message leaves it for other nodes."""

from __future__ import annotations

from reactorapp.hub.commit import Commit, placed
from reactorapp.hub.hub import Hub
from reactorapp.hub.shared import REFUSED, share_state
from reactorapp.hub.topics import is_broker_topic


class ClusterHub(Hub):
    """A `Hub` that tells its `node` about local filters and client ids.

    Other nodes are subscribers in the same `TopicTree` as local ones
    (`reactorapp.cluster.remote.RemoteNode`, added with `add_remote`), so
    routing finds them the way it finds anyone: once each, at most once per
    message. A message that came from another node is routed with
    ``incoming`` set to it, and the remote nodes skip it: a message crosses
    the cluster once, and is never forwarded again.

    Shared subscriptions are announced whole (``$share/GROUP/FILTER``), so
    another node is one member of each group it has members of, chosen in
    turn with the local ones; the frame it gets names the groups it was
    chosen for (`reactorapp.cluster.frames.with_groups`), and a message
    from another node goes to a group here only if this node was chosen
    for it: each group gets each message once across the cluster.
    """

    def __init__(self, clock, **kwargs) -> None:
        super().__init__(clock, **kwargs)
        #: The `reactorapp.cluster.node.ClusterNode`, set at wiring time.
        self.node = None
        #: The message being routed from another node, if any, and the
        #: shared subscriptions this node was chosen for.
        self.incoming = None
        self._incoming_groups: tuple = ()
        #: Filter (a shared one whole) -> {(subscriber, filter)}.
        self._local: dict[str, set] = {}
        #: Subscribers that want only what is published on this node
        #: (``cluster_local``: webhook rules) -> the `_ThisNodeOnly` in the tree.
        self._this_node_only: dict = {}
        #: Subscriptions of other nodes in the tree (not counted as ours).
        self._remote_count = 0

    # -- local subscriptions, as other nodes must know them ----------------

    def subscribe(self, subscriber, topic_filter, qos):
        retained = super().subscribe(self._in_tree(subscriber), topic_filter, qos)
        self._added(subscriber, topic_filter)
        return retained

    def unsubscribe(self, subscriber, topic_filter):
        existed = super().unsubscribe(self._in_tree(subscriber), topic_filter)
        if existed:
            self._removed(subscriber, topic_filter)
        return existed

    def unsubscribe_all(self, subscriber, topic_filters):
        topic_filters = list(topic_filters)
        super().unsubscribe_all(self._in_tree(subscriber), topic_filters)
        for topic_filter in topic_filters:
            self._removed(subscriber, topic_filter)

    def _in_tree(self, subscriber):
        """What stands for ``subscriber`` in the topic tree: itself, or for
        a ``cluster_local`` one (a webhook rule, served by every node for
        what was published on it) a `_ThisNodeOnly` that skips messages
        from other nodes, which their own rule has taken already."""
        if not getattr(subscriber, "cluster_local", False):
            return subscriber
        stand_in = self._this_node_only.get(subscriber)
        if stand_in is None:
            stand_in = self._this_node_only[subscriber] = _ThisNodeOnly(subscriber, self)
        return stand_in

    @property
    def subscription_count(self) -> int:
        return len(self._subscriptions) - self._remote_count

    def local_filters(self) -> list[str]:
        """The filters this node has subscribers for (a shared one whole,
        ``$share/GROUP/FILTER``: other nodes count this node as one member
        of the group)."""
        return list(self._local)

    def _added(self, subscriber, topic_filter: str) -> None:
        if getattr(subscriber, "cluster_local", False):
            return  # wants only what is published on this node (webhook rules)
        holders = self._local.get(topic_filter)
        if holders is None:
            holders = self._local[topic_filter] = set()
            if self.node is not None:
                self.node.filter_added(topic_filter)
        holders.add(subscriber)

    def _removed(self, subscriber, topic_filter: str) -> None:
        if getattr(subscriber, "cluster_local", False):
            return
        holders = self._local.get(topic_filter)
        if holders is None:
            return
        holders.discard(subscriber)
        if not holders:
            del self._local[topic_filter]
            if self.node is not None:
                self.node.filter_removed(topic_filter)

    # -- other nodes as subscribers ----------------------------------------

    def add_remote(self, remote, topic_filter: str, qos: int = 2) -> None:
        """Route messages matching ``topic_filter`` to the node ``remote``
        (at the published QoS: its own subscribers get what they asked for),
        without announcing the filter (a `MovedSession` too, at its QoS)."""
        if self._subscriptions.add(topic_filter, remote, qos):
            self._remote_count += 1

    def remove_remote(self, remote, topic_filters) -> None:
        for topic_filter in list(topic_filters):
            if self._subscriptions.remove(topic_filter, remote):
                self._remote_count -= 1

    # -- routing -----------------------------------------------------------

    def route_incoming(self, message, groups: tuple = ()):
        """Route a message from another node to this node's subscribers
        only: its plain subscribers, and one member of each shared
        subscription in ``groups`` (those the sending node chose this node
        for; no other group gets it here)."""
        self.incoming = message
        self._incoming_groups = groups
        try:
            return self.route(message)
        finally:
            self.incoming = None
            self._incoming_groups = ()

    def _deliver_shared(self, group, message, skip=None, connected_only=False):
        if self.incoming is message and group.share_filter not in self._incoming_groups:
            return REFUSED  # the sending node gave it to this group elsewhere
        return super()._deliver_shared(group, message, skip, connected_only)

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

    def claim(self, client_id: str, clean: bool = False) -> None:
        if self.node is not None:
            self.node.claim(client_id, clean)


class _ThisNodeOnly:
    """A subscriber that takes only messages published on this node."""

    __slots__ = ("subscriber", "cluster_hub")

    def __init__(self, subscriber, cluster_hub: ClusterHub) -> None:
        self.subscriber = subscriber
        self.cluster_hub = cluster_hub

    def deliver(self, message, qos, retained):
        if self.cluster_hub.incoming is message:
            return None
        return self.subscriber.deliver(message, qos, retained)

    def deliver_shared(self, message, qos, share_filter):
        """A member of a shared subscription: a message from another node
        goes to another member (this node's rule did not take it)."""
        if self.cluster_hub.incoming is message:
            return REFUSED
        take = getattr(self.subscriber, "deliver_shared", None)
        if take is None:
            return self.subscriber.deliver(message, qos, False)
        return take(message, qos, share_filter)

    def share_state(self, qos: int) -> int:
        return share_state(self.subscriber, qos)

    def __repr__(self) -> str:
        return f"_ThisNodeOnly({self.subscriber!r})"
