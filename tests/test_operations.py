"""Running the hub as a service: what an operator sees from twistd, the
files shipped with the package, and the checks made at start-up."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from reactorapp import __version__
from tests.brokerproc import run_twistd

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
