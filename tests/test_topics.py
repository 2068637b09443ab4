"""Topic validation, the reference matcher, and the trees that must agree with it."""

import pytest
from hypothesis import given, settings, strategies as st

from reactorapp.hub.topics import (
    InvalidTopic,
    RetainedTree,
    TopicTree,
    is_valid_filter,
    is_valid_topic,
    parse_shared,
    topic_matches,
    validate_filter,
    validate_topic,
)


# --- validation -------------------------------------------------------------

VALID_TOPICS = [
    ("a", "[§4.7.1.1] one level"),
    ("a/b", "[§4.7.1.1] two levels"),
    ("/a/b", "[§4.7.1.1] leading empty level"),
    ("a/b/", "[§4.7.1.1] trailing empty level"),
    ("a//b", "[§4.7.1.1] empty middle level"),
    ("/", "[§4.7.1.1] two empty levels"),
    ("a b/c d", "[§4.7.1.1] spaces are allowed"),
    ("$SYS/broker", "[§4.7.2] $-topics are topic names too"),
    ("caf\u00e9/\u2603", "[MQTT-4.7.3-4] non-ASCII UTF-8"),
    ("x" * 65535, "[MQTT-4.7.3-3] exactly 65535 bytes"),
    ("\u00e9" * 32767, "[MQTT-4.7.3-3] 65534 bytes of two-byte characters"),
]

INVALID_TOPICS = [
    ("", "[MQTT-4.7.3-1] empty"),
    ("a\x00b", "[MQTT-4.7.3-2] U+0000"),
    ("x" * 65536, "[MQTT-4.7.3-3] 65536 bytes"),
    ("\u00e9" * 32768, "[MQTT-4.7.3-3] 65536 bytes of two-byte characters"),
    ("a/\ud800", "[MQTT-1.5.3-1] lone surrogate is not UTF-8"),
    ("a/+", "[MQTT-4.7.1-1] '+' in a topic name"),
    ("a/#", "[MQTT-4.7.1-1] '#' in a topic name"),
    ("a+b", "[MQTT-4.7.1-1] '+' inside a level"),
    ("#", "[MQTT-4.7.1-1] '#' alone"),
    (None, "not a string"),
    (b"a/b", "bytes, not str"),
]

VALID_FILTERS = [
    ("a", "[§4.7.1.1] plain"),
    ("a//b/", "[§4.7.1.1] empty levels"),
    ("#", "[MQTT-4.7.1-2] '#' alone"),
    ("a/#", "[MQTT-4.7.1-2] '#' after '/' and last"),
    ("/#", "[MQTT-4.7.1-2] '#' after an empty level"),
    ("+", "[MQTT-4.7.1-3] '+' alone"),
    ("+/x", "[MQTT-4.7.1-3] '+' first"),
    ("a/+/b", "[MQTT-4.7.1-3] '+' in the middle"),
    ("+/+", "[MQTT-4.7.1-3] two '+'"),
    ("/+", "[MQTT-4.7.1-3] '+' after an empty level"),
    ("+/#", "[MQTT-4.7.1-2] [MQTT-4.7.1-3] both"),
    ("$SYS/#", "[MQTT-4.7.2-1] $-filter"),
    ("x" * 65535, "[MQTT-4.7.3-3] exactly 65535 bytes"),
    ("$share/g/a/b", "MQTT 5 shared subscription"),
    ("$share/g/#", "MQTT 5 shared subscription on '#'"),
    ("$share/g/+/x", "MQTT 5 shared subscription on '+'"),
    ("$share/g$1/a", "share name with other punctuation"),
    ("$share", "no '/', so just a $-filter"),
    ("$shared/g", "not the $share/ prefix"),
]

INVALID_FILTERS = [
    ("", "[MQTT-4.7.3-1] empty"),
    ("a/\x00", "[MQTT-4.7.3-2] U+0000"),
    ("x" * 65536, "[MQTT-4.7.3-3] 65536 bytes"),
    ("a/\udfff", "[MQTT-1.5.3-1] lone surrogate"),
    ("a#", "[MQTT-4.7.1-2] '#' inside a level"),
    ("#a", "[MQTT-4.7.1-2] '#' followed by text"),
    ("a/#/b", "[MQTT-4.7.1-2] '#' not last"),
    ("#/", "[MQTT-4.7.1-2] '#' before an empty level"),
    ("##", "[MQTT-4.7.1-2] two '#'"),
    ("a+", "[MQTT-4.7.1-3] '+' inside a level"),
    ("+a/b", "[MQTT-4.7.1-3] '+' followed by text"),
    ("a/b+", "[MQTT-4.7.1-3] '+' after text"),
    ("++", "[MQTT-4.7.1-3] two '+' in one level"),
    ("$share/", "MQTT 5 shared: no share name"),
    ("$share//a", "MQTT 5 shared: empty share name"),
    ("$share/g", "MQTT 5 shared: no filter"),
    ("$share/g/", "MQTT 5 shared: empty filter"),
    ("$share/+/a", "MQTT 5 shared: '+' in share name"),
    ("$share/#/a", "MQTT 5 shared: '#' in share name"),
    ("$share/g+/a", "MQTT 5 shared: '+' inside share name"),
    ("$share/g/a/#/b", "MQTT 5 shared: invalid inner filter"),
    ("$share/g/a+", "MQTT 5 shared: invalid inner '+'"),
    (None, "not a string"),
]


def _ids(table):
    return [why for _, why in table]


@pytest.mark.parametrize("topic, why", VALID_TOPICS, ids=_ids(VALID_TOPICS))
def test_valid_topic_names(topic, why):
    """[MQTT-4.7.3-1] [MQTT-4.7.3-2] [MQTT-4.7.3-3] [MQTT-4.7.1-1] [§4.7.1.1] accepted names."""
    validate_topic(topic)
    assert is_valid_topic(topic)


@pytest.mark.parametrize("topic, why", INVALID_TOPICS, ids=_ids(INVALID_TOPICS))
def test_invalid_topic_names(topic, why):
    """[MQTT-4.7.3-1] [MQTT-4.7.3-2] [MQTT-4.7.3-3] [MQTT-4.7.1-1] rejected names, with a sentence."""
    with pytest.raises(InvalidTopic) as caught:
        validate_topic(topic)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert message[:1].isupper() and message.endswith(".")
    assert not is_valid_topic(topic)


@pytest.mark.parametrize("topic_filter, why", VALID_FILTERS, ids=_ids(VALID_FILTERS))
def test_valid_filters(topic_filter, why):
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1..3] accepted filters."""
    validate_filter(topic_filter)
    assert is_valid_filter(topic_filter)


@pytest.mark.parametrize("topic_filter, why", INVALID_FILTERS, ids=_ids(INVALID_FILTERS))
def test_invalid_filters(topic_filter, why):
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1..3] rejected filters, with a sentence."""
    with pytest.raises(InvalidTopic) as caught:
        validate_filter(topic_filter)
    message = str(caught.value)
    assert message[:1].isupper() and message.endswith(".")
    assert not is_valid_filter(topic_filter)


@pytest.mark.parametrize("topic_filter, expected", [
    ("$share/group/a/b", ("group", "a/b")),
    ("$share/g/#", ("g", "#")),
    ("$share/g//", ("g", "/")),
    ("a/b", (None, "a/b")),
    ("$SYS/#", (None, "$SYS/#")),
    ("$share/g", (None, "$share/g")),
    ("$share//a", (None, "$share//a")),
])
def test_parse_shared(topic_filter, expected):
    """MQTT 5 "$share/{group}/{filter}" splits into group and inner filter; others pass through."""
    assert parse_shared(topic_filter) == expected


# --- the reference matcher ---------------------------------------------------

MATCHES = [
    # [§4.7.1.1] [MQTT-4.7.3-4] levels, empty levels, exact comparison
    ("a/b", "a/b", True),
    ("a/b", "/a/b", False),
    ("a/b", "a/b/", False),
    ("a/b", "a//b", False),
    ("/a/b", "/a/b", True),
    ("a//b", "a//b", True),
    ("a/b", "A/b", False),
    ("a b", "a b", True),
    ("a b", "a  b", False),
    ("caf\u00e9", "cafe\u0301", False),  # no Unicode normalisation
    ("a", "a/b", False),
    ("a/b", "a", False),
    # [MQTT-4.7.1-3] '+' is exactly one level, possibly empty
    ("a/+", "a/b", True),
    ("a/+", "a/", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("+", "a", True),
    ("+", "/a", False),
    ("+/+", "/a", True),
    ("/+", "/a", True),
    ("+", "", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),
    ("a/+/c", "a/b/d", False),
    # [MQTT-4.7.1-2] '#' is the parent and any number of levels
    ("a/#", "a", True),
    ("a/#", "a/", True),
    ("a/#", "a/b", True),
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("#", "a", True),
    ("#", "/a/b", True),
    ("#", "/", True),
    ("/#", "/a", True),
    ("/#", "a", False),
    ("+/#", "a", True),
    ("+/#", "a/b/c", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
    # [MQTT-4.7.2-1] wildcard-first filters never see $-topics
    ("#", "$SYS/x", False),
    ("#", "$SYS", False),
    ("+/x", "$SYS/x", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/x", "$SYS/x", True),
    ("#", "a/$SYS", True),
    ("a/+", "a/$x", True),
    # MQTT 5 shared subscriptions match what their inner filter matches
    ("$share/g/a/+", "a/b", True),
    ("$share/g/#", "a/b", True),
    ("$share/g/#", "$SYS/x", False),
    ("$share/g/a", "$share/g/a", False),
]


@pytest.mark.parametrize("topic_filter, topic, expected", MATCHES)
def test_topic_matches(topic_filter, topic, expected):
    """[§4.7.1.1] [MQTT-4.7.3-4] [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.2-1] reference matcher."""
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("topic_filter, topic, expected", MATCHES)
def test_topic_tree_table(topic_filter, topic, expected):
    """[§4.7.1.1] [MQTT-4.7.3-4] [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.2-1] TopicTree, same table."""
    tree = TopicTree()
    tree.add(topic_filter, "s", 1)
    assert tree.match(topic) == ([("s", 1)] if expected else [])


@pytest.mark.parametrize("topic_filter, topic, expected", [
    case for case in MATCHES if is_valid_topic(case[1])
])
def test_retained_tree_table(topic_filter, topic, expected):
    """[MQTT-3.3.1-6] [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.2-1] RetainedTree, same table."""
    tree = RetainedTree()
    tree.set(topic, "m")
    assert tree.match(topic_filter) == (["m"] if expected else [])


# --- TopicTree --------------------------------------------------------------

def test_add_replace_remove():
    """[MQTT-3.8.4-3] an identical filter replaces the QoS instead of adding a second subscription."""
    tree = TopicTree()
    assert tree.add("a/b", "s", 0) is True
    assert tree.add("a/b", "s", 2) is False
    assert tree.add("a/b", "s", 2) is False
    assert len(tree) == 1
    assert tree.match("a/b") == [("s", 2)]
    assert tree.remove("a/b", "s") is True
    assert tree.remove("a/b", "s") is False
    assert tree.remove("never/subscribed", "s") is False
    assert len(tree) == 0
    assert tree.match("a/b") == []


def test_overlapping_subscriptions_delivered_once_at_highest_qos():
    """[MQTT-3.3.5-1] one entry per subscriber, at the highest QoS of its matching filters."""
    tree = TopicTree()
    tree.add("a/b", "s", 0)
    tree.add("a/+", "s", 2)
    tree.add("#", "s", 1)
    tree.add("a/#", "t", 1)
    tree.add("+/b", "t", 0)
    assert sorted(tree.match("a/b")) == [("s", 2), ("t", 1)]
    assert sorted(tree.match("a/c")) == [("s", 2), ("t", 1)]
    assert sorted(tree.match("x/b")) == [("s", 1), ("t", 0)]
    assert len(tree) == 5


def test_many_subscribers_on_one_filter():
    """[MQTT-3.3.5-1] each subscriber of a filter gets its own QoS."""
    tree = TopicTree()
    for i in range(100):
        tree.add("sensors/+/temp", i, i % 3)
    assert sorted(tree.match("sensors/k/temp")) == [(i, i % 3) for i in range(100)]
    assert len(tree) == 100


def test_add_rejects_invalid_filters_and_qos():
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] an invalid filter never reaches the tree."""
    tree = TopicTree()
    with pytest.raises(InvalidTopic):
        tree.add("a/#/b", "s", 0)
    with pytest.raises(InvalidTopic):
        tree.add("", "s", 0)
    with pytest.raises(ValueError):
        tree.add("a", "s", 3)
    assert len(tree) == 0
    assert tree.remove("a/#/b", "s") is False


def test_remove_all():
    """A session going away drops all its subscriptions and leaves the others alone."""
    tree = TopicTree()
    mine = ["a", "a/+", "#", "$share/g/a/#"]
    for topic_filter in mine:
        tree.add(topic_filter, "s", 1)
    tree.add("a", "t", 0)
    assert len(tree) == 5
    for topic_filter in mine:
        assert tree.remove(topic_filter, "nobody") is False
    subscriptions = dict.fromkeys(mine, 1)
    tree.remove_all("s", subscriptions)  # the session's own dict, changed meanwhile
    assert len(tree) == 1
    assert tree.match("a") == [("t", 0)]
    assert tree.match("b") == []
    assert tree.match("a/b") == []


def test_empty_nodes_are_pruned():
    """Removing every subscription leaves an empty trie, so memory follows the live filters."""
    tree = TopicTree()
    filters = ["a/b/c", "a/+/c", "a/#", "+/+/+", "#", "/", "a//", "$share/g/a/b", "$share/h/#"]
    for topic_filter in filters:
        tree.add(topic_filter, "s", 0)
        tree.add(topic_filter, "t", 0)
    for topic_filter in filters:
        tree.remove(topic_filter, "s")
    assert tree._root.children  # "t" still holds them
    for topic_filter in filters:
        tree.remove(topic_filter, "t")
    for root in (tree._root, tree._shared_root):
        assert root.children == {}
        assert root.plus is None
        assert not root.subs and not root.hash_subs
    assert tree._filters == {}
    assert tree._shared_filters == 0


def test_pruning_keeps_nodes_still_in_use():
    """Pruning stops at the first node that still holds a filter or a child."""
    tree = TopicTree()
    tree.add("a/b/c", "s", 0)
    tree.add("a", "s", 1)
    tree.add("a/+/c/#", "s", 2)
    tree.remove("a/b/c", "s")
    assert list(tree._root.children) == ["a"]
    assert list(tree._root.children["a"].children) == []
    assert tree.match("a") == [("s", 1)]
    assert tree.match("a/x/c") == [("s", 2)]
    tree.remove("a/+/c/#", "s")
    assert tree._root.children["a"].plus is None
    assert tree.match("a") == [("s", 1)]


def test_shared_subscription_is_separate_from_plain_one():
    """MQTT 5 section 4.8.2: "$share/g/f" and "f" are two subscriptions of one
    subscriber, and a message matching both is a copy for each; groups with
    the same name on other filters are other groups."""
    tree = TopicTree()
    assert tree.add("a/b", "s", 0) is True
    assert tree.add("$share/g/a/b", "s", 2) is True
    assert tree.add("$share/h/a/+", "t", 1) is True
    assert tree.add("$share/h/a/#", "u", 1) is True
    assert len(tree) == 4
    assert sorted(tree.match("a/b")) == [("s", 0), ("s", 2), ("t", 1), ("u", 1)]
    assert sorted(tree.match("a")) == [("u", 1)]
    assert tree.remove("$share/g/a/b", "s") is True
    assert sorted(tree.match("a/b")) == [("s", 0), ("t", 1), ("u", 1)]
    assert tree.match("$share/g/a/b") == []


def test_shared_filter_keeps_dollar_rule():
    """[MQTT-4.7.2-1] applies to the inner filter of a shared subscription."""
    tree = TopicTree()
    tree.add("$share/g/#", "s", 0)
    tree.add("$share/g/$SYS/#", "t", 0)
    assert tree.match("$SYS/load") == [("t", 0)]
    assert tree.match("load") == [("s", 0)]


def test_match_cache_is_used_and_invalidated():
    """A repeated topic is answered from the cache; any change to the tree is seen at once."""
    tree = TopicTree()
    tree.add("a/+", "s", 0)
    first = tree.match("a/b")
    assert tree.match("a/b") is first
    tree.add("a/+", "s", 0)  # no change: the cache survives
    assert tree.match("a/b") is first
    tree.add("a/+", "s", 1)
    assert tree.match("a/b") == [("s", 1)]
    tree.add("#", "t", 2)
    assert sorted(tree.match("a/b")) == [("s", 1), ("t", 2)]
    tree.remove("a/+", "s")
    assert tree.match("a/b") == [("t", 2)]
    tree.remove("never", "s")
    assert tree.match("a/b") == [("t", 2)]


def test_match_cache_is_bounded():
    """Memory stays bounded: the cache is dropped past its topic and subscriber limits."""
    tree = TopicTree()
    tree.cache_max_topics = 50
    tree.add("#", "s", 0)
    for i in range(500):
        assert tree.match(f"t/{i}") == [("s", 0)]
        assert len(tree._cache) <= 50
    tree.cache_max_pairs = 30
    for i in range(10):
        tree.add("#", f"many{i}", 0)
    for i in range(100):
        assert len(tree.match(f"u/{i}")) == 11
        assert tree._cache_pairs <= 30
    long_topic = "x" * (tree.cache_max_topic_length + 1)
    assert len(tree.match(long_topic)) == 11
    assert long_topic not in tree._cache


def test_deep_topics_do_not_recurse():
    """A topic of 30,000 levels (within 65535 bytes) matches without hitting the recursion limit."""
    topic = "/".join(["a"] * 30000)
    tree = TopicTree()
    tree.add(topic, "exact", 0)
    tree.add("a/#", "hash", 1)
    tree.add("+/" * 29999 + "+", "plus", 2)
    assert sorted(tree.match(topic)) == [("exact", 0), ("hash", 1), ("plus", 2)]
    tree.remove(topic, "exact")
    retained = RetainedTree()
    retained.set(topic, "deep")
    assert retained.match("#") == ["deep"]
    assert retained.match("+/" * 29999 + "+") == ["deep"]
    assert retained.remove(topic) is True
    assert retained._root.children == {}


# --- RetainedTree -----------------------------------------------------------

def test_retained_set_get_replace_remove():
    """[MQTT-3.3.1-5] the new retained message replaces the old; [MQTT-3.3.1-10] removal."""
    tree = RetainedTree()
    tree.set("a/b", 1)
    tree.set("a/b", 2)
    assert len(tree) == 1
    assert tree.get("a/b") == 2
    assert tree.get("a") is None
    assert tree.match("a/b") == [2]
    assert tree.remove("a/b") is True
    assert tree.remove("a/b") is False
    assert tree.get("a/b") is None
    assert len(tree) == 0
    assert tree.match("a/#") == []
    assert tree._root.children == {}


def test_retained_set_rejects_invalid_topic_names():
    """[MQTT-4.7.1-1] [MQTT-4.7.3-1] only topic names can hold retained messages."""
    tree = RetainedTree()
    for bad in ("a/+", "#", "", "a\x00"):
        with pytest.raises(InvalidTopic):
            tree.set(bad, "m")
    assert len(tree) == 0


def test_retained_match_wildcards_and_dollar():
    """[MQTT-3.3.1-6] wildcard filters find every matching topic; [MQTT-4.7.2-1] not $-topics."""
    tree = RetainedTree()
    topics = ["a", "a/b", "a/b/c", "a/", "/a", "b", "$SYS/x", "$SYS", "a/$x"]
    for topic in topics:
        tree.set(topic, topic)
    assert sorted(tree.match("#")) == sorted(t for t in topics if not t.startswith("$"))
    assert sorted(tree.match("a/#")) == ["a", "a/", "a/$x", "a/b", "a/b/c"]
    assert sorted(tree.match("a/+")) == ["a/", "a/$x", "a/b"]
    assert sorted(tree.match("+")) == ["a", "b"]
    assert sorted(tree.match("$SYS/#")) == ["$SYS", "$SYS/x"]
    assert sorted(tree.match("+/#")) == sorted(t for t in topics if not t.startswith("$"))
    assert tree.match("$share/g/a/+/c") == ["a/b/c"]
    assert sorted(tree.items()) == sorted((t, t) for t in topics)


def test_retained_match_walks_only_the_fixed_prefix():
    """A filter with literal leading levels never visits topics outside that prefix."""
    tree = RetainedTree()
    for i in range(200):
        tree.set(f"other/{i}/x", i)
    tree.set("mine/1/x", "one")
    tree.set("mine/2/y", "two")
    visited = []
    original = tree._root.children["other"]

    class Spy:
        """Stands in for the "other" subtree and records any visit."""

        @property
        def children(self):
            visited.append("children")
            return original.children

        @property
        def value(self):
            visited.append("value")
            return original.value

    tree._root.children["other"] = Spy()
    assert tree.match("mine/+/x") == ["one"]
    assert sorted(tree.match("mine/#")) == ["one", "two"]
    assert visited == []


def test_retained_items_is_a_snapshot():
    """items() may be consumed while messages are being retained or removed."""
    tree = RetainedTree()
    for i in range(10):
        tree.set(f"t/{i}", i)
    for topic, _ in tree.items():
        tree.remove(topic)
        tree.set(topic + "/new", 0)
    assert len(tree) == 10


# --- property tests: the fast trees agree with the reference -----------------

LEVELS = ["a", "b", "", "$SYS", "$x"]
FILTER_LEVELS = LEVELS + ["+", "#"]

topics = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join)
raw_filters = st.lists(st.sampled_from(FILTER_LEVELS), min_size=1, max_size=4).map("/".join)
filters = st.one_of(
    raw_filters,
    st.tuples(st.sampled_from(["g", "h"]), raw_filters).map(lambda p: f"$share/{p[0]}/{p[1]}"),
).filter(is_valid_filter)
subscriptions = st.lists(
    st.tuples(filters, st.sampled_from(["s1", "s2", "s3"]), st.integers(0, 2)), max_size=12,
)


def _expected(subs: dict, topic: str) -> tuple[list, dict]:
    """Reference answer: each plain subscriber once, at its highest QoS
    [MQTT-3.3.5-1]; and each matching shared subscription with its members."""
    best: dict = {}
    groups: dict = {}
    for (topic_filter, subscriber), qos in subs.items():
        if not topic_matches(topic_filter, topic):
            continue
        if topic_filter.startswith("$share/"):
            groups.setdefault(topic_filter, {})[subscriber] = qos
        elif qos > best.get(subscriber, -1):
            best[subscriber] = qos
    return sorted(best.items()), groups


def _found(tree: TopicTree, topic: str) -> tuple[list, dict]:
    plain, groups = tree.lookup(topic)
    chosen = tree.match(topic)[len(plain):]
    assert len(chosen) == len(groups)  # one member of each group
    for group, (member, qos) in zip(groups, chosen):
        assert group.members[member] == qos
    return sorted(plain), {group.share_filter: dict(group.members) for group in groups}


@settings(max_examples=300, deadline=None)
@given(subscriptions, st.lists(topics, min_size=1, max_size=8))
def test_topic_tree_agrees_with_reference(subs, topic_list):
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.2-1] [MQTT-3.3.5-1] TopicTree.lookup == topic_matches,
    and match takes one member of each matching shared subscription."""
    tree = TopicTree()
    reference: dict = {}
    for topic_filter, subscriber, qos in subs:
        is_new = (topic_filter, subscriber) not in reference
        assert tree.add(topic_filter, subscriber, qos) is is_new
        reference[(topic_filter, subscriber)] = qos
    assert len(tree) == len(reference)
    for topic in topic_list:
        assert _found(tree, topic) == _expected(reference, topic)
        assert _found(tree, topic) == _expected(reference, topic)  # from the cache


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), filters, st.sampled_from(["s1", "s2"]), st.integers(0, 2)),
        max_size=25,
    ),
    st.lists(topics, min_size=1, max_size=5),
)
def test_topic_tree_cache_consistent_under_changes(operations, topic_list):
    """The cached answers follow every add and remove; removing everything prunes the trie."""
    tree = TopicTree()
    reference: dict = {}
    for adding, topic_filter, subscriber, qos in operations:
        if adding:
            tree.add(topic_filter, subscriber, qos)
            reference[(topic_filter, subscriber)] = qos
        else:
            existed = reference.pop((topic_filter, subscriber), None) is not None
            assert tree.remove(topic_filter, subscriber) is existed
        assert len(tree) == len(reference)
        for topic in topic_list:
            assert _found(tree, topic) == _expected(reference, topic)
    for topic_filter, subscriber in list(reference):
        assert tree.remove(topic_filter, subscriber)
    assert tree._root.is_empty() and tree._shared_root.is_empty()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), topics.filter(is_valid_topic), st.integers(0, 9)), max_size=20),
    st.lists(filters, min_size=1, max_size=8),
)
def test_retained_tree_agrees_with_reference(operations, filter_list):
    """[MQTT-3.3.1-6] [MQTT-4.7.2-1] RetainedTree.match == filtering stored topics with topic_matches."""
    tree = RetainedTree()
    reference: dict = {}
    for storing, topic, value in operations:
        if storing:
            tree.set(topic, (topic, value))
            reference[topic] = (topic, value)
        else:
            assert tree.remove(topic) is (reference.pop(topic, None) is not None)
    assert len(tree) == len(reference)
    assert sorted(tree.items()) == sorted(reference.items())
    for topic, value in reference.items():
        assert tree.get(topic) == value
    for topic_filter in filter_list:
        expected = sorted(v for t, v in reference.items() if topic_matches(topic_filter, t))
        assert sorted(tree.match(topic_filter)) == expected
    for topic in list(reference):
        tree.remove(topic)
    assert tree._root.is_empty()


def test_the_codec_and_the_hub_share_the_topic_name_rule():
    """One rule for what a topic name is: what the codec refuses in a
    PUBLISH, the hub refuses from any front end, and the other way round."""
    import pytest

    from reactorapp.hub.topics import InvalidTopic, validate_topic
    from reactorapp.mqtt.codec import MalformedPacket, ProtocolError, _check_topic_name

    for topic in ["a/b", "", "a/+", "#", "a/#/b", "$SYS/x", "x\x00y", "  ", "é/ü"]:
        try:
            validate_topic(topic)
            hub_refuses = False
        except InvalidTopic:
            hub_refuses = True
        try:
            _check_topic_name(topic, "topic")
            codec_refuses = "\x00" in topic  # the codec reads U+0000 as malformed
        except (ProtocolError, MalformedPacket):
            codec_refuses = True
        assert hub_refuses == codec_refuses, topic
    with pytest.raises(ProtocolError, match="contains a wildcard"):
        _check_topic_name("a/+", "PUBLISH Topic Name")
