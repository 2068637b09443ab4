"""The default store: SQLite in the data directory, written by one thread.

The reactor thread only appends writes to a list. One writer thread commits
them in batches (group commit): the writes of a reactor turn, and all writes
that arrive while a commit is in flight, go into the next transaction. A
batch costs one fsync however many messages it holds, and the reactor never
waits for the disk. `pending_commit` hands out the `Commit` of the batch
holding the writes so far, the same one to everybody who writes during that
batch; it fires in the reactor thread once the batch has committed.

A batch is committed as soon as somebody waits for it (`pending_commit` or
`sync`: an acknowledgement depends on it). Writes nobody waits for (a
delivered message forgotten, a subscription, a QoS 0 retained message) ride
along with the next such batch, or are committed after ``lazy`` seconds. A
crash can cost them: a re-delivery (which QoS 1 and 2 allow), or a session
or subscription made just before it; never an acknowledged message, since a
write somebody waits for commits every write made before it. It spares the
disk an fsync for every handful of PUBACKs from subscribers.

A batch that cannot be written (the disk is full, the file system went
read-only) is rolled back and tried again, whole, after a back-off, for as
long as it takes: `writable` is False meanwhile (``/readyz`` answers 503),
nobody waiting for it is answered, and writes made meanwhile wait behind it.
The hub keeps routing what needs no store.
"""

from __future__ import annotations

import ast
import functools
import queue
import sqlite3
import threading
from itertools import chain, groupby
from operator import itemgetter

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from reactorapp.hub.message import Message
from reactorapp.hub.commit import Commit
from reactorapp.store.interfaces import (
    IStore, StoreClosed, StoredMessage, StoredSession, StoredState, StoreError,
)
from reactorapp.store.schema import VARIABLES_NEEDED, open_database

log = Logger()

_SET_RETAINED = ("INSERT OR REPLACE INTO retained (topic, payload, qos, properties, sender, timestamp)"
                 " VALUES (?, ?, ?, ?, ?, ?)")
_REMOVE_RETAINED = "DELETE FROM retained WHERE topic = ?"
_ADD_SESSION = "INSERT OR IGNORE INTO sessions (client_id) VALUES (?)"
_SET_SESSION_EXPIRY = "UPDATE sessions SET expiry = ? WHERE client_id = ?"
_SET_WILL = ("INSERT OR REPLACE INTO wills"
             " (client_id, topic, payload, qos, retain, properties, sender, timestamp, delay)"
             " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS"
             " (SELECT 1 FROM sessions WHERE client_id = ?)")
_REMOVE_WILL = "DELETE FROM wills WHERE client_id = ?"
_REMOVE_SESSION = (
    "DELETE FROM sessions WHERE client_id = ?",
    "DELETE FROM subscriptions WHERE client_id = ?",
    "DELETE FROM queue WHERE client_id = ?",
    "DELETE FROM awaiting_pubrel WHERE client_id = ?",
    _REMOVE_WILL,
)
_ADD_SUBSCRIPTION = ("INSERT OR REPLACE INTO subscriptions"
                     " (client_id, topic_filter, qos, options, identifier) VALUES (?, ?, ?, ?, ?)")
_REMOVE_SUBSCRIPTION = "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?"
_ADD_MESSAGE = ("INSERT OR REPLACE INTO messages"
                " (id, topic, payload, qos, retain, properties, sender, timestamp)"
                " VALUES (?, ?, ?, ?, ?, nullif(?, ''), ?, ?)")
_ENQUEUE = ("INSERT OR REPLACE INTO queue (client_id, seq, message, qos, retained)"
            " VALUES (?, ?, ?, ?, ?)")
_ENQUEUE_SHARED = ("INSERT OR REPLACE INTO queue (client_id, seq, message, qos, retained, share)"
                   " VALUES (?, ?, ?, ?, ?, ?)")
_SET_INFLIGHT = "UPDATE queue SET packet_id = ?, state = ? WHERE client_id = ? AND seq = ?"
_DEQUEUE = "DELETE FROM queue WHERE client_id = ? AND seq = ?"
_ADD_PUBREL = "INSERT OR IGNORE INTO awaiting_pubrel (client_id, packet_id) VALUES (?, ?)"
_REMOVE_PUBREL = "DELETE FROM awaiting_pubrel WHERE client_id = ? AND packet_id = ?"
#: Values are bound as int, float, str or bytes, never as bool or None
#: where it can be helped (properties are '' for none): sqlite3 binds the
#: others through its adapter lookup, a third of a batch's binding time.
#: Statements written many rows at a time: the template and one row's group.
_MANY_ROWS = {
    _ADD_MESSAGE: ("INSERT OR REPLACE INTO messages"
                   " (id, topic, payload, qos, retain, properties, sender, timestamp) VALUES {}",
                   "(?, ?, ?, ?, ?, nullif(?, ''), ?, ?)"),
    _ENQUEUE: ("INSERT OR REPLACE INTO queue (client_id, seq, message, qos, retained) VALUES {}",
               "(?, ?, ?, ?, ?)"),
    _ENQUEUE_SHARED: ("INSERT OR REPLACE INTO queue (client_id, seq, message, qos, retained, share)"
                      " VALUES {}", "(?, ?, ?, ?, ?, ?)"),
}
#: Dequeues of one client are one statement per chunk. (A row-value
#: ``(client_id, seq) IN (VALUES ...)`` would scan the whole queue.)
_DEQUEUE_SEQS = "DELETE FROM queue WHERE client_id = ? AND seq IN ({})"
#: Rows per statement, at most: most batches are one statement a table.
#: Each statement lets go of the GIL while SQLite works, and getting it back
#: can mean waiting for the reactor thread: fewer statements, fewer waits.
_MAX_CHUNK = VARIABLES_NEEDED // 8  # values in a row of messages
#: Statements have a multiple of this many rows (a power of two below it):
#: preparing a statement costs as much as running it, so few sizes are used.
_STEP = 16


@implementer(IStore)
class SQLiteStore:
    """`IStore` on one SQLite file, group-committed by a writer thread."""

    #: Seconds before a failed batch is tried again, doubled after each
    #: failure up to `retry_max`.
    retry_initial = 0.5
    retry_max = 10.0

    def __init__(self, directory: str, reactor, lazy: float = 0.25) -> None:
        self.directory = directory
        self.lazy = lazy
        self.writes = 0
        #: False while a batch cannot be written and is being retried.
        self.writable = True
        #: Batches that could not be written, since start-up.
        self.write_failures = 0
        #: The batch in flight (message rows, writes), kept for a retry.
        self._batch: tuple[list, list] | None = None
        self._retry = None
        self._retry_delay = self.retry_initial
        self._reactor = reactor
        self._connection: sqlite3.Connection | None = None
        self._writer: _Writer | None = None
        self._next_message_id = 1
        #: Writes not yet handed to the writer, as (sql, parameters); None
        #: for a write cancelled before it was made (see `dequeue`).
        self._pending: list[tuple[str, tuple] | None] = []
        #: Rows of the messages table the pending writes refer to, or None.
        self._messages: list[tuple | None] = []
        #: id(Message) -> [row id, Message, index in _messages, references],
        #: to store a message once however many sessions it is queued for.
        #: Holding the Message keeps its id() from being reused meanwhile.
        self._pending_ids: dict[int, list] = {}
        #: (client id, seq) -> (index in _pending, _pending_ids entry) of
        #: pending enqueues.
        self._queued: dict[tuple[str, int], tuple[int, list]] = {}
        #: What the pending batch's waiters wait for; None while nobody waits.
        self._waiting: Commit | None = None
        self._committing: Commit | None = None  # the batch in flight
        #: The call that will submit the pending batch, and whether it is
        #: the prompt one (end of this turn) or the lazy one.
        self._timer = None
        self._prompt = False
        self._failure: Failure | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.directory!r}>"

    # -- start-up -------------------------------------------------------------

    def load(self) -> StoredState:
        self._connection = connection = open_database(self.directory)
        try:
            return self._read(connection)
        except sqlite3.Error as e:
            connection.close()
            self._connection = None
            raise StoreError(f"cannot read {self.directory!r}: {e}.") from None

    def _read(self, connection) -> StoredState:
        retained = [
            Message(topic, payload, qos, True, _properties(properties), sender, timestamp)
            for topic, payload, qos, properties, sender, timestamp in connection.execute(
                "SELECT topic, payload, qos, properties, sender, timestamp FROM retained")
        ]
        sessions: dict[str, StoredSession] = {
            client_id: StoredSession(client_id, expiry=expiry)
            for client_id, expiry in connection.execute("SELECT client_id, expiry FROM sessions")
        }
        for client_id, topic_filter, qos, options, identifier in connection.execute(
                "SELECT client_id, topic_filter, qos, options, identifier FROM subscriptions"):
            session = sessions.get(client_id)
            if session is not None:
                session.subscriptions[topic_filter] = qos
                if options or identifier:
                    session.options[topic_filter] = (options, identifier)
        for (client_id, topic, payload, qos, retain, properties, sender, timestamp,
             delay) in connection.execute(
                "SELECT client_id, topic, payload, qos, retain, properties, sender, timestamp,"
                " delay FROM wills"):
            if client_id in sessions:
                sessions[client_id].will = (Message(
                    topic, payload, qos, bool(retain), _properties(properties), sender,
                    timestamp), delay)
        for client_id, packet_id in connection.execute(
                "SELECT client_id, packet_id FROM awaiting_pubrel"):
            if client_id in sessions:
                sessions[client_id].awaiting_pubrel.add(packet_id)
        messages: dict[int, Message] = {}  # one Message per row, shared by sessions
        for (client_id, seq, qos, retained_flag, packet_id, state, share, message_id, topic,
             payload, message_qos, retain, properties, sender, timestamp) in connection.execute(
                "SELECT q.client_id, q.seq, q.qos, q.retained, q.packet_id, q.state, q.share,"
                " m.id, m.topic, m.payload, m.qos, m.retain, m.properties, m.sender, m.timestamp"
                " FROM queue q JOIN messages m ON m.id = q.message"
                " ORDER BY q.client_id, q.seq"):
            session = sessions.get(client_id)
            if session is None:
                continue
            message = messages.get(message_id)
            if message is None:
                message = messages[message_id] = Message(
                    topic, payload, message_qos, bool(retain), _properties(properties),
                    sender, timestamp)
            session.messages.append(
                StoredMessage(seq, message, qos, bool(retained_flag), packet_id, state, share))
        (last,) = connection.execute("SELECT max(id) FROM messages").fetchone()
        self._next_message_id = (last or 0) + 1
        return StoredState(retained, list(sessions.values()))

    # -- writes (reactor thread) -------------------------------------------

    def write(self, sql: str, parameters: tuple) -> None:
        """Record one statement for the next batch. Public for tables kept
        next to the store's (the webhook outbox): a row written here is
        durable together with everything written before it."""
        self.writes += 1
        if self._closed:
            return
        self._pending.append((sql, parameters))
        if self._timer is None and self._committing is None:
            self._timer = self._reactor.callLater(self.lazy, self._submit)

    def set_retained(self, message) -> None:
        self.write(_SET_RETAINED, (message.topic, message.payload, message.qos,
                                    _text(message.properties), message.sender, message.timestamp))

    def remove_retained(self, topic) -> None:
        self.write(_REMOVE_RETAINED, (topic,))

    def add_session(self, client_id) -> None:
        self.write(_ADD_SESSION, (client_id,))

    def remove_session(self, client_id) -> None:
        for sql in _REMOVE_SESSION:
            self.write(sql, (client_id,))

    def set_session_expiry(self, client_id, seconds) -> None:
        self.write(_SET_SESSION_EXPIRY, (seconds, client_id))

    def set_will(self, client_id, message, delay) -> None:
        if message is None:
            self.write(_REMOVE_WILL, (client_id,))
        else:
            self.write(_SET_WILL, (client_id, message.topic, message.payload, message.qos,
                                   message.retain, _text(message.properties), message.sender,
                                   message.timestamp, delay, client_id))

    def add_subscription(self, client_id, topic_filter, qos, options=0, identifier=0) -> None:
        self.write(_ADD_SUBSCRIPTION, (client_id, topic_filter, qos, options, identifier))

    def remove_subscription(self, client_id, topic_filter) -> None:
        self.write(_REMOVE_SUBSCRIPTION, (client_id, topic_filter))

    def enqueue(self, client_id, seq, message, qos, retained, share=None) -> None:
        # A message fanned out to several sessions in one batch is one row.
        entry = self._pending_ids.get(id(message))
        if entry is None:
            message_id = self._next_message_id
            self._next_message_id += 1
            entry = self._pending_ids[id(message)] = [message_id, message, len(self._messages), 0]
            self._messages.append((
                message_id, message.topic, message.payload, message.qos,
                1 if message.retain else 0, _text(message.properties) or "",
                message.sender, message.timestamp))
        entry[3] += 1
        self._queued[(client_id, seq)] = (len(self._pending), entry)
        if share is None:
            self.write(_ENQUEUE, (client_id, seq, entry[0], qos, 1 if retained else 0))
        else:
            self.write(_ENQUEUE_SHARED, (client_id, seq, entry[0], qos, 1 if retained else 0,
                                         share))

    def set_inflight(self, client_id, seq, packet_id, state) -> None:
        self.write(_SET_INFLIGHT, (packet_id, state, client_id, seq))

    def dequeue(self, client_id, seq) -> None:
        queued = self._queued.pop((client_id, seq), None)
        if queued is None:
            self.write(_DEQUEUE, (client_id, seq))
            return
        # Acknowledged before it reached the disk (a connected subscriber,
        # a commit in flight): neither write needs to happen.
        self.writes += 1
        index, entry = queued
        self._pending[index] = None
        entry[3] -= 1
        if not entry[3]:
            self._messages[entry[2]] = None

    def add_awaiting_pubrel(self, client_id, packet_id) -> None:
        self.write(_ADD_PUBREL, (client_id, packet_id))

    def remove_awaiting_pubrel(self, client_id, packet_id) -> None:
        self.write(_REMOVE_PUBREL, (client_id, packet_id))

    # -- group commit ----------------------------------------------------------

    def pending_commit(self) -> Commit | None:
        if self._failure is not None:
            return Commit.failed(self._failure)
        if self._pending:
            waiting = self._waiting
            if waiting is None:
                waiting = self._waiting = Commit()
            if self._committing is None and not self._prompt:
                # At the end of this reactor turn, with whatever else the turn
                # writes (a PUBLISH and its QoS 2 packet id travel together).
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self._reactor.callLater(0, self._submit)
                self._prompt = True
            return waiting
        if self._committing is not None:
            return self._committing
        if self._closed:
            return Commit.failed(StoreClosed("the store is closed"))
        return None

    def sync(self) -> Deferred | None:
        commit = self.pending_commit()
        return None if commit is None else commit.deferred()

    def _submit(self) -> None:
        """Hand the pending writes to the writer as one transaction."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._prompt = None, False
        if self._committing is not None or not self._pending or self._failure is not None:
            return
        batch = [write for write in self._pending if write is not None]
        messages = [row for row in self._messages if row is not None]
        self._pending, self._messages, self._pending_ids, self._queued = [], [], {}, {}
        waiting, self._waiting = self._waiting, None
        if not batch and not messages:
            if waiting is not None:  # everything cancelled out: nothing to wait for
                waiting.fire()
            return
        self._committing = waiting or Commit()
        if self._writer is None:
            # Started on first use, after twistd has daemonized.
            self._writer = _Writer(self._reactor)
        self._batch = (messages, batch)
        self._write_batch()

    def _write_batch(self) -> None:
        self._retry = None
        messages, batch = self._batch
        self._writer.call(_commit, self._connection, messages, batch).addCallbacks(
            self._cbCommitted, self._ebCommitted)

    def _cbCommitted(self, _ignored) -> None:
        self._batch = None
        if not self.writable:
            log.info("Writing to {store} again; what waited for it is acknowledged now",
                     store=self)
            self.writable, self._retry_delay = True, self.retry_initial
        committed, self._committing = self._committing, None
        if self._waiting is not None:
            self._submit()  # the disk gets the next batch before callbacks run
        elif self._pending:
            self._timer = self._reactor.callLater(self.lazy, self._submit)
        committed.fire()

    def _ebCommitted(self, failure: Failure) -> None:
        """A batch failed and was rolled back: try it again after a back-off.

        Nobody who waits for it is answered meanwhile (no acknowledgement
        goes out), and later writes wait behind it, so their order holds.
        """
        self.write_failures += 1
        if self._closed:
            self._give_up(failure)
            return
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, self.retry_max)
        if self.writable:
            self.writable = False
            log.failure("Could not write to {store}; trying again in {delay:g} s. Nothing that"
                        " needs the store is acknowledged until then", failure,
                        store=self, delay=delay)
        else:
            log.warn("Still cannot write to {store} ({reason}); trying again in {delay:g} s",
                     store=self, reason=failure.getErrorMessage(), delay=delay)
        self._retry = self._reactor.callLater(delay, self._write_batch)

    def _give_up(self, failure: Failure) -> None:
        """On close: what could not be written is lost; it was never
        acknowledged, so its senders send it again."""
        log.error("Closing {store} with writes it could not make: {reason}",
                  store=self, reason=failure.getErrorMessage())
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry, self._batch = None, None
        self._failure = failure
        waiting = [self._committing, self._waiting]
        self._committing, self._waiting = None, None
        self._pending, self._messages, self._pending_ids, self._queued = [], [], {}, {}
        for commit in waiting:
            if commit is not None:
                commit.fire(failure)

    # -- reads for tables kept next to the store's -----------------------------

    def read_now(self, function):
        """Return ``function(connection)``, run in this thread: only at
        start-up, after `load` and before anything is written."""
        if self._connection is None or self._writer is not None:
            raise StoreError("the store can only be read from directly at start-up")
        return function(self._connection)

    def read(self, function, *args) -> Deferred:
        """Run ``function(connection, *args)`` in the writer thread, once the
        writes recorded so far are durable (the database is opened in
        exclusive mode: no other connection may read it); fire with what it
        returns."""
        if self._connection is None:
            return fail(StoreClosed("the store is closed"))
        written = self.sync()
        if written is None:
            return self._read_in_writer(None, function, args)
        return written.addCallback(self._read_in_writer, function, args)

    def _read_in_writer(self, _ignored, function, args) -> Deferred:
        if self._writer is None:
            # Nothing was written yet: the writer starts now, so that the
            # read (a request's, say) never runs on the reactor's thread.
            self._writer = _Writer(self._reactor)
        return self._writer.call(function, self._connection, *args)

    # -- backup ----------------------------------------------------------------

    def backup(self, path: str) -> Deferred:
        """Copy the database, with every write made so far, into the new file
        ``path``: SQLite's online backup, run in the writer thread (the lock
        is exclusive, so no other process may read the file). Commits wait
        while it copies; clients are served."""
        return self.read(_backup, path)

    # -- shutdown ------------------------------------------------------------

    def close(self):
        """Flush what was written, then close the database in the writer thread.
        A store that cannot write gives up instead of waiting for ever."""
        if self._closed:
            return succeed(None)
        if self._retry is not None:
            self._closed = True
            self._give_up(Failure(StoreClosed("the store was closed while it could not write")))
            return self._shutdown()
        flushed = self.sync()
        self._closed = True
        if flushed is None:
            return self._shutdown()
        return flushed.addBoth(lambda _: self._shutdown())

    def _shutdown(self):
        connection, self._connection = self._connection, None
        writer, self._writer = self._writer, None
        if writer is None:
            if connection is not None:
                connection.close()
            return succeed(None)
        d = writer.call(connection.close) if connection is not None else succeed(None)
        writer.stop()
        return d


def _commit(connection: sqlite3.Connection, messages: list[tuple],
            batch: list[tuple[str, tuple]]) -> None:
    """One transaction for the whole batch (in the writer thread).

    Message rows go first: their ids are new, so no earlier write can refer
    to them. Then the writes in order, a run of the same statement at once.
    """
    execute = connection.execute
    execute("BEGIN")
    try:
        if messages:
            _execute_rows(connection, _ADD_MESSAGE, messages)
        for sql, run in groupby(batch, key=itemgetter(0)):
            _execute_rows(connection, sql, [parameters for _, parameters in run])
        execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            execute("ROLLBACK")
        raise


def _backup(connection: sqlite3.Connection, path: str) -> str:
    """Copy ``connection``'s database to ``path`` (in the writer thread)."""
    target = sqlite3.connect(path)
    try:
        connection.backup(target)
        # A file of its own: no -wal next to it to be forgotten in a copy.
        target.execute("PRAGMA journal_mode = DELETE")
    finally:
        target.close()
    return path


def _execute_rows(connection: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
    """Run ``sql`` for each row, many rows per statement where it can: one
    statement costs about as much as a row, and lets go of the GIL once."""
    if sql == _DEQUEUE:
        for client_id, run in groupby(rows, key=itemgetter(0)):
            for chunk, size in _chunks([seq for _, seq in run]):
                connection.execute(_seqs_statement(size), [client_id, *chunk])
    elif sql not in _MANY_ROWS or len(rows) == 1:
        connection.executemany(sql, rows)
    else:
        for chunk, size in _chunks(rows):
            connection.execute(_rows_statement(sql, size), list(chain.from_iterable(chunk)))


def _chunks(rows: list):
    """Cut ``rows`` into chunks of at most `_MAX_CHUNK`, each padded to a
    multiple of `_STEP` (to a power of two below that) by repeating its last
    row, which every statement here writes again as it is (OR REPLACE, IN):
    a batch is one statement a table, of one of few sizes, all prepared."""
    for at in range(0, len(rows), _MAX_CHUNK):
        chunk = rows[at:at + _MAX_CHUNK]
        count = len(chunk)
        size = -(-count // _STEP) * _STEP if count > _STEP else 1 << (count - 1).bit_length()
        yield chunk + [chunk[-1]] * (size - count), size


@functools.lru_cache(maxsize=None)
def _rows_statement(sql: str, count: int) -> str:
    template, row = _MANY_ROWS[sql]
    return template.format(", ".join([row] * count))


@functools.lru_cache(maxsize=None)
def _seqs_statement(count: int) -> str:
    return _DEQUEUE_SEQS.format(", ".join(["?"] * count))


class _Writer:
    """One daemon thread that runs calls in order and reports back through
    the reactor. A daemon, so a forgotten store never keeps a process alive;
    an interrupted transaction is rolled back by SQLite."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="reactorapp-store", daemon=True)
        self._thread.start()

    def call(self, function, *args) -> Deferred:
        d = Deferred()
        self._calls.put((function, args, d))
        return d

    def stop(self) -> None:
        self._calls.put(None)

    def _run(self) -> None:
        callFromThread = self._reactor.callFromThread
        while True:
            call = self._calls.get()
            if call is None:
                return
            function, args, d = call
            try:
                result = function(*args)
            except BaseException:
                failure = Failure()
                failure.cleanFailure()
                callFromThread(d.errback, failure)
            else:
                callFromThread(d.callback, result)


def _text(properties) -> str | None:
    """MQTT 5 properties as a Python literal (str, bytes, numbers, lists)."""
    return repr(properties) if properties else None


def _properties(text: str | None):
    return ast.literal_eval(text) if text else None
