"""ACL files: parsing, matching, deny rules, patterns and the cache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from reactorapp.auth.acl import ACL, ACLAuthorizer, ACLError, PatternSet, read_acl
from reactorapp.auth.interfaces import IAuthorizer, Identity
from reactorapp.hub.topics import is_valid_filter, topic_matches

ALICE = Identity("alice", "alice-phone")
ANON = Identity(None, "x")

ACL_TEXT = """
# anonymous clients
topic read public/#

user alice
topic readwrite home/#
topic deny home/secrets/#
topic write outbox

user bob
topic read #
topic deny $SYS/#

pattern write devices/%c/#
pattern read users/%u/inbox
"""


@pytest.fixture
def acl():
    return ACLAuthorizer(ACL.parse(ACL_TEXT))


def test_provides_the_interface(acl):
    verifyObject(IAuthorizer, acl)


def test_user_rules(acl):
    assert acl.can_publish(ALICE, "home/kitchen/light")
    assert acl.can_read(ALICE, "home/kitchen/light")
    assert acl.can_publish(ALICE, "outbox") and not acl.can_read(ALICE, "outbox")
    assert not acl.can_publish(ALICE, "public/news")
    assert not acl.can_read(ALICE, "other")


def test_deny_wins(acl):
    assert not acl.can_read(ALICE, "home/secrets/safe")
    assert not acl.can_publish(ALICE, "home/secrets")  # "#" matches its parent
    assert acl.can_read(ALICE, "home/secretsx")


def test_anonymous_rules(acl):
    assert acl.can_read(ANON, "public/a/b")
    assert not acl.can_publish(ANON, "public/a/b")
    assert not acl.can_read(ANON, "home/x")


def test_unlisted_user_has_only_patterns(acl):
    carol = Identity("carol", "c7")
    assert not acl.can_read(carol, "public/x")
    assert acl.can_publish(carol, "devices/c7/temp")
    assert not acl.can_publish(carol, "devices/c8/temp")
    assert acl.can_read(carol, "users/carol/inbox")
    assert not acl.can_read(carol, "users/alice/inbox")


def test_patterns_skip_unsafe_substitutions(acl):
    """A client id with + # or / would widen a pattern: the rule is skipped."""
    for cid in ["+", "#", "c7/x", ""]:
        assert not acl.can_publish(Identity("carol", cid), f"devices/{cid}/t")
    assert not acl.can_publish(Identity("carol", "+"), "devices/c7/t")
    assert not acl.can_read(Identity("a/b", "c"), "users/a/b/inbox")
    assert not acl.can_read(ANON, "users//inbox")  # %u for an anonymous client


def test_dollar_topics_need_their_own_rule(acl):
    bob = Identity("bob", "b")
    assert acl.can_read(bob, "anything/at/all")
    assert not acl.can_read(bob, "$SYS/broker/uptime")  # "#" never matches "$..."
    assert not acl.can_subscribe(bob, "$SYS/#")
    open_acl = ACLAuthorizer(ACL.parse("user bob\ntopic read $SYS/#\n"))
    assert open_acl.can_read(bob, "$SYS/broker/uptime")
    assert open_acl.can_subscribe(bob, "$SYS/broker/+")


def test_subscribe_needs_a_rule_covering_the_filter(acl):
    assert acl.can_subscribe(ALICE, "home/#")
    assert acl.can_subscribe(ALICE, "home/+/light")
    assert acl.can_subscribe(ALICE, "home")
    assert not acl.can_subscribe(ALICE, "#")
    assert not acl.can_subscribe(ALICE, "+/kitchen")
    assert not acl.can_subscribe(ALICE, "outbox")  # write only
    assert not acl.can_subscribe(ALICE, "home/secrets/#")  # wholly denied
    assert acl.can_subscribe(ALICE, "$share/g/home/#")
    assert not acl.can_subscribe(ALICE, "$share/g/#")


def test_everything_but_a_subtree():
    """Subscribing to "#" is allowed; the denied subtree is filtered out."""
    acl = ACLAuthorizer(ACL.parse("user u\ntopic readwrite #\ntopic deny private/#\n"))
    u = Identity("u", "c")
    assert acl.can_subscribe(u, "#")
    assert acl.can_read(u, "a/b") and not acl.can_read(u, "private/x")
    assert not acl.can_subscribe(u, "private/+")


def test_default_access_is_readwrite():
    acl = ACLAuthorizer(ACL.parse("user u\ntopic a/b\ntopic read\n"))
    u = Identity("u", "c")
    assert acl.can_read(u, "a/b") and acl.can_publish(u, "a/b")
    assert acl.can_publish(u, "read")  # a lone word is the topic


@pytest.mark.parametrize("text", [
    "user\n", "topic\n", "topic read a/#/b\n", "frobnicate x\n", "topic deny a+\n",
    "topic read $share/g/x\n",
])
def test_bad_files(text):
    with pytest.raises(ACLError, match="line 1"):
        ACL.parse(text)


def test_read_acl_missing_file(tmp_path):
    with pytest.raises(ACLError, match="cannot read"):
        read_acl(str(tmp_path / "nope"))


def test_cache_is_bounded():
    acl = ACLAuthorizer(ACL.parse("user u\ntopic read t/#\n"), cache_size=8, clients=2)
    for i in range(100):
        assert acl.can_read(Identity("u", f"c{i}"), f"t/{i}")
        assert not acl.can_read(Identity("u", f"c{i}"), f"x/{i}")
    assert len(acl._cache) <= 8 and len(acl._compiled) <= 2


levels = st.sampled_from(["a", "b", "", "$x", "+", "#"])
topics = st.lists(st.sampled_from(["a", "b", "", "$x"]), min_size=1, max_size=4).map("/".join)
filters = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(is_valid_filter)


@given(st.lists(filters, max_size=4), topics)
def test_pattern_set_matches_like_the_reference(patterns, topic):
    assert PatternSet(patterns).matches(topic) == any(topic_matches(p, topic) for p in patterns)


@given(st.lists(filters, min_size=1, max_size=3), filters, st.lists(topics, max_size=20))
def test_covering_implies_matching(patterns, topic_filter, sample):
    """If the set covers a filter, each topic the filter matches is matched."""
    if PatternSet(patterns).covers(topic_filter):
        for topic in sample:
            if topic_matches(topic_filter, topic):
                assert PatternSet(patterns).matches(topic)


def test_the_acl_file_is_looked_at_where_check_sends_it(tmp_path):
    """Every 2 s the service calls `check`: the stat, the read and the
    parsing go to ``run`` (the reactor's thread pool), and the new rules
    are applied on the caller's thread when it answers; a broken file
    keeps the old rules."""
    from twisted.internet.defer import Deferred

    from reactorapp.auth.acl import ACLFile

    path = tmp_path / "acl"
    path.write_text("topic read a/#\n")
    authorizer = ACLAuthorizer(read_acl(str(path)))
    sent = []

    def run(function, *args):
        sent.append(Deferred())
        sent[-1].addCallback(lambda _: function(*args))
        return sent[-1]

    watch = ACLFile(str(path), authorizer, run)
    path.write_text("topic read b/#\n# a longer file: a new stamp\n")
    watch.check()
    anyone = Identity(None, "c")
    assert authorizer.can_read(anyone, "a/x")  # nothing applied yet
    sent[-1].callback(None)
    assert authorizer.can_read(anyone, "b/x") and not authorizer.can_read(anyone, "a/x")
    path.write_text("topic read a/#/b\n")
    watch.check()
    sent[-1].callback(None)
    assert authorizer.can_read(anyone, "b/x")


def test_trailing_comments_are_ignored():
    """Comments at the end of rule lines, as Mosquitto users write them."""
    acl = ACLAuthorizer(ACL.parse(
        "topic read public/#            # anonymous clients\n"
        "user alice\t# the owner\n"
        "topic readwrite home/#  #  her home\n"
        "topic read #  # everything\n"
        "topic deny home/secrets/# #\n"))
    alice = Identity("alice", "phone")
    assert acl.can_subscribe(ANON, "public/#") and not acl.can_publish(ANON, "public/x")
    assert acl.can_publish(alice, "home/kitchen") and acl.can_read(alice, "other")
    assert not acl.can_read(alice, "home/secrets/x")


def test_a_hash_inside_a_level_is_not_a_comment():
    with pytest.raises(ACLError, match="'a/b#' is not a valid topic filter"):
        ACL.parse("topic read a/b#\n")
