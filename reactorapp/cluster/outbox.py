"""Messages for other nodes: one Redis stream per node, one XADD per node
per turn of the reactor, acknowledged once Redis has it.

A message routed to another node (`RemoteNode.deliver`) is encoded once
(`frames`) and added to that node's batch. At the end of the reactor's turn
each batch becomes one ``XADD reactorapp:stream:NODE * m FRAMES`` on the
node's command connection. Every batch of one flush shares one `Commit`,
fired when Redis has answered all of them: with ``appendfsync always``
Redis answers after the entry is on disk, so a PUBACK that waits for the
commit means "durable in Redis, in the stream of each node with a
subscriber". QoS 0 messages travel in the same batches (so one publisher's
messages keep their order, whatever their QoS) and wait for nothing.

Redis unreachable: QoS 0 messages for other nodes are dropped (counted);
QoS 1/2 ones wait in memory, their commit with them, and are sent once the
connection is back (the publisher's acknowledgements wait, and past
``--max-pending-acks`` its reading stops). A batch whose XADD was written
but not answered when the connection went is sent again, and Redis adds it
only once: each batch carries this outbox's name and a sequence number, and
`ADD_ONCE` skips a number the receiving stream has already seen from that
sender. So a QoS 2 message crosses nodes exactly once, even across a lost
connection.
"""

from __future__ import annotations

import itertools
import uuid

from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.cluster import frames
from reactorapp.hub.commit import Commit
from reactorapp.hub.flow import Congestion
from reactorapp.hub.interfaces import ISubscriber
from reactorapp.hub.shared import AWAY, BUSY, READY, REFUSED
from reactorapp.hub.topics import is_broker_topic

log = Logger()


def stream_key(node_name: str) -> str:
    return f"reactorapp:stream:{node_name}"


#: XADD a batch unless its stream has seen its sequence number from this
#: sender. KEYS: the stream, its hash of the last number seen per sender;
#: ARGV: the sender, the batch's number, the frames. Batches of one sender
#: reach Redis in order (`Outbox.connected` sends again in order), so the
#: last number is all there is to remember.
ADD_ONCE = b"""
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last and tonumber(ARGV[2]) <= tonumber(last) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'm', ARGV[3])
return 1
"""


def seen_key(stream: str) -> str:
    return stream + ":seen"


class ClusterStats:
    """Counters of what crossed between nodes, read by /metrics."""

    __slots__ = ("sent", "received", "dropped", "batches", "resent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        #: QoS 0 messages for other nodes dropped while Redis was away or
        #: the node stuck.
        self.dropped = 0
        self.batches = 0
        self.resent = 0


@implementer(ISubscriber)
class RemoteNode:
    """Another live node, as one subscriber of this node's hub: subscribed
    to the filters it has subscribers for, and one member of each shared
    subscription (``$share/GROUP/FILTER``) it has members of, which the
    group chooses in turn with this node's own members."""

    def __init__(self, name: str, outbox: Outbox) -> None:
        self.name = name
        self.stream = stream_key(name)
        self.filters: set[str] = set()
        self.outbox = outbox
        #: It said its own subscribers cannot keep up ("behind").
        self.behind = False
        #: Its heartbeat expired or it stopped; sent to until its sessions
        #: are adopted (`reactorapp.cluster.adopt`).
        self.gone = False
        #: Open while it is behind or the Redis connection is full.
        self.congestion: Congestion | None = None
        #: The last message added to its batch (a retained one is sent to
        #: every node, once), and the shared subscriptions it was chosen
        #: for (None: it was dropped).
        self.last = None
        self.last_groups: tuple | None = None

    def deliver(self, message, qos, retained):
        return self.outbox.add(self, message)

    def deliver_shared(self, message, qos, share_filter):
        """Chosen for ``share_filter``: the frame says so, and that node
        gives the message to one of its members of that group. A message
        from another node is not sent on: the group takes it here."""
        if self.outbox.cluster_hub.incoming is message:
            return REFUSED
        return self.outbox.add(self, message, share_filter)

    def share_state(self, qos: int) -> int:
        """As a member of a shared subscription: `BUSY` while it is behind,
        the Redis connection is full or away (a local member that can take
        the message now goes first), `AWAY` once it is gone."""
        if self.gone:
            return AWAY
        if self.congestion is not None or not self.outbox.link.connected:
            return BUSY
        return READY

    def __repr__(self) -> str:
        return f"RemoteNode({self.name!r})"


class _Round:
    """The batches of one flush: their shared `Commit` fires when Redis
    has confirmed every one."""

    __slots__ = ("commit", "waiting", "closed")

    def __init__(self) -> None:
        self.commit = Commit()
        self.waiting = 0
        self.closed = False

    def confirmed(self) -> None:
        self.waiting -= 1
        if self.closed and not self.waiting and not self.commit.done:
            self.commit.fire()


class _Batch:
    __slots__ = ("seq", "node", "data", "count", "round")

    def __init__(self, seq, node, data, count, round_) -> None:
        self.seq, self.node, self.data, self.count, self.round = seq, node, data, count, round_


class Outbox:
    """The batches for every other node, and their way to Redis."""

    def __init__(self, cluster_hub, link, clock, stats: ClusterStats,
                 slow_timeout: float = 5.0) -> None:
        self.cluster_hub = cluster_hub
        self.link = link
        self.clock = clock
        self.stats = stats
        self.slow_timeout = slow_timeout
        self._frames: dict[RemoteNode, list] = {}
        self._round: _Round | None = None
        self._call = None
        self._seq = itertools.count()
        #: Who this outbox is to the streams it writes to: unique per start
        #: of the process, so that a restarted node's numbers start afresh.
        self.sender = uuid.uuid4().hex
        #: Batches written to Redis, not yet answered, in order.
        self._sent: dict[int, _Batch] = {}
        #: Batches waiting for a connection, by sequence number.
        self._unsent: dict[int, _Batch] = {}

    # -- taking messages ------------------------------------------------------

    def add(self, node: RemoteNode, message, share_filter: str | None = None):
        """Add ``message`` to ``node``'s batch (for the shared subscription
        ``share_filter``, if given); return the `Commit` a QoS 1/2
        publisher's acknowledgement waits for, None for QoS 0."""
        cluster_hub = self.cluster_hub
        if cluster_hub.incoming is message or is_broker_topic(message.topic):
            return None  # from another node, or this node's own
        if node.last is message:
            # Taken already while routing this message (for its plain
            # subscribers or another group): one frame, naming every group.
            groups = node.last_groups
            if share_filter is not None and groups is not None:
                groups = node.last_groups = (*groups, share_filter)
                self._frames[node][-1] = frames.with_groups(frames.encode(message), groups)
            return None
        node.last = message
        node.last_groups = None
        qos = message.qos
        congestion = node.congestion
        if (congestion is not None and not congestion.hold(cluster_hub.flow)) or not self.link.connected:
            if not qos:
                self.stats.dropped += 1
                cluster_hub.stats.publish_dropped += 1
                return None
        batch = self._frames.get(node)
        if batch is None:
            batch = self._frames[node] = []
        if share_filter is None:
            node.last_groups = ()
            batch.append(frames.encode(message))
        else:
            node.last_groups = (share_filter,)
            batch.append(frames.with_groups(frames.encode(message), node.last_groups))
        if self._round is None:
            self._round = _Round()
            self._call = self.clock.callLater(0, self.flush)
        return self._round.commit if qos else None

    def broadcast(self, nodes, message):
        """A retained message: to every node, whatever its filters."""
        commit = None
        for node in nodes:
            answer = self.add(node, message)
            if answer is not None:
                commit = answer
        return commit

    # -- sending ---------------------------------------------------------

    def flush(self) -> None:
        """One XADD per node for what this turn of the reactor added."""
        self._call = None
        round_, self._round = self._round, None
        pending, self._frames = self._frames, {}
        if round_ is None:
            return
        for node, items in pending.items():
            node.last = None  # a message given again later (handed over) is new
            round_.waiting += 1
            batch = _Batch(next(self._seq), node, b"".join(items), len(items), round_)
            self._send(batch)
        round_.closed = True
        if not round_.waiting:
            round_.commit.fire()

    def _send(self, batch: _Batch) -> None:
        # Behind batches still waiting, so each stream gets them in order
        # (`ADD_ONCE` would take a lower number after a higher as seen).
        if not self.link.connected or self._unsent:
            self._unsent[batch.seq] = batch
            return
        self._sent[batch.seq] = batch
        self.stats.batches += 1
        stream = batch.node.stream
        d = self.link.command("EVAL", ADD_ONCE, 2, stream, seen_key(stream),
                              self.sender, batch.seq, batch.data)
        d.addCallbacks(self._cbAdded, self._ebAdded, callbackArgs=(batch,),
                       errbackArgs=(batch,))
        d.addErrback(lambda f: log.failure("Sending a batch to {node} failed", f,
                                           node=batch.node.name))

    def _cbAdded(self, _, batch: _Batch) -> None:
        if self._sent.pop(batch.seq, None) is None:
            return
        self.stats.sent += batch.count
        batch.round.confirmed()

    def _ebAdded(self, failure, batch: _Batch) -> None:
        if self._sent.pop(batch.seq, None) is None:
            return
        from txredisapi import ConnectionError as RedisConnectionError

        if failure.check(RedisConnectionError) or not self.link.connected:
            # Written or not, unknown: sent again once Redis is back.
            self.stats.resent += batch.count
            self._unsent[batch.seq] = batch
            return
        # Redis refused it (out of memory, a wrong type): nothing is
        # acknowledged; the publishers' connections close and they resend.
        log.failure("Redis refused a batch for {node}", failure, node=batch.node.name)
        batch.round.commit.fire(failure)

    def connected(self) -> None:
        """The connection is back: send what waited, in order."""
        unsent, self._unsent = self._unsent, {}
        if not self.link.connected:
            self._unsent = unsent
            return
        for seq in sorted(unsent):
            self._send(unsent[seq])

    def forget(self, node: RemoteNode) -> None:
        """``node`` is gone and routing no longer finds it. What was already
        given to it still goes to its stream (and is confirmed by Redis
        before any publisher is acknowledged): the node that adopts its
        sessions reads that stream, or the node itself when it restarts."""
        self.uncongest(node)

    # -- flow control ------------------------------------------------------

    def congest(self, node: RemoteNode) -> None:
        """``node`` cannot take more now: hold back the inputs that feed it."""
        if node.congestion is None:
            node.congestion = Congestion(self.clock, self.slow_timeout)

    def uncongest(self, node: RemoteNode) -> None:
        congestion, node.congestion = node.congestion, None
        if congestion is not None:
            congestion.end()
