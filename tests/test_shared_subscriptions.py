"""Shared subscriptions (``$share/GROUP/FILTER``, MQTT 5 section 4.8.2),
driven in memory with 3.1.1 clients: one member of each group gets each
message, in turn, skipping members that cannot take it now; what a member
leaves unacknowledged goes to another one."""

from __future__ import annotations

from twisted.internet.task import Clock

from reactorapp.auth.passwd import set_password
from reactorapp.hub.hub import Hub
from reactorapp.hub.message import Message
from reactorapp.hub.shared import AWAY, BUSY, READY, REFUSED
from reactorapp.hub.topics import TopicTree
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.session import restore_sessions
from reactorapp.store.memory import MemoryStore
from reactorapp.testing import Inbox
from reactorapp.webhooks.rules import parse_rule
from tests.conn5_harness import Broker5, Client5
from tests.mqtt5_harness import connect5
from tests.mqtt_harness import Broker
from tests.test_http_auth import ACL_TEXT, basic, guarded, passwd  # noqa: F401 (a fixture)
from tests.test_store_session import ManualStore, StoredBroker
from tests.test_stream_sessions import Events
from tests.test_web_api import Web
from tests.test_web_sse import Stream, web  # noqa: F401 (a fixture)


def publishes(client) -> list:
    return [p for p in client.take() if p.type == "PUBLISH"]


def payloads(client) -> list[bytes]:
    return [p.payload for p in publishes(client)]


def consumers(broker, count=3, qos=0, topic_filter="$share/g/jobs/#", clean=True, first=0,
              **kw):
    clients = []
    for i in range(first, first + count):
        client = broker.connect(f"worker{i}", clean=clean, **kw)
        codes, _ = client.subscribe((topic_filter, qos))
        assert codes == [qos]
        clients.append(client)
    return clients


def ack_all(client, packets) -> None:
    for p in packets:
        if p.qos == 1:
            client.send(P.PubAck(p.packet_id))


# -- one member each, in turn ------------------------------------------------


def test_each_message_goes_to_one_member_in_turn():
    """MQTT 5 section 4.8.2: each message to one session of the group; here
    round robin over the connected members."""
    broker = Broker()
    workers = consumers(broker)
    pub = broker.connect("pub")
    for i in range(9):
        pub.publish("jobs/x", b"%d" % i)
    got = [payloads(w) for w in workers]
    assert got == [[b"0", b"3", b"6"], [b"1", b"4", b"7"], [b"2", b"5", b"8"]]


def test_the_match_cache_does_not_pin_the_member():
    """The topic tree caches the groups a topic matches, not the member
    chosen: the same topic, repeated, goes round; a member joining an
    existing group is seen without clearing the cache."""
    tree = TopicTree()
    tree.add("$share/g/a/+", "s1", 1)
    tree.add("$share/g/a/+", "s2", 1)
    tree.add("a/b", "plain", 0)
    first = tree.lookup("a/b")
    assert tree.lookup("a/b") is first  # cached
    assert [tree.match("a/b") for _ in range(3)] == [
        [("plain", 0), ("s1", 1)], [("plain", 0), ("s2", 1)], [("plain", 0), ("s1", 1)]]
    tree.add("$share/g/a/+", "s3", 2)
    assert tree.lookup("a/b") is first  # same groups: the cache stays
    chosen = [tree.match("a/b")[1] for _ in range(3)]
    assert sorted(chosen) == [("s1", 1), ("s2", 1), ("s3", 2)]
    tree.remove("$share/g/a/+", "s2")
    assert [tree.match("a/b")[1][0] for _ in range(4)].count("s2") == 0


def test_retained_messages_are_not_sent_for_a_shared_subscription():
    """MQTT 5 section 4.8.2: a session joining a shared subscription gets no
    retained messages (the retained messages of section 3.3.1.3 are for
    non-shared subscriptions); later messages are delivered as usual."""
    broker = Broker()
    pub = broker.connect("pub")
    pub.publish("jobs/r", b"kept", qos=1, retain=True)
    pub.take()
    sub = broker.connect("sub")
    codes, retained = sub.subscribe(("$share/g/jobs/#", 1))
    assert codes == [1] and retained == []
    pub.publish("jobs/r", b"live", qos=0)
    assert payloads(sub) == [b"live"]


def test_invalid_shared_filters_are_refused():
    """[MQTT-4.8.2-1] a share name at least one character long;
    [MQTT-4.8.2-2] without '/', '+' or '#', followed by '/' and a filter:
    otherwise SUBACK 0x80 and no subscription."""
    broker = Broker()
    sub = broker.connect("sub")
    bad = ["$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/#/a",
           "$share/g/a/#/b"]
    codes, _ = sub.subscribe(*[(f, 1) for f in bad])
    assert codes == [P.SUBACK_FAILURE] * len(bad)
    assert broker.hub.subscription_count == 0


def test_same_group_twice_replaces_two_groups_get_a_copy_each():
    """A client subscribing to the same group and filter again replaces its
    subscription (one copy, the new QoS) [MQTT-3.8.4-3]; in two groups on
    one filter, or shared and not, it gets a copy per subscription."""
    broker = Broker()
    sub = broker.connect("sub")
    sub.subscribe(("$share/g/t", 0))
    sub.subscribe(("$share/g/t", 1))
    assert broker.hub.subscription_count == 1
    pub = broker.connect("pub")
    pub.publish("t", b"once", qos=1)
    (only,) = publishes(sub)
    assert (only.payload, only.qos) == (b"once", 1)
    sub.send(P.PubAck(only.packet_id))
    sub.subscribe(("$share/h/t", 0), ("t", 0))
    pub.publish("t", b"thrice", qos=1)
    assert payloads(sub) == [b"thrice"] * 3


def test_each_member_gets_its_own_granted_qos():
    """[MQTT-4.8.2-3] the QoS a member was granted caps what it gets."""
    broker = Broker()
    low, high = consumers(broker, 2, qos=0, topic_filter="$share/g/t")
    high.subscribe(("$share/g/t", 2))
    pub = broker.connect("pub")
    pub.publish("t", b"a", qos=2)
    pub.publish("t", b"b", qos=2)
    assert [p.qos for p in publishes(low)] == [0]
    assert [p.qos for p in publishes(high)] == [2]


# -- skipping members that cannot take it now ----------------------------------


def test_a_congested_member_is_skipped_while_others_can_write():
    """A member whose connection is over its send buffer (flow.py) gets
    nothing while another member can write; when all are congested, they
    take turns again rather than lose the message."""
    broker = Broker()
    a, b, c = consumers(broker)
    a.protocol.pauseProducing()
    pub = broker.connect("pub")
    for i in range(4):
        pub.publish("jobs/x", b"%d" % i)
    assert (payloads(a), payloads(b), payloads(c)) == ([], [b"0", b"2"], [b"1", b"3"])
    b.protocol.pauseProducing()
    c.protocol.pauseProducing()
    for i in range(4, 7):
        pub.publish("jobs/x", b"%d" % i)
    got = payloads(a) + payloads(b) + payloads(c)
    assert sorted(got) == [b"4", b"5", b"6"]
    a.protocol.resumeProducing()
    assert a.protocol.session.share_state(0) == READY
    assert b.protocol.session.share_state(0) == BUSY


def test_a_member_slow_a_moment_ago_is_skipped():
    """Session.slow_until (a connection marked slow, flow.py) makes a member
    BUSY for a while even once it writes again."""
    broker = Broker()
    a, b = consumers(broker, 2)
    session = a.protocol.session
    session.slow_until = broker.clock.seconds() + 60
    pub = broker.connect("pub")
    for i in range(3):
        pub.publish("jobs/x", b"%d" % i)
    assert (payloads(a), payloads(b)) == ([], [b"0", b"1", b"2"])
    broker.clock.advance(61)
    pub.publish("jobs/x", b"3")
    pub.publish("jobs/x", b"4")
    assert len(payloads(a)) == 1


def test_a_member_with_a_full_window_is_skipped_for_qos1():
    """A member that has --max-inflight messages unacknowledged is BUSY for
    QoS 1/2: the next message goes to one that has room."""
    broker = Broker(max_inflight=1)
    a, b = consumers(broker, 2, qos=1)
    pub = broker.connect("pub")
    pub.publish("jobs/x", b"0", qos=1)
    first = publishes(a)
    assert [p.payload for p in first] == [b"0"]
    pub.publish("jobs/x", b"1", qos=1)
    pub.publish("jobs/x", b"2", qos=1)  # b's window is full too: a queue, in turn
    assert payloads(b) == [b"1"]
    ack_all(a, first)
    assert payloads(a) + payloads(b) == [b"2"]


def test_a_member_the_acl_hides_the_topic_from_is_passed_over():
    """A member's read ACL (Session.may_read) applies per message: a member
    that may not read the topic is passed over, not sent it, and the
    message is not lost for the group."""
    broker = Broker()
    a, b = consumers(broker, 2)
    a.protocol.session.may_read = lambda topic: not topic.endswith("secret")
    b.protocol.session.may_read = lambda topic: topic.endswith("secret")
    pub = broker.connect("pub")
    pub.publish("jobs/secret", b"s1")
    pub.publish("jobs/secret", b"s2")
    pub.publish("jobs/open", b"o")
    assert (payloads(a), payloads(b)) == ([b"o"], [b"s1", b"s2"])


def test_other_subscribers_share_groups_with_sessions():
    """Any hub subscriber can be a member (streams and webhook rules are);
    one that answers REFUSED is passed over."""
    hub = Hub(Clock())
    inbox, other = Inbox(), Inbox()
    hub.subscribe(inbox, "$share/g/t", 1)
    hub.subscribe(other, "$share/g/t", 1)
    for i in range(4):
        hub.publish(Message("t", b"%d" % i, 1))
    assert inbox.payloads == [b"0", b"2"] and other.payloads == [b"1", b"3"]

    class Refuses(Inbox):
        def deliver_shared(self, message, qos, share_filter):
            return REFUSED

    refuses = Refuses()
    hub.unsubscribe(inbox, "$share/g/t")
    hub.subscribe(refuses, "$share/g/t", 1)
    hub.publish(Message("t", b"x", 1))
    hub.publish(Message("t", b"y", 1))
    assert refuses.payloads == [] and other.payloads[-2:] == [b"x", b"y"]
    (group,) = hub.shared_groups()
    assert group.describe() == {"group": "g", "filter": "t", "members": 2,
                                "deliveries": 6, "handed_over": 0}


# -- what a member leaves unacknowledged ---------------------------------------


def test_unacknowledged_qos1_goes_to_another_member_when_a_session_ends():
    """MQTT 5 section 4.8.2: a QoS 1 message whose member's session ends
    before it was acknowledged goes to another member; so do the messages
    still queued for it. Acknowledged ones do not come back."""
    broker = Broker(max_inflight=2)
    (a,) = consumers(broker, 1, qos=1)
    pub = broker.connect("pub")
    for i in range(5):
        pub.publish("jobs/x", b"%d" % i, qos=1)
    sent = publishes(a)
    assert [p.payload for p in sent] == [b"0", b"1"]  # 2, 3, 4 queued for a
    a.send(P.PubAck(sent[0].packet_id))
    assert payloads(a) == [b"2"]
    (b,) = consumers(broker, 1, qos=1, first=1)
    a.drop()  # a clean session: it ends with its connection
    first = publishes(b)
    assert [p.payload for p in first] == [b"1", b"2"]  # b's window is 2 as well
    ack_all(b, first)
    assert payloads(b) == [b"3", b"4"]
    assert broker.hub.stats.shared_handed_over == 4
    (group,) = broker.hub.shared_groups()
    assert group.handed_over == 4 and list(group.members) == [b.protocol.session]
    assert broker.hub.get_session("worker0") is None


def test_qos2_already_sent_stays_with_its_member():
    """[MQTT-4.8.2-4] a QoS 2 message the member was being sent is completed
    with that member when it reconnects, [MQTT-4.8.2-5] and if its session
    ends first it goes to nobody else. A QoS 2 message only queued for it
    was never sent: another member gets it."""
    broker = Broker(max_inflight=1)
    a, b = consumers(broker, 2, qos=2, clean=False)
    b.protocol.pauseProducing()
    pub = broker.connect("pub")
    pub.publish("jobs/x", b"sent", qos=2)
    pub.publish("jobs/x", b"queued", qos=2)
    assert payloads(a) == [b"sent"]
    b.protocol.resumeProducing()
    a.drop()  # persistent: goes offline
    assert payloads(b) == [b"queued"]
    back = broker.connect("worker0", clean=False)
    (again,) = [p for p in back.take() if p.type == "PUBLISH"]
    assert (again.payload, again.dup) == (b"sent", True)


def test_offline_persistent_member_gets_nothing_while_others_are_online():
    """A persistent session that is offline takes no messages while another
    member is connected, and its unacknowledged QoS 1 messages go to the
    connected members at once."""
    broker = Broker()
    a, b = consumers(broker, 2, qos=1, clean=False)
    pub = broker.connect("pub")
    pub.publish("jobs/x", b"0", qos=1)
    pub.publish("jobs/x", b"1", qos=1)
    assert payloads(a) == [b"0"] and payloads(b) == [b"1"]
    a.drop()
    assert payloads(b) == [b"0"]  # handed over from a
    for i in range(2, 5):
        pub.publish("jobs/x", b"%d" % i, qos=1)
    assert payloads(b) == [b"2", b"3", b"4"]
    session = broker.hub.get_session("worker0")
    assert session.share_state(1) == AWAY
    assert not session.inflight and not session.queue


def queued_on_two_offline_members(broker) -> None:
    """Two persistent members go away, then 4 QoS 1 messages are published."""
    for member in consumers(broker, 2, qos=1, clean=False):
        member.drop()
    pub = broker.connect("pub")
    for i in range(4):
        pub.publish("jobs/x", b"%d" % i, qos=1)


def test_when_every_member_is_offline_they_queue_in_turn_and_the_first_back_takes_all():
    """With every member offline, each message is queued on the next member
    in turn, as for a persistent subscription; the first member to come
    back gets what the others hold."""
    broker = Broker()
    queued_on_two_offline_members(broker)
    hub = broker.hub
    assert len(hub.get_session("worker0").queue) + len(hub.get_session("worker1").queue) == 4
    assert len(hub.get_session("worker0").queue) == 2
    back = broker.connect("worker1", clean=False)
    got = [p.payload for p in back.take() if p.type == "PUBLISH"]
    assert sorted(got) == [b"0", b"1", b"2", b"3"]
    assert not hub.get_session("worker0").queue


def test_after_a_restart_the_first_member_back_still_takes_what_the_others_hold():
    """The store keeps which queued messages were taken for a shared
    subscription: after a restart the first member back gets them all,
    and the store forgets them for the others."""
    store = MemoryStore()
    queued_on_two_offline_members(Broker(store=store))
    broker = Broker(store=store)
    restore_sessions(broker.hub, store.load().sessions, broker.factory.settings)
    back = broker.connect("worker1", clean=False)
    got = [p.payload for p in back.take() if p.type == "PUBLISH"]
    assert sorted(got) == [b"0", b"1", b"2", b"3"]
    stored = {s.client_id: s.messages for s in store.load().sessions}
    assert stored["worker0"] == []
    assert {m.share for m in stored["worker1"]} == {"$share/g/jobs/#"}


def test_a_group_that_ends_drops_what_its_last_member_held():
    """MQTT 5 section 4.8.2: when no session uses a shared subscription any
    more, it ends, and messages not delivered are deleted."""
    broker = Broker(max_inflight=1)
    (a,) = consumers(broker, 1, qos=1)
    pub = broker.connect("pub")
    pub.publish("jobs/x", b"0", qos=1)
    pub.publish("jobs/x", b"1", qos=1)
    a.drop()
    assert broker.hub.shared_groups() == []
    assert broker.hub.stats.shared_handed_over == 0


# -- members from the HTTP side -------------------------------------------------


def test_sse_streams_and_mqtt_clients_share_a_group(web):
    """GET /api/v1/stream?filter=$share/g/... joins the group like an MQTT
    client does; a stream whose reader is slow (paused) is passed over."""
    one = Stream(web, "filter=$share/g/jobs/%23&qos=1")
    two = Stream(web, "filter=$share/g/jobs/%23&qos=1")
    (mqtt,) = consumers(web.broker, 1, qos=1)
    for i in range(6):
        one.publish("jobs/x", b"%d" % i, qos=1)
    sse = [[e["payload"] for e in one.events()], [e["payload"] for e in two.events()]]
    assert sse == [["0", "3"], ["1", "4"]]
    assert payloads(mqtt) == [b"2", b"5"]
    one.pause()
    for i in range(6, 10):
        one.publish("jobs/x", b"%d" % i, qos=1)
    assert one.events() == []
    assert len(two.events()) == 2
    one.resume()


def test_the_acl_applies_to_the_inner_filter_of_a_stream(tmp_path):
    """A user may join a group on a filter the ACL lets them read, and is
    refused (403) one it does not."""
    path = str(tmp_path / "passwd")
    set_password(path, "alice", b"pw-alice", n=2 ** 4)
    site = guarded(path, ACL_TEXT)
    headers = basic("alice", "pw-alice")
    refused = site.get("/api/v1/stream?filter=$share/g/home/secret/%23", headers=headers)
    assert refused.status == 403
    allowed = site.get("/api/v1/stream?filter=$share/g/home/%23", headers=headers)
    assert allowed.status == 200
    (group,) = site.hub.shared_groups()
    assert group.share_filter == "$share/g/home/#"


def test_a_webhook_rule_may_use_a_shared_filter():
    """A rule with a "$share/GROUP/FILTER" filter is one member of that group."""
    rule = parse_rule({"name": "jobs", "url": "http://example.com/hook",
                       "filters": ["$share/workers/jobs/#"]})
    assert rule.filters == ("$share/workers/jobs/#",)


def test_named_stream_sessions_share_a_group_and_are_away_when_detached():
    """Named stream sessions (``session=NAME``) on ``$share/...`` are members
    too: in turn while attached; detached, a session gets nothing while
    another member is attached (like an offline persistent session)."""
    site = Web()
    one = Events(site, "session=one&filter=$share/g/s/%23&qos=1")
    two = Events(site, "session=two&filter=$share/g/s/%23&qos=1")
    for i in range(4):
        site.hub.publish(Message("s/a", b"%d" % i, 1))
    assert [p for _, p in one.events()] == ["0", "2"]
    assert [p for _, p in two.events()] == ["1", "3"]
    one.cut()
    assert site.stream_sessions.get("one").share_state(1) == AWAY
    for i in range(4, 7):
        site.hub.publish(Message("s/a", b"%d" % i, 1))
    assert [p for _, p in two.events()] == ["4", "5", "6"]


# -- what the admin API and /metrics show ---------------------------------------


def test_admin_api_lists_groups_members_and_counts(web):  # noqa: F811
    """GET /api/v1/shared: each group, its filter, its members (kind, name,
    granted QoS, whether it can take a message now) and its counts; the
    same counts in /api/v1/stats and /metrics."""
    busy, away = consumers(web.broker, 2, qos=1, clean=False)
    busy.protocol.pauseProducing()
    away.drop()
    Stream(web, "filter=$share/g/jobs/%23")
    for i in range(3):
        web.hub.publish(Message("jobs/x", b"%d" % i, 1))
    groups = web.get("/api/v1/shared").json()
    (group,) = groups
    members = sorted(group.pop("members"), key=lambda m: m["kind"])
    assert group == {"group": "g", "filter": "jobs/#", "deliveries": 3, "handed_over": 0}
    by_name = {m["name"]: (m["kind"], m["qos"], m["state"]) for m in members if m["kind"] == "mqtt"}
    assert by_name == {"worker0": ("mqtt", 1, "busy"), "worker1": ("mqtt", 1, "away")}
    assert [(m["qos"], m["state"]) for m in members if m["kind"] == "sse"] == [(0, "ready")]
    assert web.get("/api/v1/stats").json()["shared"] == {
        "groups": 1, "deliveries": 3, "handed_over": 0}
    metrics = web.get("/metrics").body.decode()
    assert "reactorapp_shared_subscriptions 1.0" in metrics
    assert "reactorapp_shared_deliveries_total 3.0" in metrics


def test_the_shared_listing_is_for_administrators(passwd):  # noqa: F811
    """/api/v1/shared needs read access to $admin/shared, as /clients does."""
    site = guarded(passwd, ACL_TEXT)
    assert site.get("/api/v1/shared", headers=basic("alice", "pw-alice")).status == 403
    answer = site.get("/api/v1/shared", headers=basic("ops", "pw-ops"))
    assert answer.status == 200 and answer.json() == []


def test_a_handed_over_message_leaves_the_store_of_the_member_that_left():
    """With a store, a message handed over from a persistent member is
    removed from that member's stored queue and written to the new
    member's: after a restart the first does not get it again, and the
    member that took it (persistent too) still has it until acknowledged:
    after a restart the first member back gets it once, handed over again
    from the member that is still away."""
    store = ManualStore()
    broker = StoredBroker(store)
    a, b = consumers(broker, 2, qos=1, clean=False)
    pub = broker.connect("pub")
    pub.publish("jobs/x", b"0", qos=1)
    assert payloads(a) == [b"0"]
    b.protocol.pauseProducing()  # b is busy but connected: it takes a's message
    a.drop()
    store.commit()
    stored = {s.client_id: [m.message.payload for m in s.messages]
              for s in store.load().sessions}
    assert stored["worker0"] == [] and stored["worker1"] == [b"0"]
    again = broker.restart()
    back = again.connect("worker0", clean=False)
    assert payloads(back) == [b"0"]
    assert again.hub.get_session("worker1").shared == {}


# -- MQTT 5 clients ---------------------------------------------------------------


def test_mqtt5_members_session_expiry_hands_queued_messages_to_a_311_member():
    """An MQTT 5 member with a Session Expiry Interval and every member
    offline: messages queue on the members in turn; when its session
    expires, what it held goes to the other member (a 3.1.1 persistent
    session), which gets it when it comes back."""
    broker = Broker5()
    five = broker.connect("five", clean=False, properties={"session_expiry_interval": 30})
    assert five.subscribe(("$share/g/t", 1)) == [1]
    old = broker.connect311("old", clean=False)
    old.send(P.Subscribe(1, [P.SubscriptionRequest("$share/g/t", 1)]))
    assert [p.return_codes for p in old.take()] == [[1]]
    five.send(P.Disconnect())
    old.drop()
    pub = broker.connect("pub")
    for i in range(4):
        pub.publish("t", b"%d" % i, qos=1)
    assert len(broker.hub.get_session("five").queue) == 2
    broker.clock.advance(30)
    assert broker.hub.get_session("five") is None
    assert len(broker.hub.get_session("old").queue) == 4
    back = Client5(broker, level=P.MQTT_3_1_1)
    back.send(P.Connect(client_id="old", clean_session=False))
    assert sorted(p.payload for p in back.take() if type(p) is P.Publish) == [
        b"0", b"1", b"2", b"3"]


def test_a_puback_with_an_error_code_discards_the_message_for_the_group():
    """[MQTT-4.8.2-6] a PUBACK (or PUBREC) with a reason code of 0x80 or more
    discards the message: it is not sent to another member, even when the
    member that refused it goes away."""
    broker = Broker5()
    a = broker.connect("a")
    b = broker.connect("b")
    assert a.subscribe(("$share/g/t", 2)) == [2]
    assert b.subscribe(("$share/g/t", 2)) == [2]
    b.protocol.pauseProducing()  # a gets both
    pub = broker.connect("pub")
    pub.publish("t", b"one", qos=1)
    pub.publish("t", b"two", qos=2)
    one, two = [p for p in a.take() if type(p) is P.Publish]
    a.send(P.PubAck(one.packet_id, reason_code=0x80), P.PubRec(two.packet_id, reason_code=0x80))
    b.protocol.resumeProducing()
    a.drop()
    assert [p for p in b.take() if type(p) is P.Publish] == []
    assert broker.hub.stats.shared_handed_over == 0


def test_no_local_on_a_shared_subscription_is_a_protocol_error():
    """[MQTT-3.8.3-4] an MQTT 5 SUBSCRIBE with No Local on a shared
    subscription closes the connection."""
    broker = Broker5()
    client = broker.connect("c")
    client.send(P.Subscribe(1, [P.SubscriptionRequest("$share/g/t", 1, no_local=True)]))
    assert client.closed
    assert broker.hub.shared_groups() == []


def test_a_shared_copy_carries_its_own_subscription_identifier_and_ignores_no_local():
    """A 5.0 client with a plain and a shared subscription matching one
    topic gets two copies, each with the identifier of its own subscription
    [MQTT-3.3.4-5]; No Local on the plain one [MQTT-3.8.3-3] keeps the
    client's own message from the plain copy only (No Local does not exist
    for shared subscriptions [MQTT-3.8.3-4])."""
    broker = Broker()
    client = connect5(broker, "both")
    codes, _ = client.subscribe(P.SubscriptionRequest("t", 1, no_local=True), identifier=1)
    assert codes == [1]
    codes, _ = client.subscribe(("$share/g/t", 1), identifier=2)
    assert codes == [1]
    other = connect5(broker, "other")
    other.publish("t", b"theirs", qos=1)
    copies = [p for p in client.take() if type(p) is P.Publish]
    assert sorted(p.properties.get("subscription_identifier") for p in copies) == [[1], [2]]
    client.publish("t", b"mine", qos=1)
    copies = [p for p in client.take() if type(p) is P.Publish]
    assert [(p.payload, p.properties.get("subscription_identifier")) for p in copies] == [
        (b"mine", [2])]


def test_queued_shared_messages_are_handed_over_behind_plain_ones_in_flight():
    """A member whose window is full of messages of its own (non-shared)
    subscriptions still gives the shared messages queued behind them to
    another member when it goes away."""
    broker = Broker(max_inflight=2)
    (a,) = consumers(broker, 1, qos=1)
    a.subscribe(("own/#", 1))
    pub = broker.connect("pub")
    pub.publish("own/1", b"p1", qos=1)
    pub.publish("own/2", b"p2", qos=1)
    pub.publish("jobs/x", b"shared", qos=1)  # queued behind the full window
    assert payloads(a) == [b"p1", b"p2"]
    (b,) = consumers(broker, 1, qos=1, first=1)
    a.drop()
    assert payloads(b) == [b"shared"]


def test_an_mqtt5_puback_counts_shared_members_and_leaves_the_turn_alone():
    """A 5.0 publisher's PUBACK says 0x10 (no matching subscribers) only
    when nobody, shared members included, gets the message; asking does not
    move a group's turn, so two members still alternate."""
    broker = Broker()
    pub = connect5(broker, "pub5")
    pub.publish("t", b"nobody", qos=1)
    (puback,) = [p for p in pub.take() if type(p) is P.PubAck]
    assert puback.reason_code == P.ReasonCode.NO_MATCHING_SUBSCRIBERS
    a, b = consumers(broker, 2, qos=1, topic_filter="$share/g/t")
    for i in range(4):
        pub.publish("t", b"%d" % i, qos=1)
    assert [p.reason_code for p in pub.take() if type(p) is P.PubAck] == [0] * 4
    assert (payloads(a), payloads(b)) == ([b"0", b"2"], [b"1", b"3"])
