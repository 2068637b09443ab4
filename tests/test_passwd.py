"""The password file, its command, and the file-based authenticator."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest
from twisted.internet.defer import Deferred, succeed
from zope.interface.verify import verifyObject

from reactorapp.auth import passwd
from reactorapp.auth.interfaces import IAuthenticator, Identity, NotAuthorized
from reactorapp.auth.passwd import (
    PasswordFile, PasswordFileAuthenticator, PasswordFileError, Users, add_token,
    delete_user, hash_password, set_password, verify_password,
)
from tests.brokerproc import REPO, twistd_env

CHEAP = {"n": 2 ** 4}  # tests need no real scrypt cost


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def test_hash_is_salted_and_verifies():
    a, b = hash_password(b"secret", **CHEAP), hash_password(b"secret", **CHEAP)
    assert a != b and a.startswith("$scrypt$16$8$1$")
    assert verify_password(b"secret", a)
    assert not verify_password(b"Secret", a)
    assert "secret" not in a


def test_default_cost():
    n, r, p = hash_password(b"x").split("$")[2:5]
    assert (int(n), int(r), int(p)) == (2 ** 14, 8, 1)


@pytest.mark.parametrize("line", [
    "alice", ":$scrypt$16$8$1$AAAA$AAAA", "alice:$scrypt$15$8$1$AAAA$AAAA",
    "alice:$scrypt$16$8$1$$AAAA", "alice:plaintext", "alice:$scrypt$16$8$1$!!$AAAA",
])
def test_bad_lines_are_refused_with_their_number(line):
    with pytest.raises(PasswordFileError, match="line 2"):
        Users.parse("# users\n" + line + "\n", "f")


def test_user_names_may_contain_colons():
    users = Users.parse(f"a:b:{hash_password(b'p', **CHEAP)}\n", "f")
    assert list(users.passwords) == ["a:b"]


def test_set_password_adds_then_replaces_and_keeps_tokens(tmp_path):
    path = str(tmp_path / "passwd")
    set_password(path, "alice", b"one", **CHEAP)
    token = add_token(path, "alice")
    set_password(path, "bob", b"two", **CHEAP)
    set_password(path, "alice", b"three", **CHEAP)
    users = passwd.read_users(path)
    assert sorted(users.passwords) == ["alice", "bob"]
    assert verify_password(b"three", users.passwords["alice"])
    assert users.tokens[passwd.hash_token(token)] == "alice"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token not in open(path).read()


def test_delete_user(tmp_path):
    path = str(tmp_path / "passwd")
    set_password(path, "alice", b"one", **CHEAP)
    add_token(path, "alice")
    set_password(path, "bob", b"two", **CHEAP)
    assert delete_user(path, "alice")
    assert not delete_user(path, "alice")
    users = passwd.read_users(path)
    assert list(users.passwords) == ["bob"] and not users.tokens


def test_invalid_user_names(tmp_path):
    for name in ["", " x", "#x", "a\nb"]:
        with pytest.raises(PasswordFileError):
            set_password(str(tmp_path / "p"), name, b"x", **CHEAP)


def test_file_is_reloaded_when_it_changes(tmp_path):
    path = str(tmp_path / "passwd")
    set_password(path, "alice", b"one", **CHEAP)
    pwfile = PasswordFile(path)
    set_password(path, "bob", b"two", **CHEAP)
    pwfile.check()
    assert sorted(pwfile.users.passwords) == ["alice", "bob"]
    with open(path, "a") as f:
        f.write("broken line\n")
    pwfile.check()
    assert sorted(pwfile.users.passwords) == ["alice", "bob"]  # previous users kept


def test_log_ins_cost_no_system_call_and_checks_run_where_they_are_sent(tmp_path, monkeypatch):
    """A CONNECT or a bearer token reads ``users`` only; looking at the file
    (stat, read, parse) is `check`'s, run by the service on a thread pool."""
    path = str(tmp_path / "passwd")
    set_password(path, "alice", b"one", **CHEAP)
    sent = []
    pwfile = PasswordFile(path, run=lambda f, *args: sent.append((f, args)) or Deferred())
    authenticator = PasswordFileAuthenticator(pwfile)

    def no_stat(*args, **kwargs):
        raise AssertionError("os.stat on a log-in")

    monkeypatch.setattr(os, "stat", no_stat)
    assert authenticator.authenticate("alice", b"one", "c", None, None) is not None
    authenticator.authenticate_token("rat_nope", None)
    monkeypatch.undo()
    pwfile.check()
    assert len(sent) == 1 and sent[0][1][0] == path


def authenticator(tmp_path, **kw):
    path = str(tmp_path / "passwd")
    set_password(path, "alice", b"wonderland", **CHEAP)
    return PasswordFileAuthenticator(PasswordFile(path), **kw)


def test_authenticator_provides_the_interface(tmp_path):
    verifyObject(IAuthenticator, authenticator(tmp_path))


def test_right_password(tmp_path):
    auth = authenticator(tmp_path)
    identity = result(auth.authenticate("alice", b"wonderland", "c1", None, None))
    assert identity == Identity("alice", "c1") and not identity.anonymous


def test_wrong_password_and_unknown_user(tmp_path):
    auth = authenticator(tmp_path)
    assert result(auth.authenticate("alice", b"wrong", "c1", None, None)) is None
    assert result(auth.authenticate("alice", None, "c1", None, None)) is None
    assert result(auth.authenticate("mallory", b"wonderland", "c1", None, None)) is None


def test_anonymous_refused_unless_allowed(tmp_path):
    failure = result(authenticator(tmp_path).authenticate(None, None, "c1", None, None))
    assert failure.check(NotAuthorized)
    identity = result(authenticator(tmp_path, allow_anonymous=True)
                      .authenticate(None, None, "c1", None, None))
    assert identity == Identity(None, "c1") and identity.anonymous


def test_scrypt_runs_where_it_is_told(tmp_path):
    """The check is handed to ``run`` (a thread pool in the service), so the
    reactor never computes scrypt itself."""
    calls = []

    def run(function, *args):
        calls.append((function, args))
        return Deferred()

    auth = authenticator(tmp_path, run=run)
    d = auth.authenticate("alice", b"wonderland", "c", None, None)
    assert not d.called and len(calls) == 1
    d2 = auth.authenticate("nobody", b"x", "c", None, None)
    assert len(calls) == 2  # unknown users cost the same work
    function, args = calls[1]
    assert function(*args) is False
    assert not d2.called


def test_tokens(tmp_path):
    auth = authenticator(tmp_path)
    token = add_token(auth.passwords.path, "alice")
    auth.passwords.check()  # the service does it every 2 s
    assert token.startswith("rat_") and len(token) > 40
    assert result(auth.authenticate_token(token, None)) == Identity("alice")
    assert result(auth.authenticate_token(token + "x", None)) is None


def run_command(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "reactorapp.passwd", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, env=twistd_env(),
                          timeout=30)


def test_command_with_password_on_stdin(tmp_path):
    path = str(tmp_path / "passwd")
    done = run_command(path, "alice", "--password-stdin", stdin="s3cret\n")
    assert done.returncode == 0, done.stderr
    users = passwd.read_users(path)
    assert verify_password(b"s3cret", users.passwords["alice"])
    token = run_command(path, "alice", "--token")
    assert token.returncode == 0
    assert passwd.read_users(path).tokens[passwd.hash_token(token.stdout.strip())] == "alice"
    assert run_command(path, "alice", "--delete").returncode == 0
    assert run_command(path, "alice", "--delete").returncode == 1


def test_command_refuses_an_empty_password(tmp_path):
    done = run_command(str(tmp_path / "p"), "alice", "--password-stdin", stdin="\n")
    assert done.returncode == 1 and "empty" in done.stderr
    assert not (tmp_path / "p").exists()


def test_command_prompts_twice(tmp_path, monkeypatch, capsys):
    answers = iter(["one", "two"])
    monkeypatch.setattr(passwd.getpass, "getpass", lambda prompt: next(answers))
    assert passwd.main([str(tmp_path / "p"), "alice"]) == 1
    assert "differ" in capsys.readouterr().err
    answers = iter(["same", "same"])
    monkeypatch.setattr(passwd.getpass, "getpass", lambda prompt: next(answers))
    assert passwd.main([str(tmp_path / "p"), "alice"]) == 0
    assert verify_password(b"same", passwd.read_users(str(tmp_path / "p")).passwords["alice"])


# -- Mosquitto's password files ----------------------------------------------

MOSQUITTO_FILE = REPO / "tests" / "data" / "mosquitto.passwd"
MOSQUITTO_USERS = {"alice": b"s3cret pass", "bob": b"hunter2", "carol": b"pw6"}


def _logs_in(authenticator, user: str, password: bytes) -> bool:
    results = []
    authenticator.authenticate(user, password, "c", None, None).addCallback(results.append)
    return results == [Identity(user, "c")]


def test_mosquitto_password_file_is_read_as_it_is():
    """A file from mosquitto_passwd: $7$ (PBKDF2-SHA512, Mosquitto 2) and
    $6$ (SHA-512, Mosquitto 1.x) entries log in with their passwords."""
    authenticator = PasswordFileAuthenticator(PasswordFile(str(MOSQUITTO_FILE)))
    for user, password in MOSQUITTO_USERS.items():
        assert _logs_in(authenticator, user, password), user
        assert not _logs_in(authenticator, user, password + b"x"), user


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                    reason="mosquitto_passwd is not installed")
@pytest.mark.parametrize("algorithm", ["sha512-pbkdf2", "sha512"])
def test_a_file_mosquitto_passwd_writes_now(tmp_path, algorithm):
    path = tmp_path / "passwd"
    for user, password in [("dave", "correct horse"), ("erin", "ünïcode")]:
        subprocess.run(["mosquitto_passwd", "-H", algorithm, "-b",
                        *(["-c"] if user == "dave" else []), str(path), user, password],
                       check=True, capture_output=True, timeout=30)
    authenticator = PasswordFileAuthenticator(PasswordFile(str(path)))
    assert _logs_in(authenticator, "dave", b"correct horse")
    assert _logs_in(authenticator, "erin", "ünïcode".encode())
    assert not _logs_in(authenticator, "erin", b"unicode")


@pytest.mark.parametrize("line", [
    "alice:$7$0$AAAAAAAA$AAAA", "alice:$7$101$AAAAAAAA", "alice:$7$x$AAAAAAAA$AAAA",
    "alice:$7$101$$AAAA", "alice:$6$AAAAAAAA", "alice:$6$!!$AAAA", "alice:$5$AAAA$AAAA",
])
def test_bad_mosquitto_lines_are_refused(line):
    with pytest.raises(PasswordFileError, match="line 1"):
        Users.parse(line + "\n", "f")


def test_changing_a_mosquitto_password_writes_scrypt(tmp_path):
    path = tmp_path / "passwd"
    path.write_text(MOSQUITTO_FILE.read_text())
    set_password(str(path), "alice", b"new one", **CHEAP)
    users = passwd.read_users(str(path))
    assert users.passwords["alice"].startswith("$scrypt$")
    assert verify_password(b"new one", users.passwords["alice"])
    assert verify_password(b"hunter2", users.passwords["bob"])
    assert len(users.passwords) == 3


def test_unknown_users_cost_as_much_as_the_file_s_users(tmp_path):
    """In a Mosquitto file an unknown user is checked against a $7$ hash
    (quick PBKDF2), not scrypt, so timing does not tell which names exist;
    and a decoy never lets anyone in."""
    calls = []

    def run(function, *args):
        calls.append(args)
        return succeed(function(*args))

    authenticator = PasswordFileAuthenticator(PasswordFile(str(MOSQUITTO_FILE)), run=run)
    assert not _logs_in(authenticator, "mallory", b"s3cret pass")  # alice's password
    (password, encoded, decoy), = calls
    assert encoded is None and decoy.startswith("$7$")
    assert Users.parse("", "f").decoy is None
    mixed = Users.parse(f"a:{hash_password(b'x', **CHEAP)}\n" + MOSQUITTO_FILE.read_text(), "f")
    assert mixed.decoy.startswith("$7$")  # two of four users
