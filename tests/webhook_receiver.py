"""A webhook receiver for tests: a twisted.web Site on a free loopback port.

It records every request, answers as the test says (a status, headers, or
HOLD to keep the request open), and fires Deferreds when a given number of
requests has arrived, so tests wait for events instead of time.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web import resource, server

#: An answer that keeps the request open until `Receiver.release`.
HOLD = object()


@dataclass
class Received:
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    body: bytes
    peer_port: int

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode("ascii"))
        return None if value is None else value.decode("latin-1")


class Receiver(resource.Resource):
    """Answers ``answer(number, received)``: an int status, ``(status,
    headers)``, or HOLD. ``number`` counts requests from 1."""

    isLeaf = True

    def __init__(self, answer=lambda number, received: 200) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[Received] = []
        self.held: list = []
        self.open = 0
        self.max_open = 0
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self.port = None

    def render(self, request):
        received = Received(
            request.method, request.path,
            {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()},
            request.content.read(), request.getClientAddress().port)
        self.requests.append(received)
        answer = self.answer(len(self.requests), received)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        request.notifyFinish().addBoth(self._closed)
        self._notify()
        if answer is HOLD:
            self.held.append(request)
            return server.NOT_DONE_YET
        code, headers = answer if isinstance(answer, tuple) else (answer, {})
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return b"thanks"

    def _closed(self, _result) -> None:
        self.open -= 1

    def release(self, code: int = 200) -> None:
        """Answer the oldest held request."""
        request = self.held.pop(0)
        request.setResponseCode(code)
        request.write(b"done")
        request.finish()

    def received(self, count: int) -> defer.Deferred:
        """Fires once ``count`` requests have arrived in total."""
        d = defer.Deferred()
        self._waiters.append((count, d))
        self._notify()
        return d

    def _notify(self) -> None:
        ready = [(n, d) for n, d in self._waiters if len(self.requests) >= n]
        for entry in ready:
            self._waiters.remove(entry)
            entry[1].callback(self.requests[: entry[0]])

    # -- listening -----------------------------------------------------------

    def listen(self, reactor, port: int = 0) -> str:
        site = server.Site(self)
        site.displayTracebacks = False
        self.port = reactor.listenTCP(port, site, interface="127.0.0.1")
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/hook"

    def stop(self) -> defer.Deferred:
        for request in self.held:
            if not request.finished and not request._disconnected:
                request.channel.transport.abortConnection()
        self.held.clear()
        return defer.maybeDeferred(self.port.stopListening)


def within(d: defer.Deferred, seconds: float = 10.0) -> defer.Deferred:
    """Bound a wait on the real reactor: a test never hangs."""
    return d.addTimeout(seconds, the_reactor())


class WatchedClock:
    """A `Clock` whose test can wait until a call of a given delay is made
    (a back-off being scheduled), then advance time past it."""

    def __init__(self) -> None:
        self._clock = Clock()
        self._waiters: list[tuple[float, defer.Deferred]] = []

    def seconds(self) -> float:
        return self._clock.seconds()

    def advance(self, amount: float) -> None:
        self._clock.advance(amount)

    def getDelayedCalls(self):
        return self._clock.getDelayedCalls()

    def callLater(self, delay, f, *args, **kw):
        call = self._clock.callLater(delay, f, *args, **kw)
        for entry in [w for w in self._waiters if w[0] == delay]:
            self._waiters.remove(entry)
            # In a later turn: the code that scheduled the call finishes first.
            the_reactor().callLater(0, entry[1].callback, call)
        return call

    def scheduled(self, delay: float) -> defer.Deferred:
        """Fires with a pending call of exactly ``delay`` seconds from now,
        at once if there is one."""
        now = self.seconds()
        for call in self._clock.getDelayedCalls():
            if call.active() and call.getTime() - now == delay:
                return defer.succeed(call)
        d = defer.Deferred()
        self._waiters.append((delay, d))
        return d


def the_reactor():
    """The global reactor that pytest-twisted runs, imported when used."""
    from twisted.internet import reactor

    return reactor
