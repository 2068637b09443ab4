"""End to end: protocol plugins in ``twistd -n reactorapp --listen ...``,
talking over sockets with each other and with a paho MQTT client.

The example package in examples/ is put on the child's path, as an
installed package would be; with REACTORAPP_EXAMPLE_INSTALLED=1 (CI, after
``pip install ./examples``) the installed copy is used instead and the test
checks that it is the one found.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokerproc import REPO, run_twistd, running_broker, twistd_env
from tests.paho_client import TIMEOUT, PahoClient

EXAMPLES = REPO / "examples"
INSTALLED = os.environ.get("REACTORAPP_EXAMPLE_INSTALLED") == "1"
LOCAL = "tcp:0:interface=127.0.0.1"


@pytest.fixture(scope="module")
def example_on_path():
    """The child processes find the example plugin, installed or not."""
    saved = os.environ.get("PYTHONPATH")
    if not INSTALLED:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), saved]))
    yield
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def broker(tmp_path_factory, example_on_path):
    path = tmp_path_factory.mktemp("plugins")
    with running_broker(path, "--listen", f"lpframe:{LOCAL} --max-frame=4096",
                        "--listen", f"line:{LOCAL}") as broker:
        yield broker
    assert "Traceback" not in broker.log, broker.log


def port_of(broker, name: str) -> int:
    return int(broker.wait_for(rf"{name} listening on 127\.0\.0\.1:(\d+)")[1])


class LineUser:
    """A netcat user: one command, one reply, with a bound on every wait."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def say(self, line: str) -> str:
        self.sock.sendall(line.encode("utf-8") + b"\n")
        return self.next()

    def next(self) -> str:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, f"connection closed; had {self.buffer!r}"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8")

    def close(self) -> None:
        self.sock.close()


class Device:
    """An lpframe device: 4-byte length-prefixed frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def send(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def next(self) -> bytes:
        while not self._complete():
            data = self.sock.recv(65536)
            assert data, f"connection closed; had {self.buffer!r}"
            self.buffer += data
        (length,) = struct.unpack_from(">I", self.buffer)
        body, self.buffer = self.buffer[4:4 + length], self.buffer[4 + length:]
        return body

    def _complete(self) -> bool:
        buffer = self.buffer
        return len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]

    def close(self) -> None:
        self.sock.close()


def with_topic(kind: bytes, topic: str, payload: bytes) -> bytes:
    encoded = topic.encode("utf-8")
    return kind + struct.pack(">H", len(encoded)) + encoded + payload


@pytest.fixture
def paho(broker):
    client = PahoClient(broker.host, broker.port, "paho-ext").connect()
    yield client
    client.close()


def test_line_protocol_with_an_mqtt_client(broker, paho):
    """SUB/PUB/UNSUB/PING over a socket, while paho publishes and subscribes."""
    user = LineUser(port_of(broker, "line"))
    try:
        assert user.say("PING") == "PONG"
        assert paho.subscribe(("dev/#", 1)) == [1]
        assert user.say("PUB dev/temp 21.5 C") == "OK PUB dev/temp"
        received = paho.next()
        assert (received.topic, received.payload, received.qos) == ("dev/temp", b"21.5 C", 0)

        assert user.say("SUB app/#") == "OK SUB app/#"
        assert user.say("SUB marker") == "OK SUB marker"
        paho.publish_and_wait("app/cmd", b"reboot", qos=1)
        assert user.next() == "MSG app/cmd reboot"

        assert user.say("UNSUB app/#") == "OK UNSUB app/#"
        paho.publish_and_wait("app/cmd", b"again", qos=1)
        paho.publish_and_wait("marker", b"m", qos=1)
        assert user.next() == "MSG marker m"  # nothing for app/cmd came before it
        assert user.say("PUB a/+ x").startswith("ERR ")
    finally:
        user.close()


def test_example_plugin_with_mqtt_and_line(broker, paho):
    """The lpframe plugin from examples/, enabled with --listen, end to end."""
    device = Device(port_of(broker, "lpframe"))
    user = LineUser(port_of(broker, "line"))
    try:
        device.send(b"Scommands/+")
        assert device.next() == b"K"
        paho.publish_and_wait("commands/valve", b"\x01\x00", qos=1)
        assert device.next() == with_topic(b"M", "commands/valve", b"\x01\x00")

        assert user.say("SUB meters/#") == "OK SUB meters/#"
        assert paho.subscribe(("meters/#", 0)) == [0]
        device.send(with_topic(b"P", "meters/7", b"42"))
        assert device.next() == b"K"
        assert user.next() == "MSG meters/7 42"
        assert paho.next().payload == b"42"

        device.send(b"X")
        assert device.next().startswith(b"E")
    finally:
        device.close()
        user.close()


def test_help_lists_installed_protocols(tmp_path, example_on_path):
    result = run_twistd(tmp_path, "reactorapp", "--help")
    assert result.returncode == 0, result.stderr
    assert "Protocols for --listen NAME:ENDPOINT:" in result.stdout
    for line in ("  line     Text lines for telnet and netcat",
                 "  lpframe  Length-prefixed binary frames (example plugin)."):
        assert line in result.stdout, result.stdout


def test_unknown_protocol_stops_startup(tmp_path, example_on_path):
    result = run_twistd(tmp_path, "-n", "reactorapp", "--data", str(tmp_path / "d"),
                        "--mqtt", LOCAL, "--listen", "lpfram:tcp:0")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "reactorapp: no protocol named 'lpfram' for the listener 'lpfram:tcp:0'"
        " (did you mean 'lpframe'?); installed: line, lpframe.")


@pytest.mark.skipif(not INSTALLED, reason="only after pip install ./examples")
def test_the_installed_example_is_the_one_used(example_on_path):
    where = subprocess.run(
        [sys.executable, "-c", "import lpframe; print(lpframe.__file__)"],
        env=twistd_env(), capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    assert not Path(where).is_relative_to(EXAMPLES), where
