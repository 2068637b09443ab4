"""A store that cannot write (a full disk): it tries again with a back-off,
says so (`writable`, /readyz, /metrics), answers nobody meanwhile, and goes
on by itself once it can write."""

from __future__ import annotations

import errno
import http.client
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

import reactorapp.store.sqlite as sqlite_store
from reactorapp.hub.message import Message
from reactorapp.store.interfaces import StoreClosed
from reactorapp.store.metrics import StoreCollector
from reactorapp.store.schema import FILENAME
from reactorapp.store.sqlite import SQLiteStore
from tests.brokerproc import running_broker
from tests.paho_client import PahoClient

#: Seconds any wait here may take before the test fails.
BOUND = 10.0


def reactor():
    from twisted.internet import reactor

    return reactor


class FullDisk:
    """Stands in for `_commit`: fails like SQLite on a full disk while
    `full`, and tells the test (in the reactor thread) about each attempt."""

    def __init__(self, monkeypatch) -> None:
        self.full = True
        self.attempts = 0
        self._commit = sqlite_store._commit
        self._waiting: list[tuple[int, Deferred]] = []
        monkeypatch.setattr(sqlite_store, "_commit", self)

    def __call__(self, connection, messages, batch):
        full = self.full
        reactor().callFromThread(self._attempted)
        if full:
            raise sqlite3.OperationalError("database or disk is full")
        return self._commit(connection, messages, batch)

    def _attempted(self) -> None:
        self.attempts += 1
        for count, d in list(self._waiting):
            if self.attempts >= count:
                self._waiting.remove((count, d))
                d.callback(None)

    def attempted(self, count: int) -> Deferred:
        """Fires once `count` commits were tried."""
        d = Deferred()
        self._waiting.append((count, d))
        self._attempted_check()
        return d.addTimeout(BOUND, reactor())

    def _attempted_check(self) -> None:
        self.attempts -= 1
        self._attempted()


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(str(tmp_path), reactor())
    opened.retry_initial = opened._retry_delay = 0.01
    opened.retry_max = 0.05
    opened.load()
    yield opened
    opened.close()


def retained(topic: str, payload: bytes) -> Message:
    return Message(topic, payload, 1, True)


def rows(tmp_path) -> list[tuple]:
    with sqlite3.connect(tmp_path / FILENAME) as connection:
        return connection.execute("SELECT topic, payload FROM retained ORDER BY topic").fetchall()


def metrics(store) -> dict[str, float]:
    return {family.name: family.samples[0].value
            for family in StoreCollector(store).collect()}


@pytest_twisted.ensureDeferred
async def test_a_full_disk_holds_the_commit_until_it_can_write_again(store, tmp_path,
                                                                      monkeypatch):
    disk = FullDisk(monkeypatch)
    store.set_retained(retained("a", b"first"))
    durable = store.sync()
    settled = []
    durable.addBoth(settled.append)
    await disk.attempted(3)  # the first try and two retries
    assert not store.writable and settled == []
    assert metrics(store) == {"reactorapp_store_writable": 0,
                              "reactorapp_store_write_failures": store.write_failures}
    assert store.write_failures >= 2

    # Meanwhile more is written; it waits behind the failed batch.
    store.set_retained(retained("b", b"second"))
    later = store.sync()
    disk.full = False
    await durable.addTimeout(BOUND, reactor())
    await later.addTimeout(BOUND, reactor())
    assert settled == [None]
    assert store.writable
    assert metrics(store)["reactorapp_store_writable"] == 1
    await store.close()
    assert rows(tmp_path) == [("a", b"first"), ("b", b"second")]


@pytest_twisted.ensureDeferred
async def test_closing_a_store_that_cannot_write_does_not_wait_for_ever(store, monkeypatch):
    disk = FullDisk(monkeypatch)
    store.set_retained(retained("a", b"never acknowledged"))
    durable = store.sync()
    failed = []
    durable.addErrback(failed.append)
    await disk.attempted(2)
    await store.close().addTimeout(BOUND, reactor())
    assert len(failed) == 1
    assert failed[0].check(StoreClosed, sqlite3.OperationalError)


# -- a real full file system, through twistd -------------------------------------


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MB tmpfs mounted in tmp_path (needs root, and leave to mount)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return filler
                chunk = chunk[:len(chunk) // 2]


def http_get(broker, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=BOUND)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def store_writable(broker) -> str:
    _, body = http_get(broker, "/metrics")
    return re.search(rb"^reactorapp_store_writable (\S+)$", body, re.M)[1].decode()


def test_a_full_disk_through_twistd(small_filesystem, tmp_path):
    """The data directory on a full 4 MB file system: a retained QoS 1
    message is not acknowledged, /readyz answers 503 and the metric says
    why, QoS 0 between two clients keeps flowing; once space is freed the
    acknowledgement comes without a restart, and the message survives kill -9."""
    data = small_filesystem / "data"
    with running_broker(tmp_path, "--data", str(data)) as broker:
        assert http_get(broker, "/readyz")[0] == 200
        publisher = PahoClient(broker.host, broker.port, "publisher").connect()
        filler = fill(small_filesystem)
        waiting = publisher.publish("kept/big", b"x" * 200_000, qos=1, retain=True)
        broker.wait_for("Could not write to")
        status, body = http_get(broker, "/readyz")
        assert status == 503 and b"store" in body, body
        assert store_writable(broker) == "0.0"
        assert not waiting.is_published()

        listener = PahoClient(broker.host, broker.port, "listener").connect()
        listener.subscribe(("live/#", 0))
        talker = PahoClient(broker.host, broker.port, "talker").connect()
        talker.publish_and_wait("live/temperature", b"21.5", qos=0)
        assert listener.next().payload == b"21.5"
        assert not waiting.is_published()

        filler.unlink()
        waiting.wait_for_publish(BOUND * 3)  # the back-off is at most 10 s
        assert waiting.is_published()
        assert http_get(broker, "/readyz")[0] == 200
        assert store_writable(broker) == "1.0"
        broker.wait_for("Writing to .* again")
        broker.kill()

    with running_broker(tmp_path, "--data", str(data)) as broker:
        late = PahoClient(broker.host, broker.port, "late").connect()
        late.subscribe(("kept/#", 1))
        message = late.next()
        assert (message.topic, len(message.payload), message.retain) == ("kept/big", 200_000, True)
        late.disconnect()
