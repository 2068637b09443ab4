"""Settings from the TOML file and the flags, merged into one Config."""

from __future__ import annotations

import dataclasses

import pytest
from twisted.python import usage

from reactorapp.config import SETTINGS, Config, ConfigError, load_config, merge
from reactorapp.tap import TABLES, Options, makeService


def write(tmp_path, text: str) -> str:
    path = tmp_path / "reactorapp.toml"
    path.write_text(text)
    return str(path)


def configure(argv: list[str]) -> Config:
    """What makeService does before building anything."""
    options = Options()
    options.parseOptions(argv)
    file_values = load_config(options["config"], TABLES) if options["config"] else {}
    return merge(file_values, options.flags)


def test_defaults():
    config = configure([])
    assert config.mqtt == ("tcp:1883:interface=127.0.0.1",)
    assert config.data == "reactorapp-data"
    assert config.sys_interval == 10
    assert (config.max_inflight, config.max_queued_messages) == (20, 1000)
    assert config.max_packet_size == 268_435_460


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().data = "elsewhere"


def test_file_values_are_typed(tmp_path):
    path = write(tmp_path, """
        mqtt = ["tcp:1884", "unix:/tmp/mqtt.sock"]
        data = "/var/lib/reactorapp"
        sys-interval = 2
        max-inflight = 5
        max-queued-messages = 0
        max-packet-size = 1024
    """)
    config = configure(["--config", path])
    assert config == Config(
        mqtt=("tcp:1884", "unix:/tmp/mqtt.sock"), data="/var/lib/reactorapp",
        sys_interval=2.0, max_inflight=5, max_queued_messages=0, max_packet_size=1024,
    )
    assert isinstance(config.sys_interval, float)


def test_flags_override_file(tmp_path):
    path = write(tmp_path, 'max-inflight = 7\nsys-interval = 3\ndata = "from-file"\n')
    config = configure(["--config", path, "--max-inflight", "9", "--data", "from-flag"])
    assert config.max_inflight == 9
    assert config.data == "from-flag"
    assert config.sys_interval == 3  # not given as a flag: the file's value


def test_mqtt_flags_replace_the_files_listeners(tmp_path):
    path = write(tmp_path, 'mqtt = ["tcp:1884", "tcp:1885"]\n')
    assert configure(["--config", path]).mqtt == ("tcp:1884", "tcp:1885")
    assert configure(["--config", path, "--mqtt", "tcp:0"]).mqtt == ("tcp:0",)


def test_repeatable_mqtt_keeps_order():
    config = configure(["--mqtt", "tcp:0", "--mqtt", "unix:/tmp/a.sock", "--mqtt", "tcp:1"])
    assert config.mqtt == ("tcp:0", "unix:/tmp/a.sock", "tcp:1")


def test_every_setting_is_a_flag_and_a_key():
    """Declared once in Config: the flag and the TOML key share one name."""
    help_text = str(Options())
    for s in SETTINGS:
        assert f"--{s.key}" in help_text
    tables = {"webhooks"}  # [[webhooks]] tables of the file, not flags
    assert {s.name for s in SETTINGS} | tables == {f.name for f in dataclasses.fields(Config)}


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "port = 1883\n")
    with pytest.raises(ConfigError, match="unknown setting 'port'"):
        load_config(path)


def test_unknown_key_suggests_the_flag_spelling(tmp_path):
    path = write(tmp_path, "max_inflight = 5\n")
    with pytest.raises(ConfigError, match="did you mean 'max-inflight'"):
        load_config(path)


@pytest.mark.parametrize("line, words", [
    ('max-inflight = "20"', "'max-inflight' .* must be a whole number"),
    ("max-inflight = 2.5", "'max-inflight' .* must be a whole number"),
    ("max-inflight = true", "'max-inflight' .* must be a whole number"),
    ("max-inflight = 0", "from 1 to 65535, not 0"),
    ("max-packet-size = 268435461", "from 2 to 268435460"),
    ("sys-interval = -1", "'sys-interval' .* at least 0"),
    ("sys-interval = nan", "'sys-interval' .* not nan"),
    ('mqtt = "tcp:1883"', "'mqtt' .* must be a list of strings"),
    ("mqtt = [1883]", "'mqtt' .* must be a list of strings"),
    ("data = 3", "'data' .* must be a string"),
])
def test_wrong_types_in_file(tmp_path, line, words):
    path = write(tmp_path, line + "\n")
    with pytest.raises(ConfigError, match=words):
        load_config(path)


def test_sys_interval_accepts_fractions(tmp_path):
    assert load_config(write(tmp_path, "sys-interval = 0.5\n")) == {"sys_interval": 0.5}


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "mqtt = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*No such file"):
        load_config(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize("argv, words", [
    (["--max-inflight", "many"], "--max-inflight must be a whole number from 1 to 65535"),
    (["--max-queued-messages", "-1"], "--max-queued-messages must be a whole number of at least 0"),
    (["--sys-interval", "soon"], "--sys-interval must be a number of at least 0"),
    (["extra"], "Wrong number of arguments"),
])
def test_bad_flags_are_usage_errors(argv, words):
    with pytest.raises(usage.UsageError, match=words):
        Options().parseOptions(argv)


def test_make_service_turns_config_errors_into_one_sentence(tmp_path):
    """SystemExit with a message: Python prints it on stderr, exit status 1."""
    options = Options()
    options.parseOptions(["--config", write(tmp_path, "colour = 'blue'\n")])
    with pytest.raises(SystemExit) as raised:
        makeService(options)
    message = str(raised.value.code)
    assert message.startswith("reactorapp: unknown setting 'colour'")
    assert "\n" not in message
