"""This node's stream: read with XREAD, routed locally, deleted once placed.

The reader has a connection of its own, blocked in ``XREAD BLOCK 0`` until
other nodes add entries. Each entry's messages are routed to this node's
subscribers only (`ClusterHub.route_incoming`); once what routing returned
has fired (a persistent session's store write, a webhook's outbox row: the
same promise a local publisher's PUBACK waits for), the entries are deleted
with XDEL. An entry not deleted when the node dies is read again when a
node of the same name starts (at least once).

The reader is an `IInput`: a local subscriber that cannot keep up holds it
like it holds a publisher's connection. Held, it reads no more, and tells
the other nodes it is behind, so they hold back their own publishers
(`reactorapp.cluster.outbox`) instead of filling Redis.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.cluster import frames
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
                data = fields[1] if len(fields) > 1 else b""
                try:
                    messages = frames.decode(data)
                except frames.BadFrame as e:
                    log.error("Dropping an entry of {stream} that cannot be read: {e}",
                              stream=self.stream, e=e)
                    continue
                self.stats.received += len(messages)
                for message in messages:
                    commit = cluster_hub.route_incoming(message)
                    if commit is not None and not commit.done:
                        waits.append(commit)
        finally:
            flow.current = previous
        if ids:
            self._placed_then_delete(ids, waits)
        self._read()

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
