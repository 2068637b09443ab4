"""What only the SQLite store has: group commit on a writer thread, WAL with
synchronous FULL, schema versions, and refusing data it cannot trust."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred

import reactorapp.store.sqlite as sqlite_store
from reactorapp.hub.message import Message
from reactorapp.store.interfaces import StoreError
from reactorapp.store.schema import FILENAME, MIGRATIONS, VERSION, open_database
from reactorapp.store.sqlite import SQLiteStore


def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def batches(monkeypatch):
    """Record each committed batch: (thread id, message rows, other writes)."""
    seen = []
    commit = sqlite_store._commit

    def recording(connection, messages, batch):
        seen.append((threading.get_ident(), len(messages), len(batch)))
        return commit(connection, messages, batch)

    monkeypatch.setattr(sqlite_store, "_commit", recording)
    return seen


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(str(tmp_path), reactor())
    opened.load()
    yield opened
    opened.close()


def turn():
    """Wait for the reactor's next turn."""
    return task.deferLater(reactor(), 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_one_turn_of_writes_is_one_transaction_in_another_thread(store, batches):
    store.add_session("c")
    for seq in range(1, 1001):
        store.enqueue("c", seq, Message("t", b"p", 1), 1, False)
    assert batches == []  # nothing happens in the caller's turn
    await store.sync()
    assert [(m, n) for _, m, n in batches] == [(1000, 1 + 1000)]
    assert batches[0][0] != threading.get_ident()


@pytest_twisted.ensureDeferred
async def test_writes_made_during_a_commit_go_into_the_next_one(store, batches):
    """Group commit: one transaction in flight, everything else waits for
    the next, however many writes and syncs arrive meanwhile."""
    store.add_session("c")
    first = store.sync()
    await turn()  # the first batch is now with the writer
    later = []
    for seq in range(1, 51):
        store.enqueue("c", seq, Message("t", b"p", 1), 1, False)
        later.append(store.sync())
    await first
    for d in later:
        await d
    assert [(m, n) for _, m, n in batches] == [(0, 1), (50, 50)]


@pytest_twisted.ensureDeferred
async def test_a_message_acknowledged_before_its_commit_is_never_written(store, batches):
    """A connected subscriber often acknowledges while the previous commit
    is in flight: the insert and its delete cancel out."""
    store.add_session("a")
    store.add_session("b")
    first = store.sync()
    await turn()
    shared, alone = Message("t", b"shared", 1), Message("t", b"alone", 1)
    store.enqueue("a", 1, shared, 1, False)
    store.enqueue("b", 1, shared, 1, False)
    store.enqueue("a", 2, alone, 1, False)
    store.dequeue("a", 1)
    store.dequeue("a", 2)
    durable = store.sync()
    await first
    await durable
    assert [(m, n) for _, m, n in batches] == [(0, 2), (1, 1)]  # "shared", for b
    store.dequeue("b", 1)
    await store.close()
    again = SQLiteStore(store.directory, reactor())
    state = again.load()
    assert [s.messages for s in state.sessions] == [[], []]
    assert again._connection.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_that_cancels_out_needs_no_commit(store, batches):
    store.add_session("c")
    await store.sync()
    store.enqueue("c", 1, Message("t", b"p", 1), 1, False)
    store.dequeue("c", 1)
    await store.sync()
    assert len(batches) == 1


@pytest_twisted.ensureDeferred
async def test_sync_fires_only_after_the_commit(store, tmp_path):
    store.set_retained(Message("r", b"1", 1, True))
    d = store.sync()
    assert not d.called
    await d
    # The WAL holds the commit: a copy of the files opens with the row in it,
    # as it would after a kill -9.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(tmp_path):
        if name.startswith(FILENAME):
            (copy / name).write_bytes((tmp_path / name).read_bytes())
    connection = sqlite3.connect(copy / FILENAME)
    assert connection.execute("SELECT topic FROM retained").fetchall() == [("r",)]
    connection.close()


@pytest_twisted.ensureDeferred
async def test_writes_nobody_waits_for_ride_with_the_next_batch(tmp_path, batches):
    """A forgotten message or a subscription costs no fsync of its own."""
    store = SQLiteStore(str(tmp_path), reactor(), lazy=3600)
    store.load()
    store.add_session("c")
    store.add_subscription("c", "t", 1)
    await turn()
    await turn()
    assert batches == []
    store.enqueue("c", 1, Message("t", b"p", 1), 1, False)
    await store.sync()
    assert [(m, n) for _, m, n in batches] == [(1, 3)]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_writes_nobody_waits_for_are_committed_soon_anyway(tmp_path, monkeypatch):
    committed = Deferred()
    commit = sqlite_store._commit

    def signalling(connection, messages, batch):
        commit(connection, messages, batch)
        reactor().callFromThread(committed.callback, batch)

    monkeypatch.setattr(sqlite_store, "_commit", signalling)
    store = SQLiteStore(str(tmp_path), reactor(), lazy=0.01)
    store.load()
    store.remove_retained("t")
    batch = await committed.addTimeout(10, reactor())
    assert [sql for sql, _ in batch] == [sqlite_store._REMOVE_RETAINED]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_message_rows_go_with_the_last_session_that_owes_them(store):
    for client_id in ("a", "b"):
        store.add_session(client_id)
        for seq in range(1, 101):
            store.enqueue(client_id, seq, Message("t", str(seq).encode(), 1), 1, False)
    await store.sync()
    for seq in range(1, 101):
        store.dequeue("a", seq)
    await store.sync()
    for seq in range(1, 81):
        store.dequeue("b", seq)
    await store.sync()
    await store.close()
    connection = open_database(store.directory)
    assert connection.execute("SELECT count(*) FROM messages").fetchone() == (20,)
    connection.close()


@pytest_twisted.ensureDeferred
async def test_dequeues_of_several_sessions_in_one_batch(store):
    """Acknowledgements of interleaved sessions, many per commit: each row
    goes, and the messages no session owes any more with them."""
    shared = [Message("t", str(seq).encode(), 1) for seq in range(1, 301)]
    for client_id in ("a", "b", "c"):
        store.add_session(client_id)
        for seq, message in enumerate(shared, 1):
            store.enqueue(client_id, seq, message, 1, False)
    await store.sync()
    for seq in range(1, 301):
        for client_id in ("a", "b", "c"):
            if client_id != "c" or seq <= 150:
                store.dequeue(client_id, seq)
    await store.sync()
    await store.close()
    again = SQLiteStore(store.directory, reactor())
    state = again.load()
    owed = {s.client_id: [m.seq for m in s.messages] for s in state.sessions}
    assert owed == {"a": [], "b": [], "c": list(range(151, 301))}
    assert again._connection.execute("SELECT count(*) FROM messages").fetchone() == (150,)
    await again.close()


def test_batches_are_cut_into_few_statement_sizes():
    """Each chunk is its rows in order, then its last row again up to one of
    a few sizes (so statements stay prepared); OR REPLACE and IN write a
    repeated row as they would once."""
    sizes = set()
    for count in range(1, 1200):
        rows = list(range(count))
        chunks = list(sqlite_store._chunks(rows))
        covered = []
        for chunk, size in chunks:
            assert len(chunk) == size <= sqlite_store._MAX_CHUNK
            real = chunk[:len(set(chunk))]  # the rows are distinct: the rest is padding
            assert chunk[len(real):] == [real[-1]] * (size - len(real))
            covered += real
            sizes.add(size)
        assert covered == rows
    assert len(sizes) <= 40


def test_dequeues_find_their_rows_by_key(tmp_path):
    """A dequeue must not scan the queue: with thousands of messages queued,
    each acknowledgement would cost a pass over all of them."""
    connection = open_database(str(tmp_path))
    try:
        for size in (1, 4, 256):
            plan = connection.execute("EXPLAIN QUERY PLAN " + sqlite_store._seqs_statement(size),
                                      ["c", *range(size)]).fetchall()
            details = " ".join(row[-1] for row in plan)
            assert "SCAN queue" not in details and "PRIMARY KEY" in details, details
    finally:
        connection.close()


def test_wal_synchronous_full_and_locked(tmp_path):
    connection = open_database(str(tmp_path))
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with pytest.raises(StoreError, match="is in use by another process"):
            open_database(str(tmp_path))
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_reads_of_other_tables_see_every_write_made_before_them(store):
    """What the webhook outbox relies on: `read` runs after the writes
    recorded so far are durable; `read_now` is for start-up only."""
    count = "SELECT count(*) FROM sessions"
    assert store.read_now(lambda connection: connection.execute(count).fetchone()) == (0,)
    store.add_session("a")
    store.write("INSERT OR IGNORE INTO sessions (client_id) VALUES (?)", ("b",))
    rows = await store.read(lambda connection, sql: connection.execute(sql).fetchall(), count)
    assert rows == [(2,)]
    with pytest.raises(StoreError, match="start-up"):
        store.read_now(lambda connection: None)


def test_a_new_database_is_at_the_current_version(tmp_path):
    connection = open_database(str(tmp_path))
    assert connection.execute("SELECT version FROM schema_version").fetchall() == [(VERSION,)]
    connection.close()


def test_an_older_database_is_migrated_forward(tmp_path):
    """A newer reactorapp opens an older data directory, and says so."""
    from twisted.logger import formatEvent, globalLogPublisher

    open_database(str(tmp_path)).close()
    newer = MIGRATIONS + [("ALTER TABLE sessions ADD COLUMN expires REAL",)]
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        connection = open_database(str(tmp_path), newer)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert f"migrated from schema version {VERSION} to {VERSION + 1}" in " ".join(
        formatEvent(event) for event in logged)
    assert connection.execute("SELECT version FROM schema_version").fetchall() == [(VERSION + 1,)]
    columns = [row[1] for row in connection.execute("PRAGMA table_info(sessions)")]
    assert "expires" in columns
    connection.close()


def test_webhook_tables_made_before_they_were_a_migration_are_kept(tmp_path):
    """Version 1 databases may hold webhook tables created outside the
    migrations; version 2 adds them where missing and keeps their rows."""
    old = open_database(str(tmp_path), MIGRATIONS[:1])
    for statement in MIGRATIONS[1]:
        old.execute(statement)
    old.execute("INSERT INTO webhook_rules VALUES ('kept', '{}')")
    old.close()
    connection = open_database(str(tmp_path))
    assert connection.execute("SELECT version FROM schema_version").fetchall() == [(VERSION,)]
    assert connection.execute("SELECT name FROM webhook_rules").fetchall() == [("kept",)]
    connection.close()


def test_a_failed_migration_changes_nothing(tmp_path):
    open_database(str(tmp_path)).close()
    broken = MIGRATIONS + [("CREATE TABLE extra (x)", "this is not SQL")]
    with pytest.raises(StoreError, match="cannot use"):
        open_database(str(tmp_path), broken)
    connection = open_database(str(tmp_path))
    tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
    assert "extra" not in tables
    connection.close()


def unchanged(path):
    """The bytes of ``path`` now; compare later to show nothing wrote to it."""
    return path.read_bytes()


def test_a_newer_schema_is_refused(tmp_path):
    connection = open_database(str(tmp_path))
    connection.execute("UPDATE schema_version SET version = ?", (VERSION + 5,))
    connection.close()
    before = unchanged(tmp_path / FILENAME)
    with pytest.raises(StoreError, match=f"newer reactorapp .schema version {VERSION + 5}"):
        open_database(str(tmp_path))
    assert unchanged(tmp_path / FILENAME) == before


def test_a_file_that_is_not_a_database_is_left_alone(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"not a database\n" * 500)
    before = unchanged(tmp_path / FILENAME)
    with pytest.raises(StoreError, match="is not a usable reactorapp database"):
        open_database(str(tmp_path))
    assert unchanged(tmp_path / FILENAME) == before
    assert sorted(os.listdir(tmp_path)) == [FILENAME]


def test_someone_elses_database_is_left_alone(tmp_path):
    other = sqlite3.connect(tmp_path / FILENAME)
    other.execute("CREATE TABLE theirs (x)")
    other.commit()
    other.close()
    before = unchanged(tmp_path / FILENAME)
    with pytest.raises(StoreError, match="is not a reactorapp database"):
        open_database(str(tmp_path))
    assert unchanged(tmp_path / FILENAME) == before


def test_a_directory_in_place_of_the_file(tmp_path):
    (tmp_path / FILENAME).mkdir()
    with pytest.raises(StoreError, match="is not a file"):
        open_database(str(tmp_path))


def test_a_database_that_cannot_be_written(tmp_path):
    """Its write-ahead log cannot be created: a directory is in the way,
    which stops root too (CI runs as root)."""
    open_database(str(tmp_path)).close()
    (tmp_path / (FILENAME + "-wal")).mkdir()
    with pytest.raises(StoreError, match="cannot use"):
        open_database(str(tmp_path))


def test_a_data_directory_under_a_regular_file(tmp_path):
    (tmp_path / "plain").write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        open_database(str(tmp_path / "plain" / "data"))


def test_load_refuses_with_one_sentence(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError) as caught:
        SQLiteStore(str(tmp_path), reactor()).load()
    sentence = str(caught.value)
    assert sentence.endswith(".") and "\n" not in sentence


@pytest_twisted.ensureDeferred
async def test_a_read_before_any_write_runs_off_the_reactor_thread(store):
    """A webhook API request may be the first to use the store: its SQL runs
    in the writer thread, never on the reactor's."""
    reactor_thread = threading.get_ident()
    ran_in = await store.read(lambda connection: threading.get_ident())
    assert ran_in != reactor_thread
