"""`IStore` on Redis: retained messages and persistent sessions shared by nodes.

Writes are recorded in the reactor thread, as with SQLite, and sent at the
end of the reactor turn as one batch: one `EVAL` of `scripts.WRITE` holding
every write of the turn, in order. Batches are pipelined (the next one goes
out before the previous one is answered) over one connection, and Redis
answers them in order; a batch's `Commit` fires on its answer. With
``appendfsync always`` Redis answers only once the batch is in its
append-only file on disk, so an acknowledgement that waited for the commit
means the message is durable in Redis.

When Redis goes away (the connection is lost, or a batch is refused), the
batches not answered yet are kept, in order, and sent again once txredisapi
has reconnected (it backs off between attempts): every write is idempotent
(hash and set updates), so a batch that reached Redis before the connection
broke does no harm the second time. Meanwhile `writable` is False (/readyz
answers 503), nobody waiting for those batches is answered, and later
writes wait behind them, as with a full disk under SQLite.

Sessions move between nodes. Each session has a holder in Redis (the
``sessions`` hash). `load` at start-up returns the retained messages and
the sessions this node holds; `load_session` (`ISessionLoader`, called at
CONNECT) reads one session and makes this node its holder. Writes to a
session held by another node are skipped by the script; a queued message
among them goes, in the same script, to the stream of the node that holds
the session now (`scripts.WRITE`), and a batch that skipped an incoming
QoS 2 id (or a message for a session nobody holds) fails with
`SessionMoved`, so nothing acknowledged is lost to a node that was slow to
let go.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from reactorapp.cluster import scripts
from reactorapp.cluster.blocking import BlockingRedis
from reactorapp.cluster.encoding import (
    ENTRY_HEADER, pack_entry, pack_flight, pack_message, unpack_entry, unpack_flight,
    unpack_message,
)
from reactorapp.cluster.outbox import stream_key
from reactorapp.hub.commit import Commit
from reactorapp.hub.interfaces import ISessionLoader
from reactorapp.store.interfaces import (
    IStore, StoreClosed, StoredMessage, StoredSession, StoredState, StoreError,
)

log = Logger()

#: The start of every node's stream key: where the script sends a message
#: for a session that moved.
STREAMS = stream_key("").encode()

#: Arguments per `EVAL` at most: a longer batch is cut into several
#: (pipelined all the same, answered in order).
MAX_ARGS = 20_000


class SessionMoved(Exception):
    """Writes for a session another node holds now were skipped."""


def key_prefix(prefix: str = "") -> bytes:
    """``reactorapp:`` (``reactorapp:{prefix}:`` with a prefix), the start of
    every key: a prefix lets several hubs share one Redis database."""
    return f"reactorapp:{prefix}:".encode() if prefix else b"reactorapp:"


class Batch:
    """Writes sent as one script: their arguments and the commit they make."""

    __slots__ = ("args", "commit")

    def __init__(self, args: list, commit: Commit) -> None:
        self.args = args
        self.commit = commit


@implementer(IStore, ISessionLoader)
class RedisStore:
    """`IStore` on one Redis server (or Valkey), shared by the nodes."""

    #: Seconds `load` waits for Redis before start-up fails.
    connect_timeout = 10.0

    def __init__(self, reactor, *, host: str = "127.0.0.1", port: int = 6379, db: int = 0,
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 prefix: str = "", node: str = "") -> None:
        """Where Redis is (the fields of ``--cluster``'s URL); ``node``: this
        node's name, the holder of the sessions it makes. Nothing is opened
        before `load`."""
        self._reactor = reactor
        self._address = {"host": host, "port": port, "db": db, "username": username,
                         "password": password, "tls": tls}
        self._factory = None
        self.prefix = key_prefix(prefix)
        self.node = node
        self.where = f"Redis at {host}:{port}"
        self.writes = 0
        self.writable = True
        self.write_failures = 0
        #: Write arguments not sent yet (opcode, then its arguments).
        self._pending: list = []
        self._waiting: Commit | None = None  # what the pending writes' waiters wait for
        self._timer = None
        #: Batches sent and not answered, in order; sent again after a failure.
        self._unanswered: deque[Batch] = deque()
        #: The connection batches go out on; None while Redis is away.
        self._connection = None
        self._recovering = False
        #: Reads waiting for the connection.
        self._reconnected: list[Deferred] = []
        self._closed = False
        self._failure: Failure | None = None

    def _connect(self) -> None:
        """The connection writes go out on, kept open by txredisapi
        (reconnecting with back-off); made after start-up read the state."""
        import txredisapi  # imports the global reactor: only when Redis is used
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        address = self._address
        factory = txredisapi.RedisFactory(
            self.where, address["db"] or None, 1, isLazy=True, charset=None,
            password=address["password"], convertNumbers=False, username=address["username"])
        factory.initialDelay, factory.maxDelay = 0.5, 5.0
        endpoint = HostnameEndpoint(self._reactor, address["host"], address["port"],
                                    timeout=self.connect_timeout)
        if address["tls"]:  # True, or the file of --cluster-ca
            from reactorapp.cluster.url import client_tls

            endpoint = wrapClientTLS(client_tls(address["host"], address["tls"]), endpoint)
        self._factory = factory
        factory.startConnecting(endpoint)
        self._recover(None)

    def __repr__(self) -> str:
        return f"<RedisStore {self.where} {self.prefix.decode()!r}>"

    # -- reads ----------------------------------------------------------------

    def load(self) -> StoredState:
        """Read the retained messages and the sessions this node holds
        (blocking: at start-up, before the reactor runs), then open the
        connection writes go out on. `StoreError` if Redis cannot be read."""
        redis = self.blocking()
        try:
            state = self._read_all(redis)
        except Exception as e:  # any answer Redis or the parser can give
            raise StoreError(f"cannot read {self.where}: {_reason(e)}.") from None
        finally:
            redis.close()
        self._connect()
        return state

    def _read_all(self, redis: BlockingRedis) -> StoredState:
        retained = redis.call(b"HGETALL", self.prefix + b"retained")
        holders = redis.call(b"HGETALL", self.prefix + b"sessions")
        held = [client for client, holder in _pairs(holders)
                if not self.node or holder.decode() == self.node]
        answers = [redis.send(b"EVAL", scripts.READ_SESSION, b"0", self.prefix, client, b"")
                   for client in held]  # pipelined
        shared: dict = {}  # one Message for a message queued in several sessions
        sessions = [_stored_session(redis.wait(answer), client.decode(), shared)
                    for client, answer in zip(held, answers)]
        return StoredState([unpack_message(value) for _, value in _pairs(retained)],
                           [session for session in sessions if session is not None])

    def load_session(self, client_id: str) -> Deferred:
        """Read the session of ``client_id`` and hold it from now on (writes
        of the node that held it are skipped): a Deferred of a
        `StoredSession`, or None if Redis has none."""
        d = self.read(b"EVAL", scripts.READ_SESSION, b"0", self.prefix, client_id,
                      self.node)
        return d.addCallback(_stored_session, client_id, {})

    def forget_session(self, client_id) -> None:
        """Remove the session of ``client_id`` wherever it is held."""
        self.add_session(client_id)  # held here first: removing is the holder's
        self.remove_session(client_id)

    def read(self, *command) -> Deferred:
        """Send ``command`` once every write recorded before it was sent
        (Redis answers in order: it sees them), and fire with its answer.
        While Redis is away it waits for it; the caller bounds the wait."""
        if self._closed or self._factory is None:
            return fail(StoreClosed("the store is closed"))
        written = self.sync()
        written = succeed(None) if written is None else written
        return written.addCallback(self._cbWritten, command)

    def _cbWritten(self, _ignored, command) -> Deferred:
        connection = self._connection
        if connection is not None:
            try:
                return connection.execute_command(*command)
            except Exception:  # txredisapi raises when the connection is gone
                return fail()
        back = Deferred()
        self._reconnected.append(back)
        return back.addCallback(self._cbWritten, command)

    def blocking(self) -> BlockingRedis:
        """A connection of its own for reads at start-up (before the reactor
        runs); `StoreError` if Redis cannot be reached."""
        try:
            return BlockingRedis(**self._address, timeout=self.connect_timeout)
        except (OSError, ConnectionError) as e:
            raise StoreError(f"cannot reach {self.where}: {_reason(e)}.") from None

    def write(self, *args) -> None:
        """Record writes for the next batch, for tables kept next to the
        store's (the webhook rules and outbox): an opcode of
        `scripts.WRITE` and its arguments, durable with everything written
        before."""
        self._write(*args)

    # -- writes (reactor thread) ----------------------------------------------

    def _write(self, *args) -> None:
        self.writes += 1
        if self._closed:
            return
        self._pending.extend(args)
        if self._timer is None:
            self._timer = self._reactor.callLater(0, self._submit)

    def set_retained(self, message) -> None:
        self._write(b"R", message.topic, pack_message(message))

    def remove_retained(self, topic) -> None:
        self._write(b"r", topic)

    def add_session(self, client_id) -> None:
        self._write(b"S", client_id)

    def remove_session(self, client_id) -> None:
        self._write(b"X", client_id)

    def set_session_expiry(self, client_id, seconds) -> None:
        self._write(b"E", client_id, "" if seconds is None else repr(float(seconds)))

    def set_will(self, client_id, message, delay) -> None:
        self._write(b"L", client_id, b"" if message is None
                    else repr(float(delay)).encode() + b"\0" + pack_message(message))

    def add_subscription(self, client_id, topic_filter, qos, options=0, identifier=0) -> None:
        # MQTT 5 options and identifier, when there are any, ride in the
        # same hash value: "QOS:OPTIONS:IDENTIFIER".
        value = f"{qos}:{options}:{identifier}" if options or identifier else qos
        self._write(b"B", client_id, topic_filter, value)

    def remove_subscription(self, client_id, topic_filter) -> None:
        self._write(b"b", client_id, topic_filter)

    def enqueue(self, client_id, seq, message, qos, retained, share=None) -> None:
        self._write(b"Q", client_id, seq, pack_entry(message, qos, retained))
        if share is not None:
            self._write(b"H", client_id, seq, share)

    def set_inflight(self, client_id, seq, packet_id, state) -> None:
        self._write(b"F", client_id, seq, pack_flight(packet_id, state))

    def dequeue(self, client_id, seq) -> None:
        self._write(b"D", client_id, seq)

    def forward(self, client_id, entry: bytes) -> None:
        """A packed queue entry (`encoding.pack_entry`) for a session this
        node does not have in memory: to the stream of the node that holds
        it, or to its queue in Redis if that is this node (call it only
        after a `read` answered: a `load_session` sent before has been
        handled then)."""
        self._write(b"T", client_id, entry)

    def add_awaiting_pubrel(self, client_id, packet_id) -> None:
        self._write(b"P", client_id, packet_id)

    def remove_awaiting_pubrel(self, client_id, packet_id) -> None:
        self._write(b"p", client_id, packet_id)

    # -- commits ------------------------------------------------------------------

    def pending_commit(self) -> Commit | None:
        if self._failure is not None:
            return Commit.failed(self._failure)
        if self._pending:
            if self._waiting is None:
                self._waiting = Commit()
            return self._waiting
        if self._unanswered:
            return self._unanswered[-1].commit
        if self._closed:
            return Commit.failed(StoreClosed("the store is closed"))
        return None

    def sync(self) -> Deferred | None:
        commit = self.pending_commit()
        return None if commit is None else commit.deferred()

    def _submit(self) -> None:
        """Send the writes of this turn as one batch (a few, if long)."""
        self._timer = None
        pending, self._pending = self._pending, []
        waiting, self._waiting = self._waiting, None
        if not pending:
            return
        head = [b"EVAL", scripts.WRITE, b"0", self.prefix, self.node, STREAMS]
        cuts = _cut(pending)
        for at, (start, end) in enumerate(cuts):
            last = at == len(cuts) - 1
            commit = (waiting or Commit()) if last else Commit()
            batch = Batch(head + pending[start:end], commit)
            self._unanswered.append(batch)
            if self._connection is not None:
                self._send(self._connection, batch)
            else:
                self._away("not connected")

    def _send(self, connection, batch: Batch) -> None:
        try:
            d = connection.execute_command(*batch.args)
        except Exception:  # txredisapi raises when the connection is gone
            d = fail()
        d.addCallbacks(self._cbAnswered, self._ebAnswered,
                       callbackArgs=(connection, batch), errbackArgs=(connection, batch))
        d.addErrback(lambda f: log.failure("Handling an answer of {store} failed", f, store=self))

    def _cbAnswered(self, moved, connection, batch: Batch) -> None:
        if connection is not self._connection or not self._unanswered \
                or self._unanswered[0] is not batch:
            return  # on a connection given up: it is sent again
        self._unanswered.popleft()
        if not self.writable:
            log.info("Writing to {store} again; what waited for it is acknowledged now",
                     store=self)
            self.writable = True
        if moved:
            clients = ", ".join(sorted(c.decode() for c in moved))
            batch.commit.fire(Failure(SessionMoved(f"held by another node now: {clients}")))
        else:
            batch.commit.fire()

    def _ebAnswered(self, failure: Failure, connection, batch: Batch) -> None:
        """A batch failed: give the connection up, and send every batch not
        answered again, in order, on the next one txredisapi makes."""
        if connection is not self._connection:
            return
        self.write_failures += 1
        self._connection = None
        self._away(failure.getErrorMessage())
        transport = getattr(connection, "transport", None)
        if connection.connected and transport is not None:
            transport.abortConnection()  # later answers on it must not count
        self._recover(connection)

    def _away(self, reason: str) -> None:
        if self.writable:
            self.writable = False
            log.warn("Could not write to {store} ({reason}); trying again once it answers."
                     " Nothing that needs the store is acknowledged until then",
                     store=self, reason=reason)

    def _recover(self, lost) -> None:
        if self._recovering:
            return
        self._recovering = True
        self._factory.getConnection(peek=True).addCallbacks(
            self._cbReconnected, self._ebReconnected, callbackArgs=(lost,))

    def _cbReconnected(self, connection, lost) -> None:
        self._recovering = False
        if self._failure is not None:
            return  # given up on close
        if connection is lost or not connection.connected:
            # The connection given up is still in the pool until it closes.
            self._reactor.callLater(0.1, self._recover, lost)
            return
        self._connection = connection
        for batch in list(self._unanswered):
            self._send(connection, batch)
        waiting, self._reconnected = self._reconnected, []
        for d in waiting:
            d.callback(None)  # reads after the writes, on the same connection

    def _ebReconnected(self, failure: Failure) -> None:
        self._recovering = False
        if self._failure is None:
            log.failure("Cannot wait for {store}", failure, store=self)

    def _give_up(self, failure: Failure) -> None:
        """On close: what could not be written is lost; it was never
        acknowledged, so its senders send it again."""
        self._failure = failure
        batches, self._unanswered = list(self._unanswered), deque()
        waiting, self._waiting = self._waiting, None
        self._pending = []
        if batches or waiting is not None:
            log.error("Closing {store} with writes it could not make: {reason}",
                      store=self, reason=failure.getErrorMessage())
        for batch in batches:
            batch.commit.fire(failure)
        if waiting is not None:
            waiting.fire(failure)

    # -- shutdown -------------------------------------------------------------

    def close(self) -> Deferred:
        """Send what was written and wait for Redis's answer, for at most
        `connect_timeout` (then what is not answered is given up: it was
        never acknowledged), and close the connection."""
        if self._closed:
            return succeed(None)
        if self._timer is not None:
            self._timer.cancel()
            self._submit()
        self._closed = True
        if not self._unanswered:
            return succeed(None).addCallback(self._disconnect)
        last = self._unanswered[-1].commit.deferred()
        last.addTimeout(self.connect_timeout, self._reactor)
        last.addErrback(self._ebClosing)
        return last.addCallback(self._disconnect)

    def _ebClosing(self, failure: Failure) -> None:
        if self._failure is None:
            self._give_up(Failure(StoreClosed(
                f"{self.where} did not answer within {self.connect_timeout:g} s"
                " of closing the store")))

    def _disconnect(self, _ignored) -> Deferred | None:
        return None if self._factory is None else self._factory.disconnect()


def _cut(pending: list) -> list[tuple[int, int]]:
    """Cut the write arguments into runs of at most `MAX_ARGS`, at the
    start of a write (each begins with its one-letter opcode)."""
    cuts, start = [], 0
    while len(pending) - start > MAX_ARGS:
        end = start + MAX_ARGS
        while not (isinstance(pending[end], bytes) and len(pending[end]) == 1
                   and pending[end] in _OPCODES):
            end -= 1
        cuts.append((start, end))
        start = end
    cuts.append((start, len(pending)))
    return cuts


#: The opcodes of `scripts.WRITE` (the webhook tables' too).
_OPCODES = frozenset(bytes([c]) for c in b"RrSXELHBbQFDPpWwAaZzVT")


def _pairs(flat) -> list[tuple]:
    flat = flat or []
    return list(zip(flat[0::2], flat[1::2]))


def _stored_session(answer, client_id: str, shared: dict) -> StoredSession | None:
    if answer is None:
        return None
    _holder, subscriptions, queue, flights, pubrel, *rest = answer
    expiry = float(rest[0]) if rest and rest[0] else None
    will = None
    if len(rest) > 1 and rest[1]:
        delay, _, packed = rest[1].partition(b"\0")
        will = (unpack_message(packed), float(delay))
    shares = {int(seq): share.decode() for seq, share in _pairs(rest[2])} if len(rest) > 2 else {}
    flight = {int(seq): unpack_flight(value) for seq, value in _pairs(flights)}
    messages = []
    for seq, value in sorted(((int(s), v) for s, v in _pairs(queue)), key=lambda p: p[0]):
        message, qos, retained = unpack_entry(value)
        message = shared.setdefault(value[ENTRY_HEADER:], message)
        packet_id, state = flight.get(seq, (None, None))
        messages.append(StoredMessage(seq, message, qos, retained, packet_id, state,
                                      shares.get(seq)))
    granted, options = {}, {}
    for topic_filter, value in _pairs(subscriptions):
        qos, _, rest = value.partition(b":")
        granted[topic_filter.decode()] = int(qos)
        if rest:
            bits, _, identifier = rest.partition(b":")
            options[topic_filter.decode()] = (int(bits), int(identifier))
    return StoredSession(client_id, granted, messages,
                         {int(packet_id) for packet_id in pubrel or ()}, options, expiry,
                         will)


def _reason(error: BaseException) -> str:
    return (str(error) or type(error).__name__).rstrip(".")

# The IWebhookStore adapter of this store (its tables live with it).
from reactorapp.cluster import webhookstore  # noqa: E402,F401
