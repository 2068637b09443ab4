"""The password file: salted scrypt hashes and bearer tokens, one per line.

::

    # comments and blank lines are ignored
    alice:$scrypt$16384$8$1$<salt>$<hash>
    alice:$token$<sha256 of the token>
    bob:$7$101$<salt>$<hash>

A user has at most one password and any number of tokens (for the HTTP API).
Mosquitto's password files are read as they are, so users keep their
credentials when they move: ``mosquitto_passwd`` writes ``$7$`` (PBKDF2-SHA512
with its iteration count) and, before Mosquitto 2.0, ``$6$`` (one SHA-512 of
the password and the salt). New passwords are always written as scrypt.
Passwords are hashed with scrypt, which is slow on purpose, so they are
checked on a thread and never on the reactor. Tokens are long random strings:
one SHA-256 is enough to keep them safe at rest.

The file is re-read when it changes, so users and tokens added with
``python -m reactorapp.passwd`` take effect without a restart.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import secrets
import sys
import tempfile

from twisted.internet.defer import fail, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from reactorapp.auth.files import WatchedFile, read_text
from reactorapp.auth.interfaces import IAuthenticator, Identity, NotAuthorized

log = Logger()

#: scrypt cost: 16 MiB and about 60 ms per check on a current CPU.
SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
#: Generous room above 128 * r * n, for parameters read from a file.
_MAXMEM = 256 * 2 ** 20
#: Tokens start with this, so a leaked one is easy to recognise and revoke.
TOKEN_PREFIX = "rat_"


class PasswordFileError(Exception):
    """The password file cannot be used; the message says where and why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    """The ``$scrypt$n$r$p$salt$hash`` form of ``password`` with a new salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p,
                            dklen=_HASH_BYTES, maxmem=_MAXMEM)
    return f"$scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _parse_scrypt(parts: list[str]):
    if len(parts) != 7:
        raise ValueError("not a $scrypt$n$r$p$salt$hash value")
    n, r, p = int(parts[2]), int(parts[3]), int(parts[4])
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n > _MAXMEM:
        raise ValueError("scrypt parameters out of range")
    salt, digest = _unb64(parts[5]), _unb64(parts[6])

    def derive(password: bytes) -> bytes:
        return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p,
                              dklen=len(digest), maxmem=_MAXMEM)
    return salt, digest, derive


def _parse_pbkdf2(parts: list[str]):
    """Mosquitto's ``$7$iterations$salt$hash``: PBKDF2-HMAC-SHA512."""
    if len(parts) != 5:
        raise ValueError("not a $7$iterations$salt$hash value")
    iterations = int(parts[2])
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError("PBKDF2 iteration count out of range")
    salt, digest = _unb64(parts[3]), _unb64(parts[4])
    return salt, digest, lambda password: hashlib.pbkdf2_hmac(
        "sha512", password, salt, iterations, len(digest))


def _parse_sha512(parts: list[str]):
    """Mosquitto 1.x's ``$6$salt$hash``: SHA-512 of the password, then the salt."""
    if len(parts) != 4:
        raise ValueError("not a $6$salt$hash value")
    salt, digest = _unb64(parts[2]), _unb64(parts[3])
    return salt, digest, lambda password: hashlib.sha512(password + salt).digest()


_SCHEMES = {"scrypt": _parse_scrypt, "7": _parse_pbkdf2, "6": _parse_sha512}
#: Far above Mosquitto's default (101), far below a check that takes seconds.
_MAX_ITERATIONS = 10_000_000


def parse_hash(encoded: str):
    """``derive(password) -> bytes`` and the digest it must equal, from a
    ``$scrypt$``, ``$7$`` or ``$6$`` value; ValueError if it is none of them."""
    parts = encoded.split("$")
    scheme = _SCHEMES.get(parts[1]) if len(parts) > 2 and not parts[0] else None
    if scheme is None:
        raise ValueError("not a $scrypt$, $7$ (mosquitto_passwd) or $6$ password hash")
    try:
        salt, digest, derive = scheme(parts)
    except ValueError as e:  # from int() and base64 (binascii.Error) too
        raise ValueError(str(e) or "malformed password hash") from None
    if not salt or not digest:
        raise ValueError("empty salt or hash")
    return derive, digest


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``, compared in constant time."""
    derive, digest = parse_hash(encoded)
    return hmac.compare_digest(derive(password), digest)


def new_token() -> str:
    """A fresh bearer token: 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return "$token$" + _b64(hashlib.sha256(token.encode("utf-8")).digest())


_dummy_hash: list[str] = []


def _dummy() -> str:
    """Checked against when the user is unknown, so a wrong name costs the
    same time as a wrong password and does not reveal which names exist."""
    if not _dummy_hash:
        _dummy_hash.append(hash_password(b""))
    return _dummy_hash[0]


class Users:
    """The parsed content of a password file."""

    def __init__(self, passwords: dict[str, str], tokens: dict[str, str]) -> None:
        #: user name -> ``$scrypt$...`` (or ``$7$...``, ``$6$...``)
        self.passwords = passwords
        #: ``$token$...`` -> user name
        self.tokens = tokens
        #: What an unknown user's password is checked against, so that a wrong
        #: name costs as much as a wrong password: a hash of the kind most
        #: users of this file have (PBKDF2 in a Mosquitto file is far quicker
        #: than scrypt). None: the scrypt dummy.
        self.decoy = _decoy(passwords.values())

    @classmethod
    def parse(cls, text: str, source: str) -> Users:
        passwords: dict[str, str] = {}
        tokens: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, secret = line.rpartition(":")
            where = f"{source}, line {number}"
            if not sep or not name:
                raise PasswordFileError(f"{where}: expected USER:HASH.")
            if secret.startswith("$token$"):
                tokens[secret] = name
                continue
            try:
                parse_hash(secret)
            except ValueError as e:
                raise PasswordFileError(f"{where}: {e}.") from None
            if name in passwords:
                raise PasswordFileError(f"{where}: user {name!r} appears twice.")
            passwords[name] = secret
        return cls(passwords, tokens)


def _decoy(hashes) -> str | None:
    by_scheme: dict[str, str] = {}
    counts: dict[str, int] = {}
    for encoded in hashes:
        scheme = encoded.split("$")[1]
        by_scheme.setdefault(scheme, encoded)
        counts[scheme] = counts.get(scheme, 0) + 1
    return by_scheme[max(counts, key=counts.get)] if counts else None


def read_users(path: str) -> Users:
    text = read_text(path, "password file", PasswordFileError)
    return Users.parse(text, f"password file {path!r}")


class PasswordFile:
    """A password file kept current by `check`, which the service calls
    every few seconds: it looks at the file (and parses it when it changed)
    with ``run``, on a thread pool. ``users`` is a plain attribute, so a
    log-in or a bearer token costs no system call on the reactor."""

    def __init__(self, path: str, run=None) -> None:
        self.path = path
        self.users = read_users(path)
        self._watch = WatchedFile(path, read_users, (PasswordFileError,), self._replace,
                                  log, "users", run or _in_caller)

    def _replace(self, users: Users) -> None:
        self.users = users

    def check(self):
        """Read the file again if it changed; a Deferred that never fails."""
        return self._watch.check()


def _check(password: bytes, encoded: str | None, decoy: str | None = None) -> bool:
    """Runs off the reactor: the hashing work, also for unknown users, who
    are checked against ``decoy`` and always refused."""
    if encoded is None:
        verify_password(password, decoy or _dummy())
        return False
    return verify_password(password, encoded)


def _in_caller(function, *args):
    return maybeDeferred(function, *args)


@implementer(IAuthenticator)
class PasswordFileAuthenticator:
    """Users from a password file; anonymous clients only if allowed.

    ``run(function, *args) -> Deferred`` runs the scrypt check; the service
    passes one that uses the reactor's thread pool, tests the default, which
    runs it at once.
    """

    def __init__(self, passwords: PasswordFile, allow_anonymous: bool = False,
                 run=_in_caller) -> None:
        self.passwords = passwords
        self.allow_anonymous = allow_anonymous
        self._run = run

    def authenticate(self, username, password, client_id, peer, certificate):
        if username is None:
            if self.allow_anonymous:
                return succeed(Identity(None, client_id))
            return fail(NotAuthorized("anonymous clients are not allowed"))
        users = self.passwords.users
        d = self._run(_check, password or b"", users.passwords.get(username), users.decoy)
        d.addCallback(lambda ok: Identity(username, client_id) if ok else None)
        return d

    def authenticate_token(self, token, peer):
        username = self.passwords.users.tokens.get(hash_token(token))
        return succeed(Identity(username) if username is not None else None)


# -- editing the file -------------------------------------------------------


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _write_lines(path: str, lines: list[str]) -> None:
    """Replace the file in one step, readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _owner(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.rpartition(":")[0]


def check_username(username: str) -> None:
    if not username or username != username.strip() or username.startswith("#"):
        raise PasswordFileError(f"invalid user name {username!r}.")
    if any(c in username for c in "\n\r\0"):
        raise PasswordFileError("a user name cannot contain line breaks or NUL.")


def set_password(path: str, username: str, password: bytes, **cost) -> None:
    """Add ``username`` or change its password; its tokens are kept."""
    check_username(username)
    entry = f"{username}:{hash_password(password, **cost)}"
    lines = _read_lines(path)
    for i, line in enumerate(lines):
        name, _, secret = line.strip().rpartition(":")
        if name == username and not secret.startswith("$token$"):
            lines[i] = entry
            break
    else:
        lines.append(entry)
    _write_lines(path, lines)


def add_token(path: str, username: str) -> str:
    """Mint a bearer token for ``username``; only its hash is stored."""
    check_username(username)
    token = new_token()
    _write_lines(path, _read_lines(path) + [f"{username}:{hash_token(token)}"])
    return token


def delete_user(path: str, username: str) -> bool:
    """Remove the user's password and tokens; False if there were none."""
    lines = _read_lines(path)
    kept = [line for line in lines if _owner(line) != username]
    if len(kept) == len(lines):
        return False
    _write_lines(path, kept)
    return True


def make_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m reactorapp.passwd``."""
    parser = argparse.ArgumentParser(
        prog="python -m reactorapp.passwd",
        description="Add a user to a reactorapp password file or change its "
                    "password; with --token, mint a bearer token for the HTTP API.",
    )
    parser.add_argument("file", metavar="FILE", help="the password file (created if missing)")
    parser.add_argument("user", metavar="USER", help="the user name")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")
    what.add_argument("--token", action="store_true",
                      help="print a new bearer token for USER (shown once, only its hash is kept)")
    what.add_argument("--delete", action="store_true",
                      help="remove USER, its password and its tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        if args.delete:
            if not delete_user(args.file, args.user):
                print(f"no user {args.user!r} in {args.file}", file=sys.stderr)
                return 1
            return 0
        if args.token:
            print(add_token(args.file, args.user))
            return 0
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {args.user}: ")
            if getpass.getpass("Again: ") != password:
                print("The passwords differ; nothing changed.", file=sys.stderr)
                return 1
        if not password:
            print("An empty password is not allowed.", file=sys.stderr)
            return 1
        set_password(args.file, args.user, password.encode("utf-8"))
    except (PasswordFileError, OSError) as e:
        print(f"reactorapp.passwd: {e}", file=sys.stderr)
        return 1
    return 0
