"""The persistent sessions of a node that is gone, taken over by a live one.

A node killed (or stopped) leaves its clients' persistent sessions in Redis,
held by its name, and maybe entries in its stream that it had not handled:
messages acknowledged to their publishers. Until someone holds those
sessions, nobody subscribes for them. So one live node (the first to set
``reactorapp:adopt:NAME``) reads each of them from the store as if its
client had connected (`ISessionLoader.load_session`: this node holds it
from then on), which subscribes them here and announces their filters; then
it tells the others (``adopted``), who stop sending to the gone node, and
delivers what was left in the gone node's stream to those sessions only.
"""

from __future__ import annotations

from twisted.internet.defer import gatherResults

from reactorapp.hub.shared import REFUSED
from reactorapp.hub.topics import TopicTree


class Adopter:
    """Reads a gone node's sessions into this node's hub.

    ``store``: the cluster's `RedisStore` (``read``, ``load_session``,
    ``prefix``); ``restore(stored)``: puts a `StoredSession` into the hub
    as a detached session (`reactorapp.mqtt.session.restore_sessions`).
    """

    def __init__(self, store, restore, sessions) -> None:
        self.store = store
        self.restore = restore
        #: client id -> the hub's session, or None (`IHub.get_session`).
        self.sessions = sessions

    def adopt(self, node_name: str):
        """A Deferred of the sessions taken from ``node_name``."""
        d = self.store.read(b"HGETALL", self.store.prefix + b"sessions")
        d.addCallback(self._cbHolders, node_name.encode())
        return d

    def _cbHolders(self, flat, node_name: bytes):
        clients = [flat[i].decode() for i in range(0, len(flat) - 1, 2)
                   if flat[i + 1] == node_name]
        loads = [self.store.load_session(client_id).addCallback(self._cbLoaded, client_id)
                 for client_id in clients if self.sessions(client_id) is None]
        d = gatherResults(loads, consumeErrors=True)
        d.addCallback(lambda found: [s for s in found if s is not None])
        return d

    def _cbLoaded(self, stored, client_id: str):
        if stored is None or self.sessions(client_id) is not None:
            return None  # gone meanwhile, or its client connected here first
        self.restore(stored)
        return self.sessions(client_id)


class AdoptedSessions:
    """The sessions taken from a gone node, as the only subscribers of what
    was left in its stream (this node's own subscribers had their copy)."""

    def __init__(self, sessions) -> None:
        self.tree = TopicTree()
        for session in sessions:
            for topic_filter, qos in getattr(session, "subscriptions", {}).items():
                self.tree.add(topic_filter, session, qos)

    def deliver(self, message, groups: tuple = ()) -> list:
        """Deliver ``message`` to each matching session once, and to one
        member of each shared subscription in ``groups`` (those the gone
        node was chosen for); return what its placing waits for
        (`Commit`s, Deferreds)."""
        waits = []
        qos = message.qos
        plain, found = self.tree.lookup(message.topic)
        for session, granted in plain:
            wait = session.deliver(message, min(granted, qos), False)
            if wait is not None:
                waits.append(wait)
        for group in found:
            if group.share_filter not in groups:
                continue
            for member in group.candidates(qos):
                wait = member.deliver_shared(
                    message, min(group.members[member], qos), group.share_filter)
                if wait is not REFUSED:
                    group.took(member)
                    if wait is not None:
                        waits.append(wait)
                    break
        return waits
