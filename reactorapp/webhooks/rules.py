"""A webhook rule: which messages go to which endpoint, and how.

A rule is the same JSON object in the config file (a ``[[webhooks]]`` table)
and in the HTTP API. `parse_rule` checks every field and refuses what cannot
work with one sentence naming the field, so a typo is caught when the rule is
made rather than when the first message fails to go out.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from reactorapp.hub.topics import InvalidTopic, validate_filter

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
METHODS = ("POST", "PUT", "PATCH")
FORMATS = ("json", "raw")
#: Headers the dispatcher writes itself; a rule may not override them.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "idempotency-key",
})
RESERVED_PREFIX = "x-reactorapp-"
MAX_TIMEOUT = 300.0
MAX_CONCURRENCY = 64
MAX_ATTEMPTS = 100
MAX_DELAY = 86400.0


class RuleError(ValueError):
    """A rule that cannot be used; the message is one sentence."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a delivery is tried before it is dead."""

    max_attempts: int = 10
    base_delay: float = 1.0
    max_delay: float = 300.0

    def delay(self, failures: int, jitter: float) -> float:
        """Seconds to wait after ``failures`` failed attempts (1, 2, ...).

        Exponential, capped, with "equal jitter": at least half the nominal
        delay, so receivers get a breather, plus a random part (``jitter``
        in [0, 1)) so many deliveries that failed together do not come back
        together.
        """
        nominal = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        return nominal * (0.5 + 0.5 * jitter)


@dataclass(frozen=True, slots=True)
class WebhookRule:
    """One endpoint and the messages it wants (docs/webhooks.md describes each field)."""

    name: str
    filters: tuple[str, ...]
    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    secret: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    max_concurrency: int = 1
    retry: RetryPolicy = RetryPolicy()
    format: str = "json"
    qos: int = 1

    def to_dict(self, *, with_secret: bool = False) -> dict:
        """The rule as JSON. Without ``with_secret`` the secret is left out
        (shown only as ``"signed"``), which is what the API returns."""
        data = {
            "name": self.name,
            "filters": list(self.filters),
            "url": self.url,
            "method": self.method,
            "headers": dict(self.headers),
            "timeout": self.timeout,
            "max_concurrency": self.max_concurrency,
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "base_delay": self.retry.base_delay,
                "max_delay": self.retry.max_delay,
            },
            "format": self.format,
            "qos": self.qos,
        }
        if with_secret:
            if self.secret is not None:
                data["secret"] = self.secret
        else:
            data["signed"] = self.secret is not None
        return data


_FIELDS = ("name", "filters", "url", "method", "headers", "secret", "timeout",
           "max_concurrency", "retry", "format", "qos")
_RETRY_FIELDS = ("max_attempts", "base_delay", "max_delay")


def parse_rule(data: object, *, name: str | None = None) -> WebhookRule:
    """Check a rule given as JSON/TOML data and return it.

    ``name``, when given (the ``{name}`` of ``PUT /api/v1/webhooks/{name}``),
    is used if the data has none and must match it if it has one.
    """
    if not isinstance(data, dict):
        raise RuleError(f"A webhook rule must be an object, not {_kind(data)}.")
    _refuse_unknown(data, _FIELDS, "")
    if name is not None:
        if data.get("name", name) != name:
            raise RuleError(
                f"The rule's name {data['name']!r} differs from {name!r} in the URL.")
        data = {**data, "name": name}
    if "name" not in data:
        raise RuleError("A webhook rule needs a 'name'.")
    rule_name = data["name"]
    if not isinstance(rule_name, str) or not NAME.fullmatch(rule_name):
        raise RuleError(
            f"The rule name {rule_name!r} must be 1 to 64 letters, digits, '_', '.'"
            " or '-', starting with a letter or digit.")
    where = f"In webhook {rule_name!r}, "
    try:
        return WebhookRule(
            name=rule_name,
            filters=_filters(data.get("filters")),
            url=_url(data.get("url")),
            method=_choice(data, "method", METHODS, "POST", upper=True),
            headers=_headers(data.get("headers", {})),
            secret=_secret(data.get("secret")),
            timeout=_number(data, "timeout", 10.0, 0, MAX_TIMEOUT, exclusive=True),
            max_concurrency=_integer(data, "max_concurrency", 1, 1, MAX_CONCURRENCY),
            retry=_retry(data.get("retry", {})),
            format=_choice(data, "format", FORMATS, "json"),
            qos=_integer(data, "qos", 1, 0, 1),
        )
    except RuleError as e:
        text = str(e)
        raise RuleError(where + text[0].lower() + text[1:]) from None


def _refuse_unknown(data: dict, known: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            names = ", ".join(known)
            raise RuleError(
                f"Unknown field {prefix + str(key)!r}{hint}; the fields are: {names}.")


def _filters(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RuleError("'filters' must be a non-empty list of topic filters.")
    for topic_filter in value:
        # "$share/GROUP/FILTER" makes the rule one member of that group.
        try:
            validate_filter(topic_filter)
        except InvalidTopic as e:
            raise RuleError(f"'filters' has a bad topic filter: {e}") from None
    return tuple(dict.fromkeys(value))


def _url(value: object) -> str:
    if value is None:
        raise RuleError("'url' is required.")
    if not isinstance(value, str) or not value.isascii() or any(c.isspace() for c in value):
        raise RuleError(f"'url' must be an http or https URL, not {value!r}.")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise RuleError(f"'url' has a bad port: {value!r}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RuleError(f"'url' must be an http or https URL with a host, not {value!r}.")
    if parts.fragment:
        raise RuleError(f"'url' must not have a fragment ('#...'): {value!r}.")
    return value


def _choice(data: dict, key: str, choices: tuple[str, ...], default: str,
            upper: bool = False) -> str:
    value = data.get(key, default)
    if isinstance(value, str) and upper:
        value = value.upper()
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise RuleError(f"'{key}' must be one of {allowed}, not {data.get(key)!r}.")
    return value


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise RuleError(f"'headers' must be an object of names to strings, not {_kind(value)}.")
    for header, text in value.items():
        if not HEADER_NAME.fullmatch(header):
            raise RuleError(f"'headers' has an invalid header name {header!r}.")
        folded = header.lower()
        if folded in RESERVED_HEADERS or folded.startswith(RESERVED_PREFIX):
            raise RuleError(f"the header {header!r} is set by reactorapp and cannot be overridden.")
        if not isinstance(text, str) or any(c in text for c in "\r\n\x00"):
            raise RuleError(f"the header {header!r} must be a string on one line, not {text!r}.")
    return tuple(value.items())


def _secret(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RuleError("'secret' must be a non-empty string.")
    return value


def _number(data: dict, key: str, default: float, low: float, high: float,
            exclusive: bool = False, prefix: str = "") -> float:
    value = data.get(key, default)
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        bad = not math.isfinite(value) or value > high or value < low or (
            exclusive and value == low)
    if bad:
        lower = f"more than {low:g}" if exclusive else f"at least {low:g}"
        raise RuleError(
            f"'{prefix}{key}' must be a number {lower} and at most {high:g}, not {value!r}.")
    return float(value)


def _integer(data: dict, key: str, default: int, low: int, high: int,
             prefix: str = "") -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RuleError(
            f"'{prefix}{key}' must be a whole number from {low} to {high}, not {value!r}.")
    return value


def _retry(value: object) -> RetryPolicy:
    if not isinstance(value, dict):
        raise RuleError(f"'retry' must be an object, not {_kind(value)}.")
    _refuse_unknown(value, _RETRY_FIELDS, "retry.")
    default = RetryPolicy()
    policy = RetryPolicy(
        max_attempts=_integer(value, "max_attempts", default.max_attempts, 1, MAX_ATTEMPTS,
                              prefix="retry."),
        base_delay=_number(value, "base_delay", default.base_delay, 0, MAX_DELAY,
                           exclusive=True, prefix="retry."),
        max_delay=_number(value, "max_delay", default.max_delay, 0, MAX_DELAY,
                          exclusive=True, prefix="retry."),
    )
    if policy.base_delay > policy.max_delay:
        raise RuleError(
            f"'retry.base_delay' ({policy.base_delay:g}) must not exceed"
            f" 'retry.max_delay' ({policy.max_delay:g}).")
    return policy


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", dict: "an object"}.get(
        type(value), type(value).__name__)


def rules_from_config(value: object) -> tuple[WebhookRule, ...]:
    """The ``[[webhooks]]`` array of tables of the config file, checked."""
    if not isinstance(value, list):
        raise RuleError(
            f"'webhooks' must be an array of tables ([[webhooks]]), not {_kind(value)}.")
    rules: dict[str, WebhookRule] = {}
    for number, table in enumerate(value, 1):
        try:
            rule = parse_rule(table)
        except RuleError as e:
            text = str(e)
            raise RuleError(f"[[webhooks]] table {number}: {text[0].lower()}{text[1:]}") from None
        if rule.name in rules:
            raise RuleError(f"[[webhooks]] table {number}: the name {rule.name!r} is used twice.")
        rules[rule.name] = rule
    return tuple(rules.values())
