"""Topic names, topic filters, and the two trees that match them.

Plain Python on purpose: this is the broker's hot path, tested without a
reactor. ``topic_matches`` is the obvious reference matcher; ``TopicTree``
and ``RetainedTree`` are the fast ones and must always agree with it.

Rules (MQTT 3.1.1 section 4.7, shared subscriptions from MQTT 5 section 4.8.2):

- levels are separated by ``/`` and empty levels count, so "a/b", "/a/b",
  "a/b/" and "a//b" are four topics; comparison is exact, code point for
  code point (no case folding, no normalisation) [MQTT-4.7.3-4];
- ``+`` matches exactly one level, possibly empty [MQTT-4.7.1-3];
- ``#`` is last and matches its parent level and any number of levels
  below it [MQTT-4.7.1-2];
- a filter whose first level is a wildcard never matches a topic that starts
  with ``$`` [MQTT-4.7.2-1];
- ``$share/{group}/{filter}`` is a shared subscription on ``filter``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator

from reactorapp.hub.shared import ShareGroup

__all__ = [
    "InvalidTopic", "validate_topic", "validate_filter", "is_valid_topic",
    "is_valid_filter", "topic_matches", "parse_shared", "TopicTree",
    "RetainedTree",
]

MAX_TOPIC_BYTES = 65535
SHARE_PREFIX = "$share/"


class InvalidTopic(ValueError):
    """A topic name or filter breaks the rules; the message says which."""


def _check_string(value: object, what: str) -> None:
    """The checks names and filters share [MQTT-4.7.3-1..3], [MQTT-1.5.3-1]."""
    if not isinstance(value, str):
        raise InvalidTopic(f"A {what} must be a string, not {type(value).__name__}.")
    if not value:
        raise InvalidTopic(f"A {what} must not be empty.")
    if "\x00" in value:
        raise InvalidTopic(f"A {what} must not contain the null character U+0000.")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidTopic(
                f"A {what} must be valid UTF-8 (it contains a lone surrogate)."
            ) from None
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopic(
            f"A {what} must be at most {MAX_TOPIC_BYTES} bytes in UTF-8, not {size}."
        )


#: What `topic_name_problem` finds, and how to say it.
EMPTY, NULL, WILDCARD = "is empty", "contains U+0000", "contains a wildcard"


def topic_name_problem(topic: str) -> str | None:
    """What makes the string ``topic`` no topic name (`EMPTY`, `NULL`,
    `WILDCARD`), or None [MQTT-4.7.3-1] [MQTT-4.7.3-2] [MQTT-4.7.1-1].
    The rule the codec (which tells a malformed packet from a protocol
    error) and `validate_topic` share."""
    if not topic:
        return EMPTY
    if "\x00" in topic:
        return NULL
    if "+" in topic or "#" in topic:
        return WILDCARD
    return None


def validate_topic(topic: str) -> None:
    """Raise InvalidTopic unless ``topic`` may be published to (PUBLISH or Will)."""
    _check_string(topic, "topic name")
    if topic_name_problem(topic) is not None:  # [MQTT-4.7.1-1]: what is left, wildcards
        raise InvalidTopic(
            f"The topic name {topic!r} contains a wildcard ('+' or '#'); "
            "wildcards are only allowed in topic filters."
        )


#: Where the broker publishes its own status; clients may not [§4.7.2].
SYS_PREFIX = "$SYS"


def is_broker_topic(topic: str) -> bool:
    """True for the broker's own topics (``$SYS...``), which clients may
    not publish to [§4.7.2] and the store does not keep."""
    return topic.startswith(SYS_PREFIX)


def validate_publish_topic(topic: str) -> None:
    """Raise InvalidTopic unless a client may publish to ``topic``: a valid
    topic name, not one of the broker's own."""
    validate_topic(topic)
    if topic.startswith(SYS_PREFIX):
        raise InvalidTopic("Topics under $SYS belong to the broker.")


def validate_filter(topic_filter: str) -> None:
    """Raise InvalidTopic unless ``topic_filter`` may be subscribed to."""
    _check_string(topic_filter, "topic filter")
    inner = topic_filter
    if topic_filter.startswith(SHARE_PREFIX):
        group, sep, inner = topic_filter[len(SHARE_PREFIX):].partition("/")
        if not group:
            raise InvalidTopic(
                f"The shared subscription {topic_filter!r} has an empty share name."
            )
        if "+" in group or "#" in group:
            raise InvalidTopic(
                f"The share name {group!r} must not contain '+' or '#'."
            )
        if not sep or not inner:
            raise InvalidTopic(
                f"The shared subscription {topic_filter!r} needs a topic filter "
                "after the share name, as in '$share/group/filter'."
            )
    if "+" not in inner and "#" not in inner:
        return
    levels = inner.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):  # [MQTT-4.7.1-2]
            raise InvalidTopic(
                f"In the topic filter {topic_filter!r}, '#' must be a whole level "
                "and the last one."
            )
        if "+" in level and level != "+":  # [MQTT-4.7.1-3]
            raise InvalidTopic(
                f"In the topic filter {topic_filter!r}, '+' must fill a whole level."
            )


def is_valid_topic(topic: object) -> bool:
    """True if ``topic`` is a valid topic name."""
    try:
        validate_topic(topic)  # type: ignore[arg-type]
    except InvalidTopic:
        return False
    return True


def is_valid_filter(topic_filter: object) -> bool:
    """True if ``topic_filter`` is a valid topic filter (shared ones included)."""
    try:
        validate_filter(topic_filter)  # type: ignore[arg-type]
    except InvalidTopic:
        return False
    return True


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split "$share/group/a/b" into ("group", "a/b"); anything else is (None, filter)."""
    if topic_filter.startswith(SHARE_PREFIX):
        group, sep, inner = topic_filter[len(SHARE_PREFIX):].partition("/")
        if group and sep and inner:
            return group, inner
    return None, topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic_filter`` (assumed valid) matches the topic name ``topic``.

    The slow, obvious definition the trees are tested against. A shared
    subscription matches what its inner filter matches.
    """
    topic_filter = parse_shared(topic_filter)[1]
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):  # [MQTT-4.7.2-1]
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":  # the parent and everything below [MQTT-4.7.1-2]
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


class _Node:
    """One level of the subscription trie.

    ``subs`` holds the subscriptions whose filter ends at this node and
    ``hash_subs`` those whose filter is this node's path followed by "/#".
    Both are None until used, to keep the many leaf nodes small.
    """

    __slots__ = ("children", "plus", "subs", "hash_subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.subs: dict | None = None
        self.hash_subs: dict | None = None

    def is_empty(self) -> bool:
        return not (self.children or self.subs or self.hash_subs) and self.plus is None


def _collect(root: _Node, levels: list[str], dollar: bool, hits: list) -> None:
    """Append to ``hits`` every ``subs``/``hash_subs`` dict that matches ``levels``.

    An explicit stack rather than recursion: a 64 KiB topic can have tens of
    thousands of levels.
    """
    count = len(levels)
    stack = []
    # The root is special: wildcards there skip "$" topics [MQTT-4.7.2-1].
    if not dollar:
        if root.hash_subs:
            hits.append(root.hash_subs)
        if root.plus is not None:
            stack.append((root.plus, 1))
    child = root.children.get(levels[0])
    if child is not None:
        stack.append((child, 1))
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth = pop()
        if node.hash_subs:
            hits.append(node.hash_subs)
        if depth == count:
            if node.subs:
                hits.append(node.subs)
            continue
        child = node.children.get(levels[depth])
        if child is not None:
            push((child, depth + 1))
        if node.plus is not None:
            push((node.plus, depth + 1))


class TopicTree:
    """Subscriptions: topic filter -> {subscriber: qos}. Subscribers are any hashable objects.

    Every filter's ``{subscriber: qos}`` dict is referenced both from
    ``_filters`` (for bookkeeping) and from its trie node (for matching), so
    changing a QoS touches one dict. Shared subscriptions live in a second
    trie whose dicts map share name -> that filter's `ShareGroup`, which
    holds the same ``{subscriber: qos}`` dict and whose turn it is.

    ``lookup`` results are cached per topic: the plain subscribers, and the
    groups, not the member each group chooses (that is chosen per message).
    A change of plain subscriptions or of the set of groups clears the
    cache; members joining or leaving an existing group do not, since the
    cached group sees them. The cache is cleared as well when it grows past
    ``cache_max_topics`` entries or ``cache_max_pairs`` subscribers and
    groups in total, so memory stays bounded whatever topics clients
    publish to.
    """

    cache_max_topics = 10_000
    cache_max_pairs = 200_000
    cache_max_topic_length = 1024

    def __init__(self) -> None:
        self._root = _Node()
        self._shared_root = _Node()
        self._filters: dict[str, dict[Hashable, int]] = {}
        self._count = 0
        self._shared_filters = 0
        #: Every shared subscription's group, by its whole filter.
        self._groups: dict[str, ShareGroup] = {}
        self._cache: dict[str, tuple[list[tuple[Hashable, int]], tuple]] = {}
        self._cache_pairs = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, subscriber: Hashable, qos: int) -> bool:
        """Subscribe; True if new, False if it replaced the QoS of an existing one [MQTT-3.8.4-3]."""
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}.")
        members = self._filters.get(topic_filter)
        if members is None:
            validate_filter(topic_filter)
            members = self._filters[topic_filter] = {}
            self._link(topic_filter, members)
            self._clear_cache()
        old = members.get(subscriber)
        if old == qos:
            return False
        members[subscriber] = qos
        group = self._groups.get(topic_filter)
        if group is None:
            self._clear_cache()
        elif old is None:
            group.joined(subscriber)
        if old is None:
            self._count += 1
            return True
        return False

    def remove(self, topic_filter: str, subscriber: Hashable) -> bool:
        """Unsubscribe; True if the subscription existed."""
        members = self._filters.get(topic_filter)
        if members is None or subscriber not in members:
            return False
        del members[subscriber]
        self._count -= 1
        group = self._groups.get(topic_filter)
        if group is not None:
            group.left(subscriber)
        if not members:
            del self._filters[topic_filter]
            self._unlink(topic_filter)
            self._clear_cache()
        elif group is None:
            self._clear_cache()
        return True

    def remove_all(self, subscriber: Hashable, filters: Iterable[str]) -> None:
        """Drop ``subscriber`` from every filter in ``filters`` (a session going away)."""
        for topic_filter in list(filters):
            self.remove(topic_filter, subscriber)

    def match(self, topic: str) -> list[tuple[Hashable, int]]:
        """Who gets a message on ``topic``: each plain subscriber once, with
        its highest QoS among matching filters [MQTT-3.3.5-1], then one
        member of each matching shared subscription, chosen now (a
        subscriber may so appear more than once: one copy per subscription).

        The hub routes with `lookup` instead, to tell shared copies apart.
        Without shared subscriptions the list is the cached one: callers
        must not modify it.
        """
        plain, groups = self.lookup(topic)
        if not groups:
            return plain
        result = list(plain)
        for group in groups:
            for member in group.candidates(2):
                group.took(member)
                result.append((member, group.members[member]))
                break
        return result

    def lookup(self, topic: str) -> tuple[list[tuple[Hashable, int]], tuple]:
        """The plain subscribers of ``topic`` (as `match` without shared
        subscriptions) and the `ShareGroup` of each matching shared
        subscription, whose member is chosen per message by the caller.

        Both are cached and shared: callers must not modify them.
        """
        entry = self._cache.get(topic)
        if entry is not None:
            return entry
        levels = topic.split("/")
        dollar = topic[:1] == "$"
        hits: list[dict] = []
        _collect(self._root, levels, dollar, hits)
        groups: tuple = ()
        if self._shared_filters:
            found: list[dict] = []
            _collect(self._shared_root, levels, dollar, found)
            groups = tuple(group for by_name in found for group in by_name.values())
        if not hits:
            result = []
        elif len(hits) == 1:
            result = list(hits[0].items())
        else:
            best = dict(hits[0])
            get = best.get
            for members in hits[1:]:
                for subscriber, qos in members.items():
                    if get(subscriber, -1) < qos:
                        best[subscriber] = qos
            result = list(best.items())
        entry = (result, groups)
        self._remember(topic, entry, len(result) + len(groups))
        return entry

    def group(self, share_filter: str) -> ShareGroup | None:
        """The group of the shared subscription ``$share/GROUP/FILTER``, if it has members."""
        return self._groups.get(share_filter)

    def groups(self) -> list[ShareGroup]:
        """Every shared subscription's group (a snapshot)."""
        return list(self._groups.values())

    def _remember(self, topic: str, entry: tuple, size: int) -> None:
        if len(topic) > self.cache_max_topic_length:
            return
        if (len(self._cache) >= self.cache_max_topics
                or self._cache_pairs + size > self.cache_max_pairs):
            self._clear_cache()
        self._cache[topic] = entry
        self._cache_pairs += size

    def _clear_cache(self) -> None:
        if self._cache:
            self._cache = {}
        self._cache_pairs = 0

    def _link(self, topic_filter: str, members: dict) -> None:
        """Hang a new filter's ``members`` dict on the trie, creating nodes."""
        group, inner = parse_shared(topic_filter)
        node = self._root if group is None else self._shared_root
        levels = inner.split("/")
        is_hash = levels[-1] == "#"
        if is_hash:
            levels.pop()
        for level in levels:
            if level == "+":
                if node.plus is None:
                    node.plus = _Node()
                node = node.plus
            else:
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node()
                node = child
        if group is None:
            if is_hash:
                node.hash_subs = members
            else:
                node.subs = members
            return
        self._shared_filters += 1
        share = self._groups[topic_filter] = ShareGroup(group, inner, members)
        if is_hash:
            if node.hash_subs is None:
                node.hash_subs = {}
            node.hash_subs[group] = share
        else:
            if node.subs is None:
                node.subs = {}
            node.subs[group] = share

    def _unlink(self, topic_filter: str) -> None:
        """Take an emptied filter off the trie and prune the nodes left empty."""
        group, inner = parse_shared(topic_filter)
        node = self._root if group is None else self._shared_root
        levels = inner.split("/")
        is_hash = levels[-1] == "#"
        if is_hash:
            levels.pop()
        path = []
        for level in levels:
            path.append((node, level))
            node = node.plus if level == "+" else node.children[level]
        if group is None:
            if is_hash:
                node.hash_subs = None
            else:
                node.subs = None
        else:
            self._shared_filters -= 1
            del self._groups[topic_filter]
            by_group = node.hash_subs if is_hash else node.subs
            del by_group[group]
            if not by_group:
                if is_hash:
                    node.hash_subs = None
                else:
                    node.subs = None
        _prune(node, path)


def _prune(node, path: list) -> None:
    """Remove ``node`` and its ancestors (``path`` of (parent, level)) while they are empty."""
    while path and node.is_empty():
        parent, level = path.pop()
        if parent.children.get(level) is node:
            del parent.children[level]
        else:
            parent.plus = None
        node = parent


_MISSING = object()


class _RetainedNode:
    """One level of the retained trie; ``value`` is _MISSING if no message is stored here."""

    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _RetainedNode] = {}
        self.value = _MISSING

    def is_empty(self) -> bool:
        return not self.children and self.value is _MISSING


class RetainedTree:
    """Retained messages keyed by topic name, searchable by filter.

    A dict answers exact lookups; a trie by level answers wildcard filters
    without scanning topics outside the filter's fixed leading levels.
    """

    def __init__(self) -> None:
        self._root = _RetainedNode()
        self._values: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> Iterator[tuple[str, object]]:
        """(topic, value) pairs (a snapshot, safe to change the tree while iterating)."""
        return iter(list(self._values.items()))

    def get(self, topic: str):
        """The value retained on ``topic``, or None."""
        return self._values.get(topic)

    def set(self, topic: str, value) -> None:
        """Store ``value`` as ``topic``'s retained message, replacing any old one [MQTT-3.3.1-5]."""
        if topic not in self._values:
            validate_topic(topic)
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _RetainedNode()
            node = child
        node.value = value
        self._values[topic] = value

    def remove(self, topic: str) -> bool:
        """Forget ``topic``'s retained message; True if there was one [MQTT-3.3.1-10]."""
        if self._values.pop(topic, _MISSING) is _MISSING:
            return False
        node = self._root
        path = []
        for level in topic.split("/"):
            path.append((node, level))
            node = node.children[level]
        node.value = _MISSING
        _prune(node, path)
        return True

    def match(self, topic_filter: str) -> list:
        """Every stored value whose topic ``topic_filter`` matches [MQTT-3.3.1-6].

        A shared subscription's filter is matched by its inner filter;
        whether shared subscriptions receive retained messages is the hub's call.
        """
        topic_filter = parse_shared(topic_filter)[1]
        if "+" not in topic_filter and "#" not in topic_filter:
            value = self._values.get(topic_filter, _MISSING)
            return [] if value is _MISSING else [value]
        levels = topic_filter.split("/")
        count = len(levels)
        found: list = []
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth == count:
                if node.value is not _MISSING:
                    found.append(node.value)
                continue
            level = levels[depth]
            children = node.children
            if level == "#":
                # The parent level itself, then everything below [MQTT-4.7.1-2].
                if node.value is not _MISSING and depth:
                    found.append(node.value)
                _collect_subtree(children, depth == 0, found)
            elif level == "+":
                for key, child in children.items():
                    if depth == 0 and key[:1] == "$":  # [MQTT-4.7.2-1]
                        continue
                    stack.append((child, depth + 1))
            else:
                child = children.get(level)
                if child is not None:
                    stack.append((child, depth + 1))
        return found


def _collect_subtree(children: dict, skip_dollar: bool, found: list) -> None:
    """Append every value stored under ``children``, skipping "$" keys at the top if asked."""
    stack = [child for key, child in children.items()
             if not (skip_dollar and key[:1] == "$")]
    while stack:
        node = stack.pop()
        if node.value is not _MISSING:
            found.append(node.value)
        stack.extend(node.children.values())
