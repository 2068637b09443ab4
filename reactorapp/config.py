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

from reactorapp.errors import SetupError

MAX_MQTT_PACKET_SIZE = 268_435_460  # 5 header bytes + the largest remaining length


class ConfigError(SetupError):
    """A setting the operator has to fix; the message is one sentence."""


def setting(default, help, *, metavar, minimum=None, maximum=None):
    """Declare one setting: a dataclass field carrying its help and bounds."""
    return field(
        default=default,
        metadata={"help": help, "metavar": metavar, "minimum": minimum, "maximum": maximum},
    )


def table(help):
    """Declare an array of tables of the TOML file (``[[name]]``), not a flag.
    The feature that reads it parses it: `load_config` is handed a parser
    for each (config knows settings, not the features that use them)."""
    return field(default=(), metadata={"help": help, "table": True})


@dataclass(frozen=True)
class Config:
    """Everything reactorapp needs to start, after file and flags are merged."""

    mqtt: tuple[str, ...] = setting(
        ("tcp:1883:interface=127.0.0.1",),
        "MQTT listener, as a Twisted server endpoint description; repeat for several.",
        metavar="ENDPOINT",
    )
    http: tuple[str, ...] = setting(
        ("tcp:8080:interface=127.0.0.1",),
        "HTTP listener (API, dashboard, metrics, MQTT over WebSocket at /mqtt), as a "
        "Twisted server endpoint description; repeat for several; 'none' for no HTTP.",
        metavar="ENDPOINT",
    )
    listen: tuple[str, ...] = setting(
        (),
        "Listener for a protocol plugin, as NAME:ENDPOINT (line:tcp:7000), then the "
        "plugin's own flags if any; repeat for several.",
        metavar="NAME:ENDPOINT",
    )
    data: str = setting(
        "reactorapp-data",
        "Directory where state is kept; created if missing.",
        metavar="DIR",
    )
    store: str = setting(
        "sqlite",
        "Where sessions and retained messages are kept: sqlite (a file in the"
        " data directory) or memory (lost when the process exits).",
        metavar="KIND",
    )
    log_format: str = setting(
        "text",
        "How twistd's log lines are written: text, or json (one JSON object per"
        " event, twisted.logger's format) for log shippers.",
        metavar="FORMAT",
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
    session_expiry: float = setting(
        0.0,
        "Seconds a persistent session (Clean Session 0) is kept for a client that"
        " stays away; then it is removed with its queue. 0 keeps it for ever. Also"
        " the longest Session Expiry Interval an MQTT 5 client gets.",
        metavar="SECONDS", minimum=0,
    )
    max_keepalive: int = setting(
        0,
        "Longest keep-alive, in seconds, an MQTT 5 client may use: one that asks for"
        " more, or for 0, is told this value in CONNACK and held to it (3.1.1 clients"
        " keep theirs). 0 means no limit.",
        metavar="SECONDS", minimum=0, maximum=65535,
    )
    topic_alias_maximum: int = setting(
        10,
        "Topic aliases an MQTT 5 client may use in the PUBLISHes it sends (announced"
        " in CONNACK); 0: none.",
        metavar="N", minimum=0, maximum=65535,
    )
    response_information: str = setting(
        "response/%c/",
        "What an MQTT 5 client that asks for Response Information gets in CONNACK: a"
        " topic prefix for its responses, %c replaced by its client id. Empty: none.",
        metavar="TEXT",
    )
    max_dead_letters: int = setting(
        10_000,
        "Dead letters kept per webhook rule; past that the oldest are dropped"
        " (counted in reactorapp_webhook_dead_letters_dropped_total). 0: no limit.",
        metavar="N", minimum=0,
    )
    max_packet_size: int = setting(
        MAX_MQTT_PACKET_SIZE,
        "Largest MQTT packet accepted, in bytes.",
        metavar="BYTES", minimum=2, maximum=MAX_MQTT_PACKET_SIZE,
    )
    max_body_size: int = setting(
        1_048_576,
        "Largest HTTP request body accepted, in bytes; larger ones get a 413.",
        metavar="BYTES", minimum=0,
    )
    passwd: str = setting(
        "",
        "Password file (made with python -m reactorapp.passwd); clients must log"
        " in with a user from it. Empty: no passwords are checked.",
        metavar="FILE",
    )
    authenticator: str = setting(
        "",
        "Authenticator plugin that decides who connects, by name, then its own"
        " flags if any; replaces --passwd. Empty: none.",
        metavar="NAME",
    )
    allow_anonymous: bool = setting(
        False,
        "With --passwd, also let in clients that give no user name.",
        metavar="",
    )
    acl: str = setting(
        "",
        "ACL file: which user may publish and subscribe to which topics."
        " Empty: everyone may use every topic.",
        metavar="FILE",
    )
    tls_cert_auth: bool = setting(
        False,
        "A client with a verified TLS certificate (an ssl: listener with caCerts=)"
        " is the user named by the certificate's common name, without a password.",
        metavar="",
    )
    connect_timeout: float = setting(
        10.0,
        "Seconds a new connection has to send CONNECT; 0 waits for ever.",
        metavar="SECONDS", minimum=0,
    )
    max_connections: int = setting(
        10000,
        "Open MQTT connections allowed in total; 0 means no limit.",
        metavar="N", minimum=0,
    )
    max_connections_per_address: int = setting(
        0,
        "Open MQTT connections allowed from one IP address; 0 means no limit.",
        metavar="N", minimum=0,
    )
    max_http_connections: int = setting(
        1000,
        "Open HTTP connections allowed in total (a WebSocket counts as MQTT once"
        " upgraded); 0 means no limit. --max-connections-per-address applies too.",
        metavar="N", minimum=0,
    )
    max_subscriptions: int = setting(
        1000,
        "Subscriptions one client may hold; 0 means no limit.",
        metavar="N", minimum=0,
    )
    publish_rate: float = setting(
        0.0,
        "PUBLISH packets per second one client may send; past it (and the burst)"
        " the client is read from more slowly. 0 means no limit.",
        metavar="PER_SECOND", minimum=0,
    )
    publish_burst: int = setting(
        100,
        "PUBLISH packets a client may send at once above --publish-rate.",
        metavar="N", minimum=1,
    )
    max_queued_bytes: int = setting(
        4 * 1024 * 1024,
        "Bytes of messages kept in memory for one client beyond the inflight"
        " window (about: payload and topic); 0 means no limit.",
        metavar="BYTES", minimum=0,
    )
    max_spill_bytes: int = setting(
        64 * 1024 * 1024,
        "Bytes of QoS 1 and 2 messages one client's queue may move to disk (DIR/spill)"
        " when memory is full; past it, publishers are held back. 0: never spill.",
        metavar="BYTES", minimum=0,
    )
    max_spill_total_bytes: int = setting(
        1024 * 1024 * 1024,
        "Bytes all clients' queues together may move to disk; past it, as past"
        " --max-spill-bytes, publishers are held back. 0: no limit but theirs.",
        metavar="BYTES", minimum=0,
    )
    max_pending_acks: int = setting(
        100,
        "QoS 1 and 2 PUBLISHes from one client waiting for their acknowledgement;"
        " past it, the client is not read from until some are acknowledged.",
        metavar="N", minimum=1,
    )
    send_buffer: int = setting(
        64 * 1024,
        "Bytes written to one MQTT connection but not yet taken by the network"
        " before the broker stops reading from the publishers feeding it (and"
        " from the client itself) until it drains; also the most read from one"
        " connection at a time.",
        metavar="BYTES", minimum=4096,
    )
    slow_subscriber_timeout: float = setting(
        5.0,
        "Seconds a client may leave its --send-buffer full without draining it"
        " before it counts as slow: from then it holds no publisher back and its"
        " QoS 0 messages are dropped (counted) until it drains. 0: never slow.",
        metavar="SECONDS", minimum=0,
    )
    listen_backlog: int = setting(
        4096,
        "Connections the kernel queues for each listener before they are accepted"
        " (the listen backlog), for endpoints that do not set backlog= themselves.",
        metavar="N", minimum=1,
    )
    cluster: str = setting(
        "",
        "Redis (or Valkey) shared by the nodes of a cluster, as a URL:"
        " redis://[:PASSWORD@]HOST[:PORT][/DB], rediss:// for TLS. Empty: one node.",
        metavar="URL",
    )
    cluster_ca: str = setting(
        "",
        "PEM file of the certificate authorities that sign the rediss:// server's"
        " certificate, trusted instead of the system's. Empty: the system's.",
        metavar="FILE",
    )
    node_name: str = setting(
        "",
        "This node's name in the cluster (unique, kept across restarts so that"
        " it finds what was left for it). Empty: host name and first MQTT port.",
        metavar="NAME",
    )
    cluster_node_expiry: float = setting(
        5.0,
        "Seconds after its last heartbeat (sent every third of this) that a node"
        " counts as gone and is left out of routing and of /api/v1/cluster.",
        metavar="SECONDS", minimum=0.3,
    )
    webhooks: tuple = table(
        "Webhook rules, one [[webhooks]] table each (see docs/webhooks.md).",
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
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{source} must be true or false, not {value!r}.")
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
        for f in dataclasses.fields(Config) if "table" not in f.metadata
    )


SETTINGS: tuple[Setting, ...] = _settings()
#: Arrays of tables in the file, by key.
TABLES = frozenset(f.name for f in dataclasses.fields(Config) if "table" in f.metadata)
_BY_KEY = {s.key: s for s in SETTINGS}


def load_config(path: str, tables=None) -> dict[str, object]:
    """Read a TOML file into checked values keyed by `Config` attribute name.

    ``tables`` maps each array of tables (`TABLES`, e.g. ``webhooks``) to the
    parser of the feature that reads it: ``parse(value)`` returns what
    `Config` holds or raises `ValueError` with one sentence.
    """
    tables = tables or {}
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror or e}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}.") from None
    values = {}
    for key, value in document.items():
        if key in TABLES:
            parse = tables.get(key)
            if parse is None:
                raise ConfigError(f"{key!r} in config file {path!r} is not read by this program.")
            try:
                values[key] = parse(value)
            except ValueError as e:
                raise ConfigError(f"in config file {path!r}, {str(e).rstrip('.')}.") from None
            continue
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
