"""docs/extending.md works as written: every block in it is run here.

Python and TOML blocks start with a ``# path`` comment and become files in
an empty folder; each shell command is run there, with ``trial`` and
``twistd`` from this interpreter. A server command's fixed port becomes a
free one, and the netcat transcript is replayed over a socket. A command
this test does not know fails it, so the page cannot grow untested steps.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokerproc import REPO, run_twistd, running_broker
from tests.paho_client import TIMEOUT, PahoClient
from tests.test_packaging import clean_env, make_venv, pip

DOC = REPO / "docs" / "extending.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(kind: str | None = None) -> list[tuple[str, str]]:
    found = BLOCK.findall(DOC.read_text())
    return [(k, text) for k, text in found if kind is None or k == kind]


def files() -> dict[str, str]:
    """Path -> contents, from the blocks that start with ``# path``."""
    made = {}
    for kind, text in blocks():
        if kind in ("python", "toml"):
            first, _, rest = text.partition("\n")
            assert first.startswith("# "), f"a {kind} block must start with '# path': {text}"
            made[first[2:].strip()] = text
    return made


def commands() -> list[str]:
    return [line for _, text in blocks("sh") for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The tutorial's folder after its setup command and files."""
    path = tmp_path_factory.mktemp("sensorline-plugin")
    setup = commands()[0]
    assert setup.startswith("mkdir "), setup
    subprocess.run(["bash", "-c", setup], cwd=path, check=True, timeout=30)
    for name, text in files().items():
        (path / name).write_text(text)
    return path


def test_every_block_is_known_here():
    kinds = {kind for kind, _ in blocks()}
    assert kinds == {"sh", "python", "toml", "console"}, kinds
    assert commands() == [
        "mkdir -p sensorline twisted/plugins && touch sensorline/__init__.py",
        "trial sensorline",
        "twistd reactorapp --help",
        "twistd -n reactorapp --listen sensors:tcp:7001",
        "pip install .",
    ]


def test_under_fifty_lines_of_user_code():
    lines = [line for text in files().values() for line in text.splitlines()
             if line.strip() and not line.startswith("# ")]
    assert len(lines) < 50, len(lines)


def test_trial_sensorline(folder):
    result = subprocess.run(
        [sys.executable, "-m", "twisted.trial", "sensorline"], cwd=folder,
        env={**clean_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (successes=3)" in result.stdout, result.stdout


def test_help_lists_the_plugin(folder):
    result = run_twistd(folder, "reactorapp", "--help")
    assert result.returncode == 0, result.stderr
    assert "  sensors  Sensor readings, one 'name value' line each." in result.stdout


def test_run_it_and_be_a_sensor(folder):
    command = commands()[3].split()
    assert command[:2] == ["twistd", "-n"] and command[2:4] == ["reactorapp", "--listen"]
    listen = command[4].replace("tcp:7001", "tcp:0:interface=127.0.0.1")
    transcript = next(text for kind, text in blocks("console")).splitlines()
    assert transcript[0] == "$ nc 127.0.0.1 7001"
    with running_broker(folder, "--listen", listen) as broker:
        port = int(broker.wait_for(r"sensors listening on 127\.0\.0\.1:(\d+)")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sensor:
            for typed, answer in zip(transcript[1::2], transcript[2::2]):
                sensor.sendall(typed.encode() + b"\n")
                assert _read_line(sensor) == answer
        mqtt = PahoClient(broker.host, broker.port, "docs-reader").connect()
        try:
            mqtt.subscribe(("sensors/#", 0))
            reading = mqtt.next()
            assert f"{reading.topic} {reading.payload.decode()}" == "sensors/kitchen 21.5"
        finally:
            mqtt.close()


def test_a_secured_hub_answers_forbidden(folder, tmp_path):
    """With an ACL, a reading for a topic the sensor may not write is
    answered with an error, and the connection goes on."""
    acl = tmp_path / "acl"
    acl.write_text("topic write sensors/kitchen   # anonymous sensors: the kitchen only\n")
    with running_broker(folder, "--acl", str(acl),
                        "--listen", "sensors:tcp:0:interface=127.0.0.1") as broker:
        port = int(broker.wait_for(r"sensors listening on 127\.0\.0\.1:(\d+)")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sensor:
            sensor.sendall(b"hall 1\n")
            refused = _read_line(sensor)
            assert refused.startswith("error: ") and "'sensors/hall'" in refused, refused
            sensor.sendall(b"kitchen 2\n")
            assert _read_line(sensor) == "ok"


def _read_line(sock) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data.decode().rstrip("\n")


@pytest.mark.packaging
def test_package_it(folder, tmp_path):
    """``pip install .`` (without dependencies: reactorapp comes from this
    checkout), then twistd finds the plugin from any folder."""
    python = make_venv(tmp_path / "venv")
    assert commands()[4] == "pip install ."
    pip("--python", str(python), "install", "--no-deps", ".", cwd=folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [str(python), "-c", "from twisted.scripts.twistd import run; run()",
         "reactorapp", "--help"],
        cwd=elsewhere, env={**clean_env(), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "  sensors  Sensor readings" in result.stdout, result.stdout
