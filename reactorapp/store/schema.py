"""The SQLite schema, its versions, and opening a database safely.

A database is opened only if it is one of ours at a version this code knows;
older versions are migrated forward in one transaction. Anything else stops
start-up with a sentence, and the files are left as they were.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.logger import Logger

from reactorapp.store.interfaces import StoreError

log = Logger()

FILENAME = "reactorapp.sqlite3"

#: MIGRATIONS[n] takes a database from version n to n + 1. Append only.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version VALUES (0)",
        """CREATE TABLE retained (
            topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
            properties TEXT, sender TEXT, timestamp REAL NOT NULL)""",
        "CREATE TABLE sessions (client_id TEXT PRIMARY KEY)",
        """CREATE TABLE subscriptions (
            client_id TEXT NOT NULL, topic_filter TEXT NOT NULL, qos INTEGER NOT NULL,
            PRIMARY KEY (client_id, topic_filter)) WITHOUT ROWID""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
            qos INTEGER NOT NULL, retain INTEGER NOT NULL, properties TEXT,
            sender TEXT, timestamp REAL NOT NULL)""",
        """CREATE TABLE queue (
            client_id TEXT NOT NULL, seq INTEGER NOT NULL, message INTEGER NOT NULL,
            qos INTEGER NOT NULL, retained INTEGER NOT NULL,
            packet_id INTEGER, state INTEGER,
            PRIMARY KEY (client_id, seq)) WITHOUT ROWID""",
        "CREATE INDEX queue_by_message ON queue (message)",
        # A message row lives as long as some session still owes it.
        """CREATE TRIGGER release_message AFTER DELETE ON queue
            WHEN NOT EXISTS (SELECT 1 FROM queue WHERE message = OLD.message)
            BEGIN DELETE FROM messages WHERE id = OLD.message; END""",
        """CREATE TABLE awaiting_pubrel (
            client_id TEXT NOT NULL, packet_id INTEGER NOT NULL,
            PRIMARY KEY (client_id, packet_id)) WITHOUT ROWID""",
    ),
    # Webhook rules, the outbox and dead letters (reactorapp/webhooks/sqlitestore.py).
    # IF NOT EXISTS: they were once created outside the migrations, so some
    # databases at version 1 have them already.
    (
        "CREATE TABLE IF NOT EXISTS webhook_rules (name TEXT PRIMARY KEY, rule TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS webhook_outbox (
            id INTEGER PRIMARY KEY, rule TEXT NOT NULL, topic TEXT NOT NULL,
            payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
            key TEXT NOT NULL, timestamp REAL NOT NULL, queued_at REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS webhook_outbox_by_rule ON webhook_outbox (rule, id)",
        """CREATE TABLE IF NOT EXISTS webhook_dead (
            id INTEGER PRIMARY KEY, rule TEXT NOT NULL, topic TEXT NOT NULL,
            payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
            key TEXT NOT NULL, timestamp REAL NOT NULL, queued_at REAL NOT NULL,
            attempts INTEGER NOT NULL, reason TEXT NOT NULL, died_at REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS webhook_dead_by_rule ON webhook_dead (rule, id)",
    ),
    # Named Server-Sent Events sessions and the events they owe
    # (reactorapp/web/stream_tables.py).
    (
        """CREATE TABLE stream_sessions (
            name TEXT PRIMARY KEY, owner TEXT, qos INTEGER NOT NULL, filters TEXT NOT NULL,
            expiry REAL NOT NULL, detached_at REAL, acked INTEGER NOT NULL)""",
        """CREATE TABLE stream_queue (
            name TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
            payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
            retained INTEGER NOT NULL, properties TEXT, sender TEXT, timestamp REAL NOT NULL,
            PRIMARY KEY (name, seq)) WITHOUT ROWID""",
    ),
    # MQTT 5 subscription options (No Local, Retain As Published, Retain
    # Handling: the options byte without its QoS bits) and Subscription
    # Identifiers of persistent sessions (reactorapp/mqtt/suboptions.py).
    (
        "ALTER TABLE subscriptions ADD COLUMN options INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE subscriptions ADD COLUMN identifier INTEGER NOT NULL DEFAULT 0",
    ),
    # The MQTT 5 properties of a webhook delivery, as a Python literal
    # (reactorapp/webhooks/sqlitestore.py).
    (
        "ALTER TABLE webhook_outbox ADD COLUMN properties TEXT",
        "ALTER TABLE webhook_dead ADD COLUMN properties TEXT",
    ),
    # How long each persistent session is kept once its client has gone
    # (MQTT 5's Session Expiry Interval; NULL: --session-expiry), and the
    # MQTT 5 wills waiting for their Will Delay Interval, and the shared
    # subscription a queued message was taken for.
    (
        "ALTER TABLE sessions ADD COLUMN expiry REAL",
        "ALTER TABLE queue ADD COLUMN share TEXT",
        """CREATE TABLE wills (
            client_id TEXT PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
            qos INTEGER NOT NULL, retain INTEGER NOT NULL, properties TEXT, sender TEXT,
            timestamp REAL NOT NULL, delay REAL NOT NULL)""",
    ),
]

VERSION = len(MIGRATIONS)


def open_database(directory: str, migrations=None) -> sqlite3.Connection:
    """Open (or create) the database in ``directory``, migrated to the
    current version, locked for this process alone."""
    migrations = MIGRATIONS if migrations is None else migrations
    path = os.path.join(directory, FILENAME)
    exists = os.path.lexists(path)
    if exists and not os.path.isfile(path):
        raise StoreError(f"{path!r} is not a file; move it away or choose another data directory.")
    try:
        # mode=rw never creates: a file that vanished is not silently replaced.
        uri = "file:" + _quote(os.path.abspath(path)) + ("?mode=rw" if exists else "?mode=rwc")
        # The store's multi-row statements come in about 110 sizes: all of
        # them stay prepared.
        connection = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=0,
            cached_statements=256)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path!r}: {_reason(e)}.") from None
    try:
        _prepare(connection, path, migrations)
    except BaseException:
        connection.close()
        raise
    return connection


#: Values one statement of the store may bind: 512 message rows of 8 columns.
VARIABLES_NEEDED = 4096


def _prepare(connection: sqlite3.Connection, path: str, migrations) -> None:
    if connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) < VARIABLES_NEEDED:
        raise StoreError(f"SQLite {sqlite3.sqlite_version} binds too few values per statement;"
                         " reactorapp needs SQLite 3.32 or newer.")
    try:
        # One process at a time: a second broker on the same directory fails
        # here instead of interleaving its writes with ours. Exclusive mode
        # also keeps the WAL index in memory (no -shm file).
        connection.execute("PRAGMA locking_mode = EXCLUSIVE")
        connection.execute("BEGIN IMMEDIATE")
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = _version(connection, path, tables)
        if version > len(migrations):
            raise StoreError(
                f"{path!r} was written by a newer reactorapp (schema version {version};"
                f" this one knows up to {len(migrations)}); upgrade reactorapp to use it.")
        for statements in migrations[version:]:
            for statement in statements:
                connection.execute(statement)
        if version < len(migrations):
            connection.execute("UPDATE schema_version SET version = ?", (len(migrations),))
        connection.execute("COMMIT")
        if 0 < version < len(migrations):
            log.info("{path} migrated from schema version {old} to {new}",
                     path=path, old=version, new=len(migrations))
        # WAL: a commit appends to the log and, with synchronous FULL, is on
        # disk (fsync) before COMMIT returns, so a kill -9 or a power cut
        # never loses a committed transaction.
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"cannot use write-ahead logging for {path!r} (journal mode {mode}).")
        connection.execute("PRAGMA synchronous = FULL")
    except StoreError:
        _rollback(connection)
        raise
    except sqlite3.Error as e:
        _rollback(connection)
        text = _reason(e)
        if "locked" in text or "busy" in text:
            raise StoreError(f"{path!r} is in use by another process.") from None
        if "not a database" in text or "malformed" in text:
            raise StoreError(
                f"{path!r} is not a usable reactorapp database ({text});"
                " move it away or restore it from a backup.") from None
        raise StoreError(f"cannot use {path!r}: {text}.") from None


def _version(connection, path: str, tables: set[str]) -> int:
    if not tables:
        return 0
    if "schema_version" not in tables:
        raise StoreError(f"{path!r} is not a reactorapp database; move it away or choose"
                         " another data directory.")
    row = connection.execute("SELECT version FROM schema_version").fetchone()
    if row is None or not isinstance(row[0], int):
        raise StoreError(f"{path!r} has no schema version; move it away or restore it from a backup.")
    return row[0]


def _rollback(connection) -> None:
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _quote(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _reason(error: BaseException) -> str:
    return (str(error) or type(error).__name__).rstrip(".")
