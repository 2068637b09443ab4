"""Running the hub as a service: what an operator sees from twistd, the
files shipped with the package, and the checks made at start-up."""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path

import pytest

from reactorapp import __version__
from reactorapp.store.schema import FILENAME
from tests.brokerproc import run_twistd, running_broker
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
