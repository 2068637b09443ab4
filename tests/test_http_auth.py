"""The HTTP API behind the same users and ACLs as MQTT: Basic auth, bearer
tokens, topic checks and administration, in memory."""

from __future__ import annotations

import base64

import pytest
from zope.interface import implementer

from reactorapp.auth.acl import ACL, ACLAuthorizer
from reactorapp.auth.guard import Guard
from reactorapp.web.guard import GuardedRoot
from reactorapp.auth.interfaces import IAuthenticator
from reactorapp.auth.passwd import (
    PasswordFile, PasswordFileAuthenticator, add_token, set_password,
)
from reactorapp.hub.message import Message
from tests.test_web_api import Web

CHEAP = {"n": 2 ** 4}
ACL_TEXT = """
user alice
topic readwrite home/#
topic deny home/secret/#
user ops
topic read $admin/#
user root
topic readwrite $admin/#
"""


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def passwd(tmp_path):
    path = str(tmp_path / "passwd")
    for user in ("alice", "ops", "root"):
        set_password(path, user, b"pw-" + user.encode(), **CHEAP)
    return path


def guarded(passwd=None, acl=None, allow_anonymous=False) -> Web:
    web = Web()
    authenticator = (PasswordFileAuthenticator(PasswordFile(passwd), allow_anonymous)
                     if passwd else None)
    authorizer = ACLAuthorizer(ACL.parse(acl)) if acl else None
    web.guard = Guard(authenticator, authorizer)
    web.site.resource = GuardedRoot(web.site.resource, web.guard, web.reactor)
    return web


def publish(web, topic, **kw):
    return web.post_json("/api/v1/publish", {"topic": topic, "payload": "x"}, **kw)


def test_without_authentication_everything_is_open():
    web = guarded()
    assert publish(web, "a/b").status == 200
    assert web.get("/api/v1/clients").status == 200


def test_a_password_file_requires_login(passwd):
    web = guarded(passwd)
    answer = publish(web, "home/a")
    assert answer.status == 401 and answer.error() == "unauthorized"
    assert answer.headers["www-authenticate"].startswith('Basic realm="reactorapp"')
    assert web.guard.stats.not_authorized == 1


def test_basic_auth(passwd):
    web = guarded(passwd)
    assert publish(web, "home/a", headers=basic("alice", "pw-alice")).status == 200
    assert publish(web, "home/a", headers=basic("alice", "wrong")).status == 401
    assert publish(web, "home/a", headers=basic("mallory", "x")).status == 401
    assert publish(web, "home/a", headers={"Authorization": "Basic !!!"}).status == 401
    assert web.guard.stats.bad_credentials == 3


def test_bearer_tokens(passwd):
    web = guarded(passwd)
    token = add_token(passwd, "alice")
    web.guard.authenticator.passwords.check()  # the service does it every 2 s
    assert publish(web, "home/a", headers={"Authorization": f"Bearer {token}"}).status == 200
    assert publish(web, "home/a", headers={"Authorization": "Bearer rat_nope"}).status == 401


def test_health_checks_and_websocket_need_no_login(passwd):
    """/mqtt is authenticated by the MQTT CONNECT it carries."""
    web = guarded(passwd)
    assert web.get("/healthz").status == 200
    assert web.get("/mqtt").status != 401


def test_anonymous_allowed(passwd):
    web = guarded(passwd, allow_anonymous=True)
    assert publish(web, "a").status == 200


def test_basic_logins_are_remembered(passwd):
    """scrypt runs once per minute and user, not once per request."""
    calls = []

    @implementer(IAuthenticator)
    class Counting(PasswordFileAuthenticator):
        def authenticate(self, *args):
            calls.append(args[0])
            return super().authenticate(*args)

    web = Web()
    web.guard = Guard(Counting(PasswordFile(passwd)))
    web.site.resource = GuardedRoot(web.site.resource, web.guard, web.broker.clock)
    for _ in range(3):
        assert publish(web, "a", headers=basic("alice", "pw-alice")).status == 200
    assert calls == ["alice"]
    assert publish(web, "a", headers=basic("alice", "other")).status == 401
    web.broker.clock.advance(61)
    assert publish(web, "a", headers=basic("alice", "pw-alice")).status == 200
    assert calls == ["alice", "alice", "alice"]


def test_acl_on_publish(passwd):
    web = guarded(passwd, ACL_TEXT)
    alice = basic("alice", "pw-alice")
    assert publish(web, "home/a", headers=alice).status == 200
    denied = publish(web, "home/secret/x", headers=alice)
    assert denied.status == 403 and denied.error() == "forbidden"
    assert publish(web, "elsewhere", headers=alice).status == 403
    raw = web.request("POST", "/api/v1/topics/home/secret/y", b"x", headers=alice)
    assert raw.status == 403


def test_acl_on_retained(passwd):
    web = guarded(passwd, ACL_TEXT)
    for topic in ("home/light", "home/secret/pin", "other"):
        web.hub.publish(Message(topic, b"1", retain=True))
    found = web.get("/api/v1/retained?filter=%23", headers=basic("alice", "pw-alice")).json()
    assert [m["topic"] for m in found] == ["home/light"]


def test_acl_on_streams(passwd):
    web = guarded(passwd, ACL_TEXT)
    answer = web.get("/api/v1/stream?filter=home/secret/%23", headers=basic("alice", "pw-alice"))
    assert answer.status == 403


def test_administration_needs_admin_topics(passwd):
    web = guarded(passwd, ACL_TEXT)
    assert web.get("/api/v1/clients", headers=basic("alice", "pw-alice")).status == 403
    assert web.get("/metrics", headers=basic("alice", "pw-alice")).status == 403
    assert web.get("/api/v1/clients", headers=basic("ops", "pw-ops")).status == 200
    assert web.get("/metrics", headers=basic("ops", "pw-ops")).status == 200
    web.broker.connect("victim")
    assert web.request("DELETE", "/api/v1/clients/victim",
                       headers=basic("ops", "pw-ops")).status == 403
    assert web.request("DELETE", "/api/v1/clients/victim",
                       headers=basic("root", "pw-root")).status == 204


def test_basic_logins_checked_at_once_are_bounded(passwd):
    """Each Basic log-in not remembered is an scrypt on the thread pool MQTT
    log-ins share: past MAX_BASIC_CHECKS under way, the next is a 503 at once
    (counted), so a flood of bad log-ins cannot queue work without end."""
    from twisted.internet.defer import Deferred

    from reactorapp.web.guard import MAX_BASIC_CHECKS
    from tests.test_web_api import Response

    pool = []

    def on_the_pool(function, *args):
        d = Deferred()
        pool.append((d, function, args))
        return d

    web = Web()
    web.guard = Guard(PasswordFileAuthenticator(PasswordFile(passwd), run=on_the_pool))
    web.site.resource = GuardedRoot(web.site.resource, web.guard, web.broker.clock)

    def send(password):
        head = ("GET /api/v1/stats HTTP/1.1\r\nHost: hub.test\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in basic("alice", password).items()) + "\r\n")
        return web.send(head.encode("latin-1"))[1]

    waiting = [send(f"guess-{n}") for n in range(MAX_BASIC_CHECKS)]
    busy = Response(send("one-more").value())
    assert busy.status == 503 and busy.error() == "busy"
    assert busy.headers["retry-after"] == "1"
    assert len(pool) == MAX_BASIC_CHECKS and web.guard.stats.logins_busy == 1
    for d, function, args in pool:
        d.callback(function(*args))
    assert [Response(t.value()).status for t in waiting] == [401] * MAX_BASIC_CHECKS
    good = send("pw-alice")  # room again
    d, function, args = pool[-1]
    d.callback(function(*args))
    assert Response(good.value()).status == 200
