"""docs/operations.md: the systemd unit it ships is valid and starts the hub
with flags that exist; the guide names every operations flag and endpoint."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reactorapp.tap import Options

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "operations.md"


def unit_text() -> str:
    """The ```ini block of the guide that is a systemd unit."""
    blocks = re.findall(r"^```ini\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)
    (unit,) = [block for block in blocks if block.startswith("[Unit]")]
    return unit


def parsed_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(unit_text())
    return parser


def test_the_unit_has_what_systemd_needs():
    unit = parsed_unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Unit"]["Description"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["User"] and service["StateDirectory"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(service["LimitNOFILE"]) >= 10_000 + 100  # the default --max-connections


def test_the_unit_starts_twistd_in_the_foreground_with_flags_that_exist():
    command = shlex.split(parsed_unit()["Service"]["ExecStart"])
    assert command[0].endswith("/bin/twistd")
    at = command.index("reactorapp")
    assert "--nodaemon" in command[1:at]  # systemd watches the process it started
    options = Options()
    options.parseOptions(command[at + 1:])  # a usage.UsageError fails the test
    assert options["data"] == parsed_unit()["Service"]["WorkingDirectory"]


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the unit is still parsed above)")
    # ExecStart must name a program that exists here: this environment's twistd.
    twistd = Path(sys.executable).parent / "twistd"
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={twistd}", unit_text(), flags=re.M)
    unit = tmp_path / "reactorapp.service"
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if "reactorapp.service" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


@pytest.mark.parametrize("named", [
    "--session-expiry", "--log-format json", "--uid", "--max-connections", "LimitNOFILE",
    "POST /api/v1/backup", "python -m reactorapp.backup save",
    "python -m reactorapp.backup restore", "DELETE /api/v1/sessions/{client_id}",
    "/readyz", "reactorapp_store_writable", "reactorapp_store_write_failures_total",
    "SIGHUP", "SIGUSR1", "schema version", "CHANGELOG.md", "Python 3.11", "SQLite 3.32",
])
def test_the_guide_names(named):
    assert named in GUIDE.read_text()


def test_the_guide_gives_the_schema_version_of_this_code():
    from reactorapp.store.schema import VERSION

    assert re.search(rf"writes\s+schema\s+version\s+{VERSION}\b", GUIDE.read_text())
