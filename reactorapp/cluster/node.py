"""A cluster node: its place in the registry, what it tells the others and
what it hears from them.

Redis keys (see docs/cluster.md):

- ``reactorapp:nodes`` (set): the names of the nodes that joined;
- ``reactorapp:node:NAME`` (hash, with a TTL of ``--cluster-node-expiry``):
  address, start time, last heartbeat, clients; refreshed by a heartbeat
  every third of the expiry. A node whose key has expired is gone;
- ``reactorapp:filters:NAME`` (set): the filters the node has subscribers for;
- ``reactorapp:stream:NAME`` (stream): messages for the node (`outbox`, `inbox`);
- ``reactorapp:client:ID`` (string): the node where the client id last connected;
- ``reactorapp:adopt:NAME`` (string, 30 s): the node taking over a gone
  node's sessions (`reactorapp.cluster.adopt`).

Notices on the channel ``reactorapp:notices`` (JSON): a filter added or
removed, a node's hello (read my filters again) and bye, a takeover, a node
behind or caught up, a gone node's sessions adopted.
"""

from __future__ import annotations

import json
import os
import socket

from twisted.application.service import Service
from twisted.internet.defer import DeferredList, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from reactorapp.cluster.inbox import Inbox, place_for_session
from reactorapp.cluster.link import RedisLink
from reactorapp.cluster.moved import MovedSession
from reactorapp.cluster.outbox import ClusterStats, Outbox, RemoteNode, stream_key

log = Logger()

NODES = "reactorapp:nodes"
NOTICES = "reactorapp:notices"


def node_key(name: str) -> str:
    return f"reactorapp:node:{name}"


def filters_key(name: str) -> str:
    return f"reactorapp:filters:{name}"


def client_key(client_id: str) -> str:
    return f"reactorapp:client:{client_id}"


def adopt_key(name: str) -> str:
    return f"reactorapp:adopt:{name}"


#: Milliseconds a node has to take over a gone node's sessions before
#: another may try.
ADOPT_LOCK_MS = 30_000
#: Seconds (at least) a command may wait for Redis's reply before the
#: connection is taken for dead and made again.
REPLY_TIMEOUT = 10.0
#: Entries of a gone node's stream read at a time.
DRAIN_COUNT = 500


def default_node_name(mqtt_endpoints) -> str:
    """The host name and the first fixed MQTT port (stable across restarts),
    or the host name and a random suffix when the port is chosen at start."""
    host = socket.gethostname()
    for description in mqtt_endpoints:
        parts = description.split(":")
        if len(parts) > 1 and parts[1].isdigit() and parts[1] != "0":
            return f"{host}:{parts[1]}"
    return f"{host}-{os.urandom(3).hex()}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterNode(Service):
    """Joins the cluster at start, keeps in touch while running, leaves at stop."""

    name = "cluster"

    def __init__(self, cluster_hub, url, node_name: str, reactor, *, expiry: float = 5.0,
                 slow_timeout: float = 5.0, addresses=lambda: {}, adopter=None) -> None:
        self.cluster_hub = cluster_hub
        self.url = url
        self.node_name = node_name
        self.clock = reactor
        self.expiry = expiry
        self.addresses = addresses
        #: Takes over the sessions of gone nodes (`reactorapp.cluster.adopt`).
        self.adopter = adopter
        self.started_at = reactor.seconds()
        self.stats = ClusterStats()
        #: Other live nodes by name.
        self.remotes: dict[str, RemoteNode] = {}
        self.commands = RedisLink(url, reactor, "commands", on_ready=self._ready,
                                  on_lost=self._lost, on_pause=self._paused,
                                  on_resume=self._resumed,
                                  reply_timeout=max(REPLY_TIMEOUT, 2 * expiry))
        self.notices = RedisLink(url, reactor, "notices", on_ready=self._ready,
                                 on_lost=self._lost, on_message=self._notice)
        self.reader = RedisLink(url, reactor, "stream", on_ready=self._reader_ready,
                                on_lost=self._lost)
        self.outbox = Outbox(cluster_hub, self.commands, reactor, self.stats, slow_timeout)
        self.inbox = Inbox(cluster_hub, self.reader, self.commands, stream_key(node_name),
                           self.stats, on_behind=self._behind)
        self._subscribed = False
        #: When the node last (re)joined: keys that expired while Redis was
        #: away are not taken for dead nodes until they had time to come back.
        self._joined_at = reactor.seconds()
        self._heartbeat = LoopingCall(self.heartbeat)
        self._heartbeat.clock = reactor
        cluster_hub.node = self

    # -- the service -------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Redis is reachable on every connection the node needs."""
        return self.commands.connected and self._subscribed and self.reader.connected

    def not_ready_reason(self) -> str | None:
        if self.connected:
            return None
        return f"Redis at {self.url} is not connected"

    def startService(self) -> None:
        super().startService()
        log.info("Cluster node {name} joining through Redis at {url}",
                 name=self.node_name, url=str(self.url))
        for link in (self.commands, self.notices, self.reader):
            link.start()
        self._heartbeat.start(self.expiry / 3, now=False)

    def stopService(self):
        super().stopService()
        if self._heartbeat.running:
            self._heartbeat.stop()
        leaving = self._leave() if self.commands.connected else None

        def stop_links(_=None):
            return DeferredList([link.stop() for link in
                                 (self.reader, self.notices, self.commands)])

        if leaving is None:
            return stop_links()
        leaving.addTimeout(2.0, self.clock)
        leaving.addErrback(self._ebRedis, "leaving the cluster")
        return leaving.addBoth(stop_links)

    def _leave(self):
        me = self.node_name
        return gatherResults([
            self.commands.command("DEL", node_key(me), filters_key(me)),
            self.commands.command("SREM", NODES, me),
            self._publish("bye"),
        ], consumeErrors=True)

    # -- connections -------------------------------------------------------

    def _ready(self, link) -> None:
        if link is self.notices:
            d = self.notices.blocking_command("SUBSCRIBE", NOTICES)
            d.addCallback(self._cbSubscribed)
            d.addErrback(lambda f: log.failure("Subscribing to cluster notices failed", f))
            return
        self.outbox.connected()
        self.inbox.delete_done()
        if self._subscribed:
            self._resync()

    def _cbSubscribed(self, _) -> None:
        self._subscribed = True
        if self.commands.connected:
            self._resync()

    def _reader_ready(self, link) -> None:
        self.inbox.connected()

    def _lost(self, link) -> None:
        if link is self.notices:
            self._subscribed = False

    def _paused(self) -> None:
        for remote in self.remotes.values():
            self.outbox.congest(remote)

    def _resumed(self) -> None:
        for remote in self.remotes.values():
            if not remote.behind:
                self.outbox.uncongest(remote)

    # -- what this node tells the others -----------------------------------

    def _publish(self, kind: str, **fields):
        fields.update(k=kind, n=self.node_name)
        return self.commands.command("PUBLISH", NOTICES, json.dumps(fields))

    def _resync(self) -> None:
        """(Re)joined: write our filters afresh, say hello, read everyone's."""
        me = self.node_name
        filters = self.cluster_hub.local_filters()
        commands = self.commands
        steps = []
        if filters:
            temporary = f"{filters_key(me)}:new"
            steps.append(commands.command("DEL", temporary))
            steps.append(commands.command("SADD", temporary, *filters))
            steps.append(commands.command("RENAME", temporary, filters_key(me)))
        else:
            steps.append(commands.command("DEL", filters_key(me)))
        steps.append(self._publish("hello"))
        self._joined_at = self.clock.seconds()
        d = gatherResults(steps, consumeErrors=True)
        d.addCallback(lambda _: self.heartbeat())
        d.addErrback(self._ebRedis, "joining the cluster")

    def filter_added(self, topic_filter: str) -> None:
        if not (self.commands.connected and self._subscribed):
            return  # written with the others when Redis is back (`_resync`)
        d = gatherResults([self.commands.command("SADD", filters_key(self.node_name),
                                                 topic_filter),
                           self._publish("+", f=topic_filter)], consumeErrors=True)
        d.addErrback(self._ebRedis, "announcing a subscription")

    def filter_removed(self, topic_filter: str) -> None:
        if not (self.commands.connected and self._subscribed):
            return
        d = gatherResults([self.commands.command("SREM", filters_key(self.node_name),
                                                 topic_filter),
                           self._publish("-", f=topic_filter)], consumeErrors=True)
        d.addErrback(self._ebRedis, "announcing an unsubscription")

    def broadcast_retained(self, message):
        return self.outbox.broadcast(list(self.remotes.values()), message)

    def claim(self, client_id: str, clean: bool = False) -> None:
        """Record that ``client_id`` is here; tell the node that had it
        (and whether its session ends there: ``clean``)."""
        if not self.commands.connected:
            return
        d = self.commands.command("SET", client_key(client_id), self.node_name, "GET")
        # On its way to Redis before CONNACK is: a client that then connects
        # to another node at once has its claim seen after this one.
        self.commands.flush()
        d.addCallback(self._cbClaimed, client_id, clean)
        d.addErrback(self._ebRedis, "claiming a client id")

    def _cbClaimed(self, previous, client_id: str, clean: bool):
        if previous is None or _text(previous) == self.node_name:
            return None
        return self._publish("takeover", to=_text(previous), c=client_id, clean=clean)

    def _behind(self, behind: bool) -> None:
        if self.commands.connected:
            self._publish("behind" if behind else "ahead").addErrback(
                self._ebRedis, "saying whether this node keeps up")

    def heartbeat(self):
        """Refresh this node's key, then look at who else is alive."""
        if not self.commands.connected:
            return None
        me = self.node_name
        key = node_key(me)
        info = {"address": json.dumps(self.addresses()), "started": repr(self.started_at),
                "heartbeat": repr(self.clock.seconds()),
                "clients": str(self.cluster_hub.stats.clients_connected)}
        fields = [item for pair in info.items() for item in pair]
        commands = self.commands
        d = gatherResults([commands.command("HSET", key, *fields),
                           commands.command("PEXPIRE", key, int(self.expiry * 1000)),
                           commands.command("SADD", NODES, me)], consumeErrors=True)
        d.addCallback(lambda _: commands.command("SMEMBERS", NODES))
        d.addCallback(self._cbMembers)
        d.addErrback(self._ebRedis, "sending a heartbeat")
        return d

    def _cbMembers(self, members):
        names = [_text(m) for m in members if _text(m) != self.node_name]
        checks = [self.commands.command("EXISTS", node_key(n)) for n in names]
        d = gatherResults(checks, consumeErrors=True)
        d.addCallback(lambda alive: self._cbAlive(dict(zip(names, alive))))
        return d

    def _cbAlive(self, alive: dict) -> None:
        settled = self.clock.seconds() - self._joined_at >= self.expiry
        for name, exists in alive.items():
            if exists:
                if name not in self.remotes:
                    self._load(name)
            elif settled:
                self.commands.command("SREM", NODES, name).addErrback(
                    self._ebRedis, "removing a node that is gone")
        if not settled:
            return
        for name in [n for n in self.remotes if not alive.get(n)]:
            self._gone(name, "its heartbeat expired")

    # -- what this node hears ------------------------------------------------

    def _notice(self, channel, data) -> None:
        notice = json.loads(data)
        kind, name = notice.get("k"), notice.get("n")
        if kind == "adopted" and isinstance(notice.get("d"), str):
            # Its sessions are subscribed on node ``name`` now (whose "+"
            # notices came first): stop sending to the gone node.
            self._drop(notice["d"], f"its sessions went to {name}")
            return
        if name == self.node_name or not isinstance(name, str):
            return
        if kind == "+":
            self._remote(name, announce=True)
            self._add_filter(self.remotes[name], notice["f"])
        elif kind == "-":
            remote = self.remotes.get(name)
            if remote is not None and notice["f"] in remote.filters:
                remote.filters.discard(notice["f"])
                self.cluster_hub.remove_remote(remote, [notice["f"]])
        elif kind == "hello":
            if name in self.remotes:
                self.remotes[name].gone = False  # back before anyone adopted it
            self._load(name)
        elif kind == "bye":
            self._gone(name, "it stopped")
        elif kind == "takeover":
            if notice.get("to") == self.node_name:
                self._taken_over(notice["c"], name, bool(notice.get("clean")))
        elif kind in ("behind", "ahead"):
            remote = self.remotes.get(name)
            if remote is not None:
                remote.behind = kind == "behind"
                if remote.behind:
                    self.outbox.congest(remote)
                elif not self.commands.paused:
                    self.outbox.uncongest(remote)

    def _remote(self, name: str, announce: bool = False) -> RemoteNode:
        remote = self.remotes.get(name)
        if remote is None:
            remote = self.remotes[name] = RemoteNode(name, self.outbox)
            log.info("Cluster node {name} is here", name=name)
        return remote

    def _add_filter(self, remote: RemoteNode, topic_filter: str) -> None:
        if topic_filter not in remote.filters:
            remote.filters.add(topic_filter)
            self.cluster_hub.add_remote(remote, topic_filter)

    def _load(self, name: str) -> None:
        """Read ``name``'s filters afresh (it joined or rejoined)."""
        d = self.commands.command("SMEMBERS", filters_key(name))
        d.addCallback(self._cbFilters, name)
        d.addErrback(self._ebRedis, "reading another node's subscriptions")

    def _cbFilters(self, members, name: str) -> None:
        remote = self._remote(name)
        wanted = {_text(m) for m in members}
        gone = remote.filters - wanted
        if gone:
            remote.filters -= gone
            self.cluster_hub.remove_remote(remote, gone)
        for topic_filter in wanted - remote.filters:
            self._add_filter(remote, topic_filter)

    def _gone(self, name: str, why: str) -> None:
        """``name`` stopped or its heartbeat expired. Its stream is still
        sent to (what arrives there is kept) until a live node has taken its
        sessions over; each heartbeat tries again until one has."""
        remote = self.remotes.get(name)
        if remote is None:
            return
        if self.adopter is None:
            self._drop(name, why)
            return
        if not remote.gone:
            remote.gone = True
            log.info("Cluster node {name} is gone ({why}); its sessions go to a live node",
                     name=name, why=why)
        d = self.commands.command("SET", adopt_key(name), self.node_name, "NX",
                                  "PX", ADOPT_LOCK_MS)
        d.addCallback(self._cbAdoptLock, name)
        d.addErrback(self._ebRedis, "taking over a gone node's sessions")

    def _cbAdoptLock(self, reply, name: str):
        if reply is None:
            return None  # another node does it
        d = self.adopter.adopt(name)
        d.addCallback(self._cbAdopted, name)
        return d

    def _cbAdopted(self, sessions, name: str):
        from reactorapp.cluster.adopt import AdoptedSessions

        log.info("Took over {count} session(s) of cluster node {name}",
                 count=len(sessions), name=name)
        adopted = AdoptedSessions(sessions)
        self._drop(name, "its sessions were taken over here")
        d = self._publish("adopted", d=name)
        if not sessions:
            # Nothing to hand its stream to: it stays for a node of that
            # name (entries a node cut off from Redis adds late are not lost).
            return d
        d.addCallback(lambda _: self._drain(name, adopted, b"-"))
        # Nodes that had not heard "adopted" yet may still have added
        # entries: read the stream again once they have, then remove it.
        d.addCallback(lambda _: self.clock.callLater(self.expiry, self._final_drain,
                                                     name, adopted))
        return d

    def _final_drain(self, name: str, adopted) -> None:
        if name in self.remotes:
            return  # it came back: its stream is its own again
        d = self._drain(name, adopted, b"-")
        d.addCallback(lambda _: None if name in self.remotes else self.commands.command(
            "DEL", stream_key(name), adopt_key(name)))
        d.addErrback(self._ebRedis, "reading a gone node's stream")

    def _drain(self, name: str, adopted, start: bytes):
        """Deliver what is in ``name``'s stream to the adopted sessions,
        deleting each entry once placed; stop if ``name`` came back."""
        if name in self.remotes:
            return succeed(None)
        d = self.commands.command("XRANGE", stream_key(name), start, "+",
                                  "COUNT", DRAIN_COUNT)
        d.addCallback(self._cbDrained, name, adopted)
        return d

    def _cbDrained(self, entries, name: str, adopted):
        import struct

        from reactorapp.cluster import frames
        from reactorapp.hub.commit import Commit

        if not entries:
            return None
        waits = []
        for _entry_id, fields in entries:
            if fields[:1] == [b"c"]:
                # A message for one session that moved to the gone node.
                try:
                    wait = place_for_session(self.cluster_hub, fields)
                except (ValueError, IndexError, struct.error):
                    continue
                if wait is not None:
                    waits.append(wait.deferred())
                continue
            try:
                messages = frames.decode_entry(fields[1] if len(fields) > 1 else b"")
            except frames.BadFrame:
                continue
            for message, groups in messages:
                for wait in adopted.deliver(message, groups):
                    waits.append(wait.deferred() if isinstance(wait, Commit) else wait)
        ids = [entry_id for entry_id, _ in entries]
        d = gatherResults(waits, consumeErrors=True)
        d.addCallback(lambda _: self.commands.command("XDEL", stream_key(name), *ids))
        last = ids[-1].decode()
        # Then the entries after the last one read ("(" excludes it).
        d.addCallback(lambda _: self._drain(name, adopted, f"({last}"))
        return d

    def _drop(self, name: str, why: str) -> None:
        remote = self.remotes.pop(name, None)
        if remote is None:
            return
        log.info("Cluster node {name} left: {why}", name=name, why=why)
        self.cluster_hub.remove_remote(remote, remote.filters)
        remote.filters = set()
        self.outbox.forget(remote)

    def _taken_over(self, client_id: str, by: str, clean: bool = False) -> None:
        """The client connected to node ``by``: close it here, and let its
        session go from this node (the store keeps it for the other node);
        ``clean``: it started a new session there, so this one ended."""
        session = self.cluster_hub.get_session(client_id)
        if session is None:
            return
        log.info("Client {client_id} connected to node {by}: closing it here",
                 client_id=client_id, by=by)
        connection = getattr(session, "connection", None)
        if connection is not None:
            connection.take_over()
        moved_away = getattr(session, "moved_away", None)
        if moved_away is not None:
            moved_away(ended=clean)
        subscriptions = getattr(session, "subscriptions", None)
        if subscriptions:
            if getattr(session, "persistent", False) and hasattr(self.cluster_hub.store,
                                                                 "forward"):
                # What other nodes sent here for it before they heard of
                # its new node goes on to that node (`reactorapp.cluster.moved`).
                moved = MovedSession(self.cluster_hub, client_id, dict(subscriptions))
                moved.start()
                self.clock.callLater(self.expiry, self._moved_settle, moved)
            self.cluster_hub.unsubscribe_all(session, list(subscriptions))
            subscriptions.clear()
        self.cluster_hub.remove_session(client_id, session)

    def _moved_settle(self, moved) -> None:
        """Every node has heard of the move by now: once this node has read
        its stream as far as it goes now, nothing more comes for ``moved``."""
        d = self.commands.command("XREVRANGE", self.inbox.stream, "+", "-", "COUNT", 1)
        d.addCallback(lambda last: self.inbox.read_past(last[0][0] if last else None))
        d.addCallback(lambda _: moved.stop())
        d.addErrback(self._ebMovedSettle, moved)

    def _ebMovedSettle(self, failure, moved) -> None:
        self._ebRedis(failure, "looking at this node's stream")
        self.clock.callLater(self.expiry, self._moved_settle, moved)  # once Redis is back

    # -- reading the registry ------------------------------------------------

    def describe(self):
        """A Deferred of the live nodes, for /api/v1/cluster."""
        d = self.commands.command("SMEMBERS", NODES)
        d.addCallback(self._cbDescribe)
        return d

    def _cbDescribe(self, members):
        names = sorted(_text(m) for m in members)
        d = gatherResults([self.commands.command("HGETALL", node_key(n)) for n in names],
                          consumeErrors=True)
        d.addCallback(lambda replies: [self._node_info(n, r) for n, r in zip(names, replies)
                                       if r])
        return d

    def _node_info(self, name: str, reply) -> dict:
        fields = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
        remote = self.remotes.get(name)
        filters = (len(self.cluster_hub.local_filters()) if name == self.node_name
                   else len(remote.filters) if remote is not None else 0)
        return {"name": name, "self": name == self.node_name,
                "address": json.loads(fields.get("address", "{}")),
                "started": float(fields.get("started", 0)),
                "heartbeat": float(fields.get("heartbeat", 0)),
                "clients": int(fields.get("clients", 0)),
                "filters": filters}

    def _ebRedis(self, failure, doing: str) -> None:
        from reactorapp.cluster.link import NotConnected
        from twisted.internet.defer import FirstError
        from txredisapi import ConnectionError as RedisConnectionError

        while failure.check(FirstError):  # one of several commands (gatherResults)
            failure = failure.value.subFailure
        if failure.check(NotConnected, RedisConnectionError):
            log.debug("Redis went away while {doing}", doing=doing)
            return
        log.failure("Redis failed while {doing}", failure, doing=doing)
