"""A text protocol for telnet and netcat, written only against the public API.

One command per line, one reply per command, one line per delivered message::

    LOGIN alice s3cret       ->  OK LOGIN alice        (when the hub has passwords)
    SUB sensors/#            ->  OK SUB sensors/#      (then retained messages)
    PUB sensors/door open    ->  OK PUB sensors/door
    UNSUB sensors/#          ->  OK UNSUB sensors/#
    PING                     ->  PONG
    anything wrong           ->  ERR <one sentence>
    a delivered message      ->  MSG sensors/door open

Topics are the first word of ``PUB``; the payload is the rest of the line.
Payloads travel with backslash, CR and LF escaped (``\\\\``, ``\\r``, ``\\n``),
in both directions, so that a message always fits on one line.
"""

from __future__ import annotations

import re

from twisted.protocols.basic import LineReceiver
from twisted.python import usage

from reactorapp.api import Forbidden, InvalidTopic, NotAuthorized
from reactorapp.protocols import HubFactory, HubProtocol

_ESCAPES = {b"\\": b"\\\\", b"\r": b"\\r", b"\n": b"\\n"}
_UNESCAPES = {b"\\": b"\\", b"r": b"\r", b"n": b"\n"}
_TO_ESCAPE = re.compile(rb"[\\\r\n]")
_ESCAPED = re.compile(rb"\\(.?)", re.S)


def escape(payload: bytes) -> bytes:
    """A payload as it goes on a line."""
    return _TO_ESCAPE.sub(lambda m: _ESCAPES[m[0]], payload)


def unescape(text: bytes) -> bytes:
    """The payload a line carries."""
    return _ESCAPED.sub(_unescape_one, text)


def _unescape_one(match) -> bytes:
    raw = _UNESCAPES.get(match[1])
    if raw is None:
        raise LineError("A backslash in a payload must start \\\\, \\r or \\n.")
    return raw


class LineError(ValueError):
    """The line cannot be understood; the message is the reply's sentence."""


class LineProtocol(HubProtocol, LineReceiver):
    """One telnet or netcat user."""

    delimiter = b"\n"

    def connectionMade(self):
        self.MAX_LENGTH = self.factory.options["max-line"]
        self.subscriptions = {}  # filter -> Subscription

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if line.strip():
            self.run(self.command, line)

    def lineLengthExceeded(self, line):
        self.reply(b"ERR The line is longer than %d bytes." % self.MAX_LENGTH)
        self.transport.loseConnection()

    async def command(self, line: bytes) -> None:
        """Run one command; a mistake is answered, never fatal."""
        word, _, argument = line.partition(b" ")
        handler = self.commands.get(word.upper())
        try:
            if handler is None:
                raise LineError(f"Unknown command {_text(word)!r};"
                                " use SUB, UNSUB, PUB, PING or LOGIN.")
            await handler(self, argument)
        except (ValueError, InvalidTopic, Forbidden, NotAuthorized) as e:
            self.reply(b"ERR " + str(e).encode("utf-8"))

    async def sub(self, argument: bytes) -> None:
        topic_filter = _text(argument)
        subscription = await self.hub.subscribe(topic_filter, 0, self.deliver)
        old = self.subscriptions.pop(topic_filter, None)
        if old is not None:
            old.cancel()  # after the new one is in place: nothing is missed
        self.subscriptions[topic_filter] = subscription
        self.reply(b"OK SUB " + argument)
        await subscription.deliverRetained()

    async def unsub(self, argument: bytes) -> None:
        subscription = self.subscriptions.pop(_text(argument), None)
        if subscription is None:
            raise LineError(f"Not subscribed to {_text(argument)!r}.")
        subscription.cancel()
        self.reply(b"OK UNSUB " + argument)

    async def pub(self, argument: bytes) -> None:
        topic, _, payload = argument.partition(b" ")
        await self.hub.publish(_text(topic), unescape(payload))
        self.reply(b"OK PUB " + topic)

    async def ping(self, argument: bytes) -> None:
        self.reply(b"PONG")

    async def login(self, argument: bytes) -> None:
        username, _, password = argument.partition(b" ")
        if await self.authenticate(_text(username), password) is None:
            raise LineError("Wrong user name or password.")
        self.reply(b"OK LOGIN " + username)

    commands = {b"SUB": sub, b"UNSUB": unsub, b"PUB": pub, b"PING": ping, b"LOGIN": login}

    def deliver(self, message) -> None:
        self.reply(b"MSG %s %s" % (message.topic.encode("utf-8"), escape(message.payload)))

    def reply(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")


class LineOptions(usage.Options):
    """Settings of one line listener: ``--listen 'line:tcp:7000 --max-line=1024'``."""

    optParameters = [
        ["max-line", None, 65536 + 1024, "Longest line accepted, in bytes.", int],
    ]


class LineFactory(HubFactory):
    protocol = LineProtocol
    name = "line"

    def __init__(self, hub, options=None, **kwargs):
        if options is None:
            options = LineOptions()
            options.parseOptions([])
        super().__init__(hub, options, **kwargs)


def _text(word: bytes) -> str:
    try:
        return word.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError("The line is not UTF-8 text.") from None
