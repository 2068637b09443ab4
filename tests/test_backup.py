"""Backing up a running hub and restoring the copy: sessions, retained
messages and webhook outboxes come back. Through twistd and the command a
user runs."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import subprocess
import sys

import pytest

from reactorapp.store.backup import check_backup, restore
from reactorapp.store.interfaces import StoreError
from reactorapp.store.schema import FILENAME, open_database
from tests.brokerproc import REPO, running_broker, twistd_env
from tests.paho_client import TIMEOUT, PahoClient


def request(broker, method: str, path: str, body: bytes | None = None):
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body,
                           headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def closed_port() -> int:
    """A loopback port nobody listens on (webhook deliveries to it fail)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backup_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reactorapp.backup", *args], cwd=REPO,
                          env=twistd_env(), capture_output=True, text=True, timeout=60)


def test_a_backup_of_a_running_hub_restores_sessions_retained_and_outboxes(tmp_path):
    rule = {"name": "down", "filters": ["alerts/#"], "url": f"http://127.0.0.1:{closed_port()}/",
            "retry": {"max_attempts": 100, "base_delay": 60, "max_delay": 60}}
    saved = tmp_path / "saved.sqlite3"
    with running_broker(tmp_path, "--data", str(tmp_path / "old")) as broker:
        keeper = PahoClient(broker.host, broker.port, "keeper", clean_session=False).connect()
        assert keeper.subscribe(("r/#", 1)) == [1]
        keeper.disconnect()
        status, body = request(broker, "POST", "/api/v1/webhooks", json.dumps(rule).encode())
        assert status == 201, body
        publisher = PahoClient(broker.host, broker.port).connect()
        publisher.publish_and_wait("r/retained", b"kept", qos=1, retain=True)
        publisher.publish_and_wait("r/queued", b"waiting", qos=1)
        publisher.publish_and_wait("alerts/fire", b"undelivered", qos=1)
        publisher.disconnect()

        done = backup_command("save", f"http://{broker.host}:{broker.http_port}", str(saved))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("saved ")
        # The hub runs on; what happens after the backup is not in it.
        late = PahoClient(broker.host, broker.port).connect()
        late.publish_and_wait("r/after", b"not in the backup", qos=1, retain=True)
        late.disconnect()

    new = tmp_path / "new"
    done = backup_command("restore", str(saved), str(new))
    assert done.returncode == 0, done.stderr
    with running_broker(tmp_path, "--data", str(new)) as broker:
        assert "1 persistent sessions, 1 retained messages" in broker.log
        status, body = request(broker, "GET", "/api/v1/webhooks/down")
        assert status == 200, body
        assert json.loads(body)["pending"] == 1
        keeper = PahoClient(broker.host, broker.port, "keeper", clean_session=False).connect()
        assert keeper.session_present
        assert [(m.topic, m.payload) for m in keeper.take(2)] == [
            ("r/retained", b"kept"), ("r/queued", b"waiting")]
        keeper.disconnect()
    assert "Traceback" not in broker.log


def test_a_hub_without_a_database_has_nothing_to_back_up(tmp_path):
    with running_broker(tmp_path, "--store", "memory") as broker:
        status, body = request(broker, "POST", "/api/v1/backup")
    assert status == 409
    assert json.loads(body)["error"] == "no database"


def test_restore_refuses_a_file_that_is_not_a_backup(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a database at all, just some text " * 100)
    with pytest.raises(StoreError, match="not a reactorapp backup|not a database"):
        check_backup(str(bogus))
    done = backup_command("restore", str(bogus), str(tmp_path / "data"))
    assert done.returncode == 1
    assert done.stderr.startswith("reactorapp.backup: ") and "Traceback" not in done.stderr


def test_restore_refuses_a_data_directory_in_use(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    open_database(str(source)).close()
    busy = tmp_path / "busy"
    busy.mkdir()
    holder = open_database(str(busy))  # as a running hub would
    try:
        with pytest.raises(StoreError, match="in use"):
            restore(str(source / FILENAME), str(busy))
    finally:
        holder.close()


def test_restore_keeps_the_database_it_replaces(tmp_path):
    source, data = tmp_path / "source", tmp_path / "data"
    for directory, client_id in ((source, "from-backup"), (data, "replaced")):
        directory.mkdir()
        connection = open_database(str(directory))
        connection.execute("INSERT INTO sessions (client_id) VALUES (?)", (client_id,))
        connection.close()
    kept = restore(str(source / FILENAME), str(data), clock=lambda: 0.0)
    assert kept.endswith(".replaced-19700101T000000Z")
    for path, client_id in ((data / FILENAME, "from-backup"), (kept, "replaced")):
        with sqlite3.connect(path) as connection:
            assert connection.execute("SELECT client_id FROM sessions").fetchall() == [
                (client_id,)]
