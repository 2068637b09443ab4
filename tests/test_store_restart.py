"""The SQLite store through twistd: state survives a restart, and a data
directory that cannot be trusted stops start-up with one sentence."""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest

from reactorapp.store.schema import FILENAME, VERSION, open_database
from tests.brokerproc import BrokerProcess, LISTENING, run_twistd, running_broker
from tests.paho_client import PahoClient

STOPPED = -signal.SIGTERM


def client(broker, client_id="", clean=True) -> PahoClient:
    return PahoClient(broker.host, broker.port, client_id, clean).connect()


def test_retained_messages_sessions_and_subscriptions_survive_a_restart(tmp_path):
    """[MQTT-3.3.1-5] [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] after SIGTERM
    and a new start on the same data directory."""
    with running_broker(tmp_path) as broker:
        sub = client(broker, "keeper", clean=False)
        assert sub.subscribe(("r/#", 1)) == [1]
        sub.disconnect()
        pub = client(broker)
        pub.publish_and_wait("r/retained", b"kept", qos=1, retain=True)
        pub.publish_and_wait("r/queued", b"waiting", qos=1)
        pub.publish_and_wait("gone/0", b"qos0 retained", qos=0, retain=True)
        pub.publish_and_wait("gone/0", b"", qos=1, retain=True)  # cleared [MQTT-3.3.1-10]
        pub.disconnect()
        assert broker.stop() == STOPPED
    assert "Traceback" not in broker.log

    with running_broker(tmp_path) as broker:
        assert "1 persistent sessions, 1 retained messages" in broker.log
        sub = PahoClient(broker.host, broker.port, "keeper", False).connect()
        assert sub.session_present
        assert [(m.topic, m.payload) for m in sub.take(2)] == [
            ("r/retained", b"kept"), ("r/queued", b"waiting")]
        pub = client(broker)
        pub.publish_and_wait("r/new", b"routed", qos=1)  # the subscription is back
        assert sub.next().payload == b"routed"
        late = client(broker)
        late.subscribe(("#", 0))
        first = late.next()
        assert (first.topic, first.payload, first.retain) == ("r/retained", b"kept", True)
        for c in (sub, pub, late):
            c.disconnect()
        assert broker.stop() == STOPPED
    assert "Traceback" not in broker.log


def test_store_memory_keeps_nothing(tmp_path):
    with running_broker(tmp_path, "--store", "memory") as broker:
        client(broker, "k", clean=False).disconnect()
    with running_broker(tmp_path, "--store", "memory") as broker:
        assert PahoClient(broker.host, broker.port, "k", False).connect().session_present is False
    assert not (tmp_path / "data" / FILENAME).exists()


def refused(tmp_path, *args: str) -> str:
    """Run the broker to its refusal; return the one sentence it printed."""
    result = run_twistd(tmp_path, "-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                        "--data", str(tmp_path / "data"), *args)
    assert result.returncode != 0, result
    assert "Traceback" not in result.stdout + result.stderr, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reactorapp: ") and lines[0].endswith("."), lines
    return lines[0]


def test_a_corrupt_database_is_refused_and_left_as_it_is(tmp_path):
    (tmp_path / "data").mkdir()
    database = tmp_path / "data" / FILENAME
    database.write_bytes(os.urandom(8192))
    before = database.read_bytes()
    assert "is not a usable reactorapp database" in refused(tmp_path)
    assert database.read_bytes() == before
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(FILENAME)] == [
        FILENAME]


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    connection = open_database(str(tmp_path / "data"))
    connection.execute("UPDATE schema_version SET version = ?", (VERSION + 1,))
    connection.close()
    database = tmp_path / "data" / FILENAME
    before = database.read_bytes()
    sentence = refused(tmp_path)
    assert "newer reactorapp" in sentence and "upgrade" in sentence
    assert database.read_bytes() == before


def test_a_data_directory_in_use_is_refused(tmp_path):
    with running_broker(tmp_path):
        second = tmp_path / "second"
        second.mkdir()  # its own working directory, for its own twistd.pid
        result = run_twistd(second, "-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                            "--data", str(tmp_path / "data"))
        assert result.returncode != 0
        assert result.stderr.strip().endswith("is in use by another process."), result.stderr


def test_an_unknown_store_is_refused(tmp_path):
    assert "unknown store 'redis'; choose one of sqlite, memory." in refused(
        tmp_path, "--store", "redis")


def test_a_database_that_cannot_be_written_is_refused(tmp_path):
    """Its write-ahead log cannot be created (a directory is in the way):
    that stops root too, which CI runs as."""
    with running_broker(tmp_path):
        pass
    (tmp_path / "data" / (FILENAME + "-wal")).mkdir()
    assert FILENAME in refused(tmp_path)


def test_a_data_directory_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "plain").write_text("")
    result = run_twistd(tmp_path, "-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                        "--data", str(tmp_path / "plain" / "data"))
    assert result.returncode != 0, result
    assert "Traceback" not in result.stdout + result.stderr, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("reactorapp: ") and line.endswith("."), line


def test_sigint_closes_the_store_too(tmp_path):
    """SIGINT is a graceful stop as well: the store is flushed and closed."""
    broker = BrokerProcess(["-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                            "--data", str(tmp_path / "data")], cwd=tmp_path)
    match = broker.wait_for(LISTENING)
    pub = PahoClient(match["host"], int(match["port"])).connect()
    pub.publish_and_wait("r", b"v", qos=1, retain=True)
    pub.disconnect()
    broker.proc.send_signal(signal.SIGINT)
    broker.proc.wait(20)
    broker.stop()  # collects the log
    assert "Traceback" not in broker.log
    # Closed cleanly: the write-ahead log was checkpointed into the file.
    assert not (tmp_path / "data" / (FILENAME + "-wal")).exists()
    connection = sqlite3.connect(tmp_path / "data" / FILENAME)
    assert connection.execute("SELECT topic, payload FROM retained").fetchall() == [("r", b"v")]
    connection.close()
