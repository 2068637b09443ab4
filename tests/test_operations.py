"""Running the hub as a service: what an operator sees from twistd, the
files shipped with the package, and the checks made at start-up."""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import resource
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from reactorapp import __version__
from reactorapp.store.schema import FILENAME
from tests.brokerproc import BrokerProcess, run_twistd, running_broker
from tests.paho_client import PahoClient

REPO = Path(__file__).resolve().parent.parent


def test_version_is_reactorapps(tmp_path):
    result = run_twistd(tmp_path, "reactorapp", "--version")
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"reactorapp {__version__} (Twisted "), result.stdout


def test_license_is_mit_and_named_in_the_metadata():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    metadata = configparser.ConfigParser()
    metadata.read(REPO / "setup.cfg")
    assert metadata["metadata"]["license"] == "MIT"
    assert metadata["metadata"]["license_files"].split() == ["LICENSE"]


def test_changelog_has_a_section_for_unreleased_changes():
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(r"^## Unreleased$", changelog, re.M)
    assert re.search(rf"^## {re.escape(__version__)}$", changelog, re.M)


# -- a service user (twistd --uid/--gid) ---------------------------------------


def _unprivileged_user():
    """nobody's uid and gid, when this test runs as root and there is one."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def world_readable_dir():
    """A directory another user can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="reactorapp-uid-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_hub_started_as_root_with_uid_writes_its_own_data(world_readable_dir):
    """twistd binds as root, builds the services (DIR and DIR/spill) as root,
    then becomes --uid: the data directory is that user's, so the store opens
    and a retained QoS 1 message is acknowledged and kept."""
    user = _unprivileged_user()
    if user is None:
        pytest.skip("needs root and a 'nobody' user")
    uid, gid = user
    data = world_readable_dir / "data"
    with running_broker(world_readable_dir, "--data", str(data),
                        twistd_args=("--uid", str(uid), "--gid", str(gid))) as broker:
        publisher = PahoClient(broker.host, broker.port).connect()
        publisher.publish_and_wait("owned/by", b"nobody", qos=1, retain=True)
        publisher.disconnect()
        assert broker.stop() == -signal.SIGTERM
    assert "Traceback" not in broker.log
    for path in (data, data / "spill", data / FILENAME):
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
    with sqlite3.connect(data / FILENAME) as connection:
        assert connection.execute("SELECT payload FROM retained").fetchall() == [(b"nobody",)]


def test_without_uid_the_data_directory_keeps_its_owner(tmp_path):
    from reactorapp.tap import _serviceOwner

    assert _serviceOwner({"uid": None, "gid": None}) is None
    assert _serviceOwner(None) is None


# -- logs --------------------------------------------------------------------------


def test_log_format_json_writes_one_json_event_a_line(tmp_path):
    broker = BrokerProcess(["-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
                            "--data", str(tmp_path / "data"), "--log-format", "json"],
                           cwd=tmp_path)
    try:
        broker.wait_for(r'"log_format": "\{protocol\} listening on \{where\}"')
    finally:
        assert broker.stop() == -signal.SIGTERM
    lines = broker.log.splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    texts = [formatEvent(event) for event in events]
    assert any(re.match(r"MQTT listening on 127\.0\.0\.1:\d+$", text) for text in texts), texts
    assert "Traceback" not in broker.log


def test_log_format_json_goes_where_twistd_would_write_text(tmp_path, monkeypatch):
    """--logfile FILE: a LogFile (rotated at 1 MB and on SIGUSR1, as twistd's)."""
    from reactorapp.config import ConfigError
    from reactorapp.logs import json_observer

    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep this process's
    log_file = tmp_path / "hub.log"
    observer = json_observer({"logfile": str(log_file), "nodaemon": True})
    observer({"log_format": "{what} happened", "what": "something", "log_time": 0.0,
              "log_namespace": "test", "log_level": None})
    observer._outFile.flush()
    (event,) = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert formatEvent(event) == "something happened"
    with pytest.raises(ConfigError, match="--syslog"):
        json_observer({"syslog": True})


def test_an_unknown_log_format_stops_start_up(tmp_path):
    result = run_twistd(tmp_path, "-n", "reactorapp", "--log-format", "xml",
                        "--data", str(tmp_path / "d"))
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "reactorapp: --log-format must be one of text, json, not 'xml'.")


# -- file descriptors ----------------------------------------------------------------


def test_a_low_open_file_limit_is_warned_about():
    from twisted.internet.testing import MemoryReactorClock

    from reactorapp.tap import warn_if_few_files

    warned = []
    observer = warned.append
    globalLogPublisher.addObserver(observer)
    try:
        for connections, limit in ((10_000, 1024), (900, 1024), (0, 1024), (10_000, -1)):
            reactor = MemoryReactorClock()
            warn_if_few_files(connections, reactor, (limit, limit))
            reactor.run()
    finally:
        globalLogPublisher.removeObserver(observer)
    texts = [formatEvent(e) for e in warned if "open-file limit" in e.get("log_format", "")]
    assert texts == ["WARNING: the open-file limit (ulimit -n) is 1024, but --max-connections"
                     " 10000 needs about 10100: raise it (LimitNOFILE= in a systemd unit,"
                     " ulimit -n in a shell) or lower --max-connections."]


def test_twistd_warns_when_max_connections_exceeds_the_open_file_limit(tmp_path):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit here")
    with running_broker(tmp_path, "--max-connections", str(soft)) as broker:
        broker.wait_for(rf"open-file limit \(ulimit -n\) is {soft}, but --max-connections {soft}")
