"""Start-up: one sentence on stderr for each mistake an operator can make
(twistd in a child process), and a service tree that binds all or nothing."""

from __future__ import annotations

import errno
import signal
import socket

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from reactorapp.config import Config
from tests.brokerproc import LISTENING, BrokerProcess, run_twistd, running_broker

# twistd shuts down cleanly on SIGTERM, then ends itself with that signal.
STOPPED = -signal.SIGTERM


def assert_one_sentence(result, *words: str) -> str:
    """Non-zero exit, no traceback anywhere, one ``reactorapp: ...`` line on stderr."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    sentence = lines[0]
    assert sentence.startswith("reactorapp: ") and sentence.endswith("."), sentence
    for word in words:
        assert word in sentence, sentence
    return sentence


def reactorapp(tmp_path, *args: str):
    return run_twistd(tmp_path, "-n", "reactorapp", *args)


def test_bad_endpoint(tmp_path):
    result = reactorapp(tmp_path, "--mqtt", "bogus:1883", "--data", str(tmp_path / "d"))
    assert_one_sentence(result, "invalid MQTT endpoint", "'bogus:1883'")


def test_endpoint_missing_port(tmp_path):
    result = reactorapp(tmp_path, "--mqtt", "tcp", "--data", str(tmp_path / "d"))
    assert_one_sentence(result, "invalid MQTT endpoint 'tcp'", "port")


def test_missing_config_file(tmp_path):
    result = reactorapp(tmp_path, "--config", str(tmp_path / "nope.toml"))
    assert_one_sentence(result, "cannot read config file", "nope.toml", "No such file")


def test_unreadable_config_file(tmp_path):
    """A directory cannot be read as a file, even by root."""
    (tmp_path / "conf.d").mkdir()
    result = reactorapp(tmp_path, "--config", str(tmp_path / "conf.d"))
    assert_one_sentence(result, "cannot read config file", "conf.d")


def test_invalid_toml(tmp_path):
    config = tmp_path / "reactorapp.toml"
    config.write_text("mqtt = [\n")
    result = reactorapp(tmp_path, "--config", str(config))
    assert_one_sentence(result, "is not valid TOML", "reactorapp.toml")


def test_unknown_key_in_config(tmp_path):
    config = tmp_path / "reactorapp.toml"
    config.write_text('max_inflight = 5\n')
    result = reactorapp(tmp_path, "--config", str(config))
    assert_one_sentence(result, "unknown setting 'max_inflight'", "'max-inflight'")


def test_data_directory_is_a_file(tmp_path):
    (tmp_path / "data").write_text("")
    result = reactorapp(tmp_path, "--mqtt", "tcp:0:interface=127.0.0.1",
                        "--data", str(tmp_path / "data"))
    assert_one_sentence(result, "data directory", "is not a directory")


def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = reactorapp(tmp_path, "--mqtt", f"tcp:{port}:interface=127.0.0.1",
                            "--data", str(tmp_path / "data"))
    assert_one_sentence(result, "cannot listen on MQTT endpoint", str(port), "in use")
    assert not (tmp_path / "twistd.pid").exists()


def test_bad_flag_value_is_a_usage_error(tmp_path):
    """twistd's own convention for flags: usage text and the sentence, exit 1."""
    result = reactorapp(tmp_path, "--max-inflight", "lots")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "--max-inflight must be a whole number from 1 to 65535, not 'lots'." in result.stdout


def test_starts_logs_its_port_and_stops_cleanly(tmp_path):
    with running_broker(tmp_path) as broker:
        assert broker.host == "127.0.0.1"
        with socket.create_connection((broker.host, broker.port), timeout=5):
            pass
        assert (tmp_path / "data").is_dir()
        assert (tmp_path / "twistd.pid").read_text() == str(broker.proc.pid)
        assert broker.stop() == STOPPED
    assert "Traceback" not in broker.log
    assert "Server Shut Down." in broker.log
    assert not (tmp_path / "twistd.pid").exists()


def test_the_garbage_collector_is_tuned_once_started(tmp_path):
    """Start-up objects are frozen out of collections and young collections
    are rarer: with the defaults, collections cost a fifth of a publish."""
    with running_broker(tmp_path) as broker:
        broker.stop()
    line = next(line for line in broker.log.splitlines() if "Garbage collection:" in line)
    frozen = int(line.split("Garbage collection: ")[1].split()[0])
    assert frozen > 10_000, line  # Twisted and the hub's modules, at least
    assert "young collections every 20000 allocations" in line


def test_listeners_from_config_file_and_data_from_flag(tmp_path):
    config = tmp_path / "reactorapp.toml"
    config.write_text(
        'mqtt = ["tcp:0:interface=127.0.0.1"]\n'
        f'data = "{tmp_path / "from-file"}"\n'
    )
    broker = BrokerProcess(
        ["-n", "reactorapp", "--config", str(config), "--data", str(tmp_path / "from-flag")],
        cwd=tmp_path,
    )
    try:
        broker.wait_for(LISTENING)
    finally:
        assert broker.stop() == STOPPED
    assert (tmp_path / "from-flag").is_dir()
    assert not (tmp_path / "from-file").exists()


def test_default_data_directory_is_in_the_working_directory(tmp_path):
    broker = BrokerProcess(["-n", "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1"],
                           cwd=tmp_path)
    try:
        broker.wait_for(LISTENING)
    finally:
        assert broker.stop() == STOPPED
    assert (tmp_path / "reactorapp-data").is_dir()


class Reactor(MemoryReactorClock):
    """Fake TCP listening: ``taken`` ports are in use; stopped ports are recorded."""

    def __init__(self, taken=()):
        super().__init__()
        self.taken = set(taken)
        self.stopped = []

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.taken:
            raise CannotListenError(
                interface, port, OSError(errno.EADDRINUSE, "Address already in use"))
        fake = super().listenTCP(port, factory, backlog, interface)
        fake.stopListening = lambda: self.stopped.append(port)
        return fake


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def build(tmp_path, reactor, *endpoints):
    from reactorapp.service import makeHubService

    return makeHubService(Config(mqtt=endpoints, http=(), data=str(tmp_path / "data")), reactor)


def test_listening_is_logged_once_the_reactor_runs(tmp_path, logged):
    reactor = Reactor()
    service = build(tmp_path, reactor, "tcp:18830:interface=127.0.0.1", "tcp:18831")
    service.privilegedStartService()
    service.startService()
    assert [port for port, *_ in reactor.tcpServers] == [18830, 18831]

    def said():
        return [formatEvent(e) for e in logged if "listening" in e.get("log_format", "")]

    assert said() == []
    reactor.run()
    assert said() == ["MQTT listening on 0.0.0.0:18830", "MQTT listening on 0.0.0.0:18831"]


def test_a_failed_bind_releases_the_listeners_already_bound(tmp_path):
    from reactorapp.service import StartupError

    reactor = Reactor(taken={18831})
    service = build(tmp_path, reactor, "tcp:18830", "tcp:18831", "tcp:18832")
    with pytest.raises(StartupError, match="cannot listen on MQTT endpoint 'tcp:18831': "
                                           "Address already in use."):
        service.privilegedStartService()
    assert reactor.stopped == [18830]
    assert [port for port, *_ in reactor.tcpServers] == [18830]


def test_data_directory_is_created(tmp_path):
    build(tmp_path, Reactor(), "tcp:18830")
    assert (tmp_path / "data").is_dir()
