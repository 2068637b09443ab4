"""Settings: declared once here, read from a TOML file and from twistd flags.

Each field of `Config` is one setting. Its name, with ``_`` written as
``-``, is both the command-line flag (``--max-inflight``) and the key in the
TOML file (``max-inflight = 20``); its type, default and help text come from
the field itself. A new setting is one new field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field

MAX_MQTT_PACKET_SIZE = 268_435_460  # 5 header bytes + the largest remaining length


class ConfigError(Exception):
    """A setting the operator has to fix; the message is one sentence."""


def setting(default, help, *, metavar, minimum=None, maximum=None):
    """Declare one setting: a dataclass field carrying its help and bounds."""
    return field(
        default=default,
        metadata={"help": help, "metavar": metavar, "minimum": minimum, "maximum": maximum},
    )


@dataclass(frozen=True)
class Config:
    """Everything reactorapp needs to start, after file and flags are merged."""

    mqtt: tuple[str, ...] = setting(
        ("tcp:1883:interface=127.0.0.1",),
        "MQTT listener, as a Twisted server endpoint description; repeat for several.",
        metavar="ENDPOINT",
    )
    data: str = setting(
        "reactorapp-data",
        "Directory where state is kept; created if missing.",
        metavar="DIR",
    )
    sys_interval: float = setting(
        10.0,
        "Seconds between updates of the $SYS topics; 0 turns them off.",
        metavar="SECONDS", minimum=0,
    )
    max_inflight: int = setting(
        20,
        "QoS 1 and 2 messages sent to one client and not yet acknowledged.",
        metavar="N", minimum=1, maximum=65535,
    )
    max_queued_messages: int = setting(
        1000,
        "Messages kept for one client beyond the inflight window.",
        metavar="N", minimum=0,
    )
    max_packet_size: int = setting(
        MAX_MQTT_PACKET_SIZE,
        "Largest MQTT packet accepted, in bytes.",
        metavar="BYTES", minimum=2, maximum=MAX_MQTT_PACKET_SIZE,
    )


@dataclass(frozen=True)
class Setting:
    """One field of `Config`, as seen by the flag parser and the file loader."""

    name: str          # the Config attribute
    type: object       # int, float, str or tuple[str, ...]
    default: object
    help: str
    metavar: str
    minimum: float | None
    maximum: float | None

    @property
    def key(self) -> str:
        """The flag (without ``--``) and the TOML key."""
        return self.name.replace("_", "-")

    @property
    def repeatable(self) -> bool:
        return self.type == tuple[str, ...]

    def from_text(self, text: str, source: str):
        """Convert one command-line value; repeatable settings take one item."""
        if self.type in (int, float):
            try:
                value = self.type(text)
            except ValueError:
                raise ConfigError(f"{source} must be {self._kind()}, not {text!r}.") from None
            return self._checked(value, source)
        return text

    def from_toml(self, value, source: str):
        """Check a value read from TOML and give it the type `Config` holds."""
        if self.repeatable:
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{source} must be a list of strings, not {value!r}.")
            return tuple(value)
        if self.type is str:
            if not isinstance(value, str):
                raise ConfigError(f"{source} must be a string, not {value!r}.")
            return value
        allowed = (int, float) if self.type is float else (int,)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConfigError(f"{source} must be {self._kind()}, not {value!r}.")
        return self._checked(self.type(value), source)

    def _kind(self) -> str:
        words = {int: "a whole number", float: "a number"}[self.type]
        if self.minimum is not None and self.maximum is not None:
            return f"{words} from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"{words} of at least {self.minimum}"
        return words

    def _checked(self, value, source: str):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source} must be {self._kind()}, not {value!r}.")
        too_small = self.minimum is not None and value < self.minimum
        too_large = self.maximum is not None and value > self.maximum
        if too_small or too_large:
            raise ConfigError(f"{source} must be {self._kind()}, not {value!r}.")
        return value


def _settings() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(Config)
    return tuple(
        Setting(
            name=f.name, type=hints[f.name], default=f.default,
            help=f.metadata["help"], metavar=f.metadata["metavar"],
            minimum=f.metadata["minimum"], maximum=f.metadata["maximum"],
        )
        for f in dataclasses.fields(Config)
    )


SETTINGS: tuple[Setting, ...] = _settings()
_BY_KEY = {s.key: s for s in SETTINGS}


def load_config(path: str) -> dict[str, object]:
    """Read a TOML file into checked values keyed by `Config` attribute name."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror or e}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}.") from None
    values = {}
    for key, value in document.items():
        setting = _BY_KEY.get(key)
        if setting is None:
            raise ConfigError(f"unknown setting {key!r} in config file {path!r}{_suggest(key)}.")
        values[setting.name] = setting.from_toml(value, f"{key!r} in config file {path!r}")
    return values


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), list(_BY_KEY), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def merge(file_values: dict[str, object], flag_values: dict[str, object]) -> Config:
    """Build the `Config`: defaults, then the file, then the flags."""
    return Config(**{**file_values, **flag_values})
