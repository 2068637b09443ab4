"""This node's stream: read with XREAD, routed locally, deleted once placed.

The reader has a connection of its own, blocked in ``XREAD BLOCK 0`` until
other nodes add entries. Each entry's messages are routed to this node's
subscribers only (`ClusterHub.route_incoming`); once what routing returned
has fired (a persistent session's store write, a webhook's outbox row: the
same promise a local publisher's PUBACK waits for), the entries are deleted
with XDEL. An entry not deleted when the node dies is read again when a
node of the same name starts (at least once).

An entry may also hold one message for one persistent session (fields
``c`` client id, ``e`` packed queue entry): the Redis store's script adds
those when another node wrote a message for a session that has moved here
(`reactorapp.cluster.scripts`). It goes to that session alone
(`place_for_session`), or on to the node that holds it now.

The reader is an `IInput`: a local subscriber that cannot keep up holds it
like it holds a publisher's connection. Held, it reads no more, and tells
the other nodes it is behind, so they hold back their own publishers
(`reactorapp.cluster.outbox`) instead of filling Redis.
"""

from __future__ import annotations

import struct

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.cluster import frames
from reactorapp.cluster.encoding import unpack_entry
from reactorapp.hub.commit import Commit
from reactorapp.hub.flow import IInput

log = Logger()

#: Entries read at a time. Each holds what one node sent in one reactor turn
#: (possibly thousands of messages): a small count keeps one read, and the
#: time spent routing it, bounded.
READ_COUNT = 32


@implementer(IInput)
class Inbox:
    def __init__(self, cluster_hub, reader, commands, stream: str, stats, on_behind=None) -> None:
        self.cluster_hub = cluster_hub
        self.reader = reader        # a RedisLink of its own (it blocks)
        self.commands = commands    # the node's command RedisLink (XDEL)
        self.stream = stream
        self.stats = stats
        self._on_behind = on_behind
        #: Read from here on: "0" at start-up, all that is left for us.
        self.last_id = b"0"
        self._holds: set = set()
        self._reading = False
        self._to_delete: list = []
        #: (entry id, Deferred) fired once the reader has read that far.
        self._read_to: list = []

    @property
    def held(self) -> bool:
        return bool(self._holds)

    def connected(self) -> None:
        """The reader's connection is (back) up: read on."""
        self._reading = False
        self._read()
        self.delete_done()

    def _read(self) -> None:
        if self._reading or self._holds or not self.reader.connected:
            return
        self._reading = True
        d = self.reader.blocking_command("XREAD", "COUNT", READ_COUNT, "BLOCK", 0,
                                         "STREAMS", self.stream, self.last_id)
        d.addCallbacks(self._cbRead, self._ebRead)
        d.addErrback(lambda f: log.failure("Handling entries from {stream} failed", f,
                                           stream=self.stream))

    def _ebRead(self, failure) -> None:
        self._reading = False
        if self.reader.connected:
            log.failure("Reading {stream} failed", failure, stream=self.stream)
        # else: `connected` starts again once the link is back.

    def _cbRead(self, reply) -> None:
        self._reading = False
        entries = reply[0][1] if reply else []
        ids = []
        waits = []
        cluster_hub = self.cluster_hub
        flow = cluster_hub.flow
        previous, flow.current = flow.current, self
        try:
            for entry_id, fields in entries:
                self.last_id = entry_id
                ids.append(entry_id)
                if fields[:1] == [b"c"]:
                    commit = self._for_session(fields)
                    if commit is not None and not commit.done:
                        waits.append(commit)
                    continue
                data = fields[1] if len(fields) > 1 else b""
                try:
                    messages = frames.decode_entry(data)
                except frames.BadFrame as e:
                    log.error("Dropping an entry of {stream} that cannot be read: {e}",
                              stream=self.stream, e=e)
                    continue
                self.stats.received += len(messages)
                for message, groups in messages:
                    commit = cluster_hub.route_incoming(message, groups)
                    if commit is not None and not commit.done:
                        waits.append(commit)
        finally:
            flow.current = previous
        if ids:
            self._placed_then_delete(ids, waits)
            self._passed()
        self._read()

    def read_past(self, entry_id) -> Deferred:
        """A Deferred that fires once every entry up to ``entry_id`` (None:
        the stream was empty) has been read and routed."""
        d = Deferred()
        self._read_to.append((_entry_order(entry_id), d))
        self._passed()
        return d

    def _passed(self) -> None:
        at = _entry_order(self.last_id)
        waiting, self._read_to = self._read_to, []
        for order, d in waiting:
            if order <= at:
                d.callback(None)
            else:
                self._read_to.append((order, d))

    def _for_session(self, fields):
        try:
            commit = place_for_session(self.cluster_hub, fields)
        except (ValueError, IndexError, struct.error) as e:
            log.error("Dropping an entry of {stream} that cannot be read: {e}",
                      stream=self.stream, e=e)
            return None
        self.stats.received += 1
        return commit

    def _placed_then_delete(self, ids, waits) -> None:
        left = [len(waits)]
        failed = []

        def one(failure):
            if failure is not None:
                failed.append(failure)
            left[0] -= 1
            if not left[0]:
                if failed:
                    log.error("Entries of {stream} could not be placed; they are read"
                              " again at the next start: {why}", stream=self.stream,
                              why=failed[0].getErrorMessage())
                    return
                self._to_delete.extend(ids)
                self.delete_done()

        if not waits:
            self._to_delete.extend(ids)
            self.delete_done()
            return
        for commit in waits:
            commit.add(one)

    def delete_done(self) -> None:
        ids, self._to_delete = self._to_delete, []
        if not ids:
            return
        if not self.commands.connected:
            self._to_delete = ids + self._to_delete
            return
        d = self.commands.command("XDEL", self.stream, *ids)
        d.addErrback(self._ebDeleted, ids)

    def _ebDeleted(self, failure, ids) -> None:
        # Left in the stream: read again (a duplicate) only if the node restarts.
        self._to_delete = ids + self._to_delete
        if self.commands.connected:
            log.failure("Deleting entries of {stream} failed", failure, stream=self.stream)

    # -- IInput --------------------------------------------------------------

    def hold(self, by) -> None:
        if not self._holds and self._on_behind is not None:
            self._on_behind(True)
        self._holds.add(by)

    def release(self, by) -> None:
        holds = self._holds
        holds.discard(by)
        if not holds:
            if self._on_behind is not None:
                self._on_behind(False)
            self._read()


def place_for_session(cluster_hub, fields) -> Commit | None:
    """Deliver a stream entry ``c CLIENT e ENTRY`` (a message for one
    session that moved) to that session if this node has it, or send it on
    to the node that holds it now; return what placing it waits for.
    `ValueError` (and kin) if the entry cannot be read."""
    values = dict(zip(fields[0::2], fields[1::2]))
    client_id, entry = values[b"c"].decode(), values[b"e"]
    message, qos, retained = unpack_entry(entry)
    session = cluster_hub.get_session(client_id)
    if session is not None:
        return _deliver(session, message, qos, retained)
    # Not here. Its session may be being read from Redis on the store's
    # connection, whose answer is handled before that of a read sent now:
    # look again then. Still not here, the script finds where it is now.
    store = cluster_hub.store
    d = store.read(b"PING")
    d.addCallback(_cbLookedAgain, cluster_hub, client_id, entry, message, qos, retained)
    return Commit.after(d)


def _cbLookedAgain(_ignored, cluster_hub, client_id, entry, message, qos, retained):
    session = cluster_hub.get_session(client_id)
    if session is not None:
        commit = _deliver(session, message, qos, retained)
    else:
        store = cluster_hub.store
        store.forward(client_id, entry)
        commit = store.pending_commit()
    return None if commit is None else commit.deferred()


def _deliver(session, message, qos, retained) -> Commit | None:
    wait = session.deliver(message, qos, retained)
    return Commit.after(wait) if isinstance(wait, Deferred) else wait


def _entry_order(entry_id) -> tuple[int, int]:
    """A stream entry id (``b"MS-SEQ"``, or None / ``b"0"``) as something to compare."""
    if not entry_id:
        return (0, 0)
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return (int(ms), int(seq or 0))
