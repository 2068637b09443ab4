"""Access control lists in Mosquitto's format.

::

    # Rules before the first "user" line are for anonymous clients.
    topic read public/#

    user alice
    topic readwrite home/#
    topic deny home/secrets/#        # deny wins over any allow

    # Pattern rules apply to every client; %u is the user name, %c the client id.
    pattern write devices/%c/#
    pattern read users/%u/#

``topic [read|write|readwrite|deny] TOPIC`` (no access word means readwrite).
A ``#`` after white space starts a comment, at the end of a rule line too: no
valid topic filter has a ``#`` right after a space, so nothing is ambiguous.
A client may publish to a topic that a write rule matches, and receives
messages on topics a read rule matches, unless a deny rule matches. A
SUBSCRIBE is granted when one read rule covers the whole filter (every topic
the filter can match) and no deny rule does; messages are still checked one
by one on delivery, so subscribing to ``#`` next to ``topic deny secret/#``
never shows ``secret/...``.

A pattern whose ``%u`` or ``%c`` would bring in ``+``, ``#`` or ``/`` is
skipped for that client, so a crafted name cannot widen its own access.
"""

from __future__ import annotations

import re

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.auth.files import WatchedFile, read_text
from reactorapp.auth.interfaces import IAuthorizer
from reactorapp.hub.topics import is_valid_filter, parse_shared

log = Logger()

READ = 1
WRITE = 2
DENY = 4
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": DENY}
_UNSAFE = frozenset("+#/")
_TRAILING_COMMENT = re.compile(r"\s+#.*$")


class ACLError(Exception):
    """The ACL file cannot be used; the message says where and why."""


class _Node:
    __slots__ = ("children", "end")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.end = False


class PatternSet:
    """Topic filters (the rules of one kind), matched as a trie."""

    def __init__(self, patterns=()) -> None:
        self._root = _Node()
        self.empty = True
        for pattern in patterns:
            self.add(pattern)

    def add(self, pattern: str) -> None:
        node = self._root
        for level in pattern.split("/"):
            node = node.children.setdefault(level, _Node())
        node.end = True
        self.empty = False

    def matches(self, topic: str) -> bool:
        """Does any pattern match the topic name ``topic``?"""
        if self.empty:
            return False
        levels = topic.split("/")
        return _matches(self._root, levels, 0, levels[0].startswith("$"))

    def covers(self, topic_filter: str) -> bool:
        """Does one pattern match every topic that ``topic_filter`` matches?"""
        if self.empty:
            return False
        levels = topic_filter.split("/")
        return _covers(self._root, levels, 0, levels[0].startswith("$"))


def _matches(node: _Node, levels: list[str], i: int, dollar: bool) -> bool:
    children = node.children
    if i == len(levels):
        return node.end or "#" in children  # "a/#" matches "a"
    wild = not (dollar and i == 0)  # [MQTT-4.7.2-1]
    if wild and "#" in children:
        return True
    child = children.get(levels[i])
    if child is not None and _matches(child, levels, i + 1, dollar):
        return True
    if wild:
        child = children.get("+")
        if child is not None and _matches(child, levels, i + 1, dollar):
            return True
    return False


def _covers(node: _Node, levels: list[str], i: int, dollar: bool) -> bool:
    children = node.children
    if i == len(levels):
        return node.end or "#" in children
    wild = not (dollar and i == 0)
    if wild and "#" in children:
        return True
    level = levels[i]
    if level == "#":
        return False  # only a "#" rule covers "#"
    if wild:
        child = children.get("+")
        if child is not None and _covers(child, levels, i + 1, dollar):
            return True
    if level == "+":
        return False  # a literal rule level cannot cover a wildcard
    child = children.get(level)
    return child is not None and _covers(child, levels, i + 1, dollar)


class Rule:
    __slots__ = ("access", "topic", "line")

    def __init__(self, access: int, topic: str, line: int) -> None:
        self.access = access
        self.topic = topic
        self.line = line

    def __repr__(self) -> str:
        return f"<Rule {self.access} {self.topic!r} line {self.line}>"


class ACL:
    """The parsed file: anonymous rules, rules per user, pattern rules."""

    def __init__(self) -> None:
        self.anonymous: list[Rule] = []
        self.users: dict[str, list[Rule]] = {}
        self.patterns: list[Rule] = []

    @classmethod
    def parse(cls, text: str, source: str = "ACL") -> ACL:
        acl = cls()
        current = acl.anonymous
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}, line {number}"
            keyword, _, rest = line.partition(" ")
            rest = rest.strip()
            if keyword == "user":
                rest = _uncomment(rest)
                if not rest:
                    raise ACLError(f"{where}: 'user' needs a name.")
                current = acl.users.setdefault(rest, [])
            elif keyword in ("topic", "pattern"):
                rule = _parse_rule(rest, number, where)
                (acl.patterns if keyword == "pattern" else current).append(rule)
            else:
                raise ACLError(
                    f"{where}: expected 'user', 'topic' or 'pattern', not {keyword!r}.")
        return acl

    def rules_for(self, username: str | None, client_id: str) -> tuple[PatternSet, ...]:
        """The (read, write, deny) pattern sets of one client."""
        sets = {READ: PatternSet(), WRITE: PatternSet(), DENY: PatternSet()}
        own = self.anonymous if username is None else self.users.get(username, ())
        for rule in own:
            _add(sets, rule.access, rule.topic)
        for rule in self.patterns:
            topic = _substitute(rule.topic, username, client_id)
            if topic is not None:
                _add(sets, rule.access, topic)
        return sets[READ], sets[WRITE], sets[DENY]


def _parse_rule(rest: str, number: int, where: str) -> Rule:
    word, _, topic = rest.partition(" ")
    topic = _uncomment(topic.strip())
    if word in _ACCESS and topic:
        access = _ACCESS[word]
    else:
        access, topic = READ | WRITE, _uncomment(rest)
    if not topic:
        raise ACLError(f"{where}: a rule needs a topic.")
    if not is_valid_filter(topic) or topic.startswith("$share/"):
        raise ACLError(f"{where}: {topic!r} is not a valid topic filter.")
    return Rule(access, topic, number)


def _uncomment(text: str) -> str:
    """``text`` without a trailing ``# comment``; a leading ``#`` is the filter."""
    return _TRAILING_COMMENT.sub("", text)


def _add(sets: dict, access: int, topic: str) -> None:
    for bit in (READ, WRITE, DENY):
        if access & bit:
            sets[bit].add(topic)


def _substitute(topic: str, username: str | None, client_id: str) -> str | None:
    if "%u" in topic:
        if username is None or _UNSAFE.intersection(username) or not username:
            return None
        topic = topic.replace("%u", username)
    if "%c" in topic:
        if not client_id or _UNSAFE.intersection(client_id):
            return None
        topic = topic.replace("%c", client_id)
    return topic


def read_acl(path: str) -> ACL:
    return ACL.parse(read_text(path, "ACL file", ACLError), f"ACL file {path!r}")


@implementer(IAuthorizer)
class ACLAuthorizer:
    """Answers from an `ACL`, compiled once per client and cached.

    Decisions for (user, client id, topic) are kept in one bounded cache, so
    the delivery path usually costs one dictionary lookup.
    """

    def __init__(self, acl: ACL, *, cache_size: int = 65536, clients: int = 4096) -> None:
        self.acl = acl
        self._cache: dict[tuple, int] = {}
        self._cache_size = cache_size
        self._compiled: dict[tuple, tuple[PatternSet, ...]] = {}
        self._clients = clients

    def replace(self, acl: ACL) -> None:
        """Answer from ``acl`` from now on, for existing subscriptions too
        (deliveries are checked one by one)."""
        self.acl = acl
        self._cache.clear()
        self._compiled.clear()

    def _rules(self, identity) -> tuple[PatternSet, ...]:
        key = (identity.username, identity.client_id)
        rules = self._compiled.get(key)
        if rules is None:
            if len(self._compiled) >= self._clients:
                del self._compiled[next(iter(self._compiled))]
            rules = self._compiled[key] = self.acl.rules_for(*key)
        return rules

    def _decide(self, identity, topic: str, key: tuple) -> int:
        read, write, deny = self._rules(identity)
        if deny.matches(topic):
            bits = 0
        else:
            bits = (READ if read.matches(topic) else 0) | (WRITE if write.matches(topic) else 0)
        cache = self._cache
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]  # the oldest entry
        cache[key] = bits
        return bits

    def _bits(self, identity, topic: str) -> int:
        key = (identity.username, identity.client_id, topic)
        bits = self._cache.get(key)
        return self._decide(identity, topic, key) if bits is None else bits

    def can_read(self, identity, topic):
        return self._bits(identity, topic) & READ != 0

    def can_publish(self, identity, topic):
        return self._bits(identity, topic) & WRITE != 0

    def can_subscribe(self, identity, topic_filter):
        _group, inner = parse_shared(topic_filter)
        read, _write, deny = self._rules(identity)
        return read.covers(inner) and not deny.covers(inner)


class ACLFile:
    """An ACL file kept current: `check` (called every few seconds, since
    the ACL is consulted for every delivery) re-reads it when it changed,
    with ``run`` (on a thread pool in the service: the stat, the read and
    the parsing stay off the reactor). A file that no longer parses keeps
    the previous rules, and says why."""

    def __init__(self, path: str, authorizer: ACLAuthorizer, run=None) -> None:
        self.path = path
        self.authorizer = authorizer
        self._watch = WatchedFile(path, read_acl, (ACLError,), authorizer.replace,
                                  log, "rules", run or maybeDeferred)

    def check(self):
        """A Deferred that never fails, once the file was looked at."""
        return self._watch.check()
