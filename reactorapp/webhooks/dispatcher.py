"""Sending deliveries over HTTP with treq: attempts, timeouts, back-off.

One `Dispatcher` serves every rule through one treq `HTTPClient`, whose
agent keeps persistent connections in one shared `HTTPConnectionPool`.

The policy of one delivery:

- any 2xx is success;
- connection errors, timeouts, 5xx and 429 are tried again after an
  exponential back-off with jitter (`RetryPolicy.delay`), or after the
  ``Retry-After`` the receiver asked for with a 429 or 503;
- any other answer (3xx, 4xx) will not get better by itself: no retry;
- after the last attempt the delivery is reported dead, for the outbox to
  move to the dead-letter list.

How many deliveries of a rule are under way at once is the outbox's business
(`reactorapp.webhooks.outbox`); the dispatcher sends what it is given.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from treq.client import HTTPClient
from zope.interface import implementer

from reactorapp.webhooks.payload import render

log = Logger()

#: Longest Retry-After honoured, in seconds; a larger one is cut to this.
MAX_RETRY_AFTER = 3600.0


def make_client(reactor, *, persistent: bool = True, max_per_host: int = 64,
                connect_timeout: float = 10.0) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client whose connections are kept in one pool.

    With ``persistent`` false every request opens (and closes) its own
    connection, which is only useful to measure what the pool saves.
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = max_per_host
    pool.retryAutomatically = False  # retries are ours, with back-off
    agent = Agent.usingEndpointFactory(reactor, _QuietEndpoints(reactor, connect_timeout),
                                       pool=pool)
    return HTTPClient(agent, data_to_body_producer=_Body), pool


@implementer(IBodyProducer)
class _Body:
    """A request body written at once, in the same reactor turn as the
    headers, so that both go out in one write.

    treq's default producer writes the body from a cooperator task a turn
    later: a scheduled call and a second small write for every request.
    Measured with bench/bench_webhooks.py, this one takes about a quarter
    less of the sender's CPU per delivery.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IAgentEndpointFactory)
class _QuietEndpoints:
    """The endpoints `Agent` would make (TCP, TLS checked as a browser
    does), whose connections do not log.

    Twisted logs the start and stop of every client connection's factory;
    with one connection per request (no pool), that is two lines a delivery.
    """

    def __init__(self, reactor, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {uri.host!r} is not ASCII") from None
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
        return _Quiet(endpoint)


@implementer(IStreamClientEndpoint)
class _Quiet:
    """An endpoint whose factories are told not to log their start and stop."""

    def __init__(self, endpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory):
        factory.noisy = False
        return self._endpoint.connect(factory)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request came to."""

    ok: bool
    retry: bool
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """What a whole delivery came to, after one or more attempts."""

    delivered: bool
    attempts: int
    reason: str
    #: The message expired before it got through: dropped, not a dead letter.
    expired: bool = False


class Dispatcher:
    """Sends one delivery until it succeeds or runs out of attempts."""

    def __init__(self, clock, client: HTTPClient, *, jitter=random.random) -> None:
        self.clock = clock
        self.client = client
        self.jitter = jitter

    def deliver(self, target, delivery) -> Deferred:
        """Try ``delivery`` until it succeeds or is dead; fire with a `Result`.

        ``target`` is the rule's outbox: its ``rule`` is read again before
        each attempt (a rule changed through the API applies to the next
        attempt) and its ``metrics`` are counted. Cancelling the Deferred
        stops the delivery where it is, leaving it to the outbox.
        """
        return Deferred.fromCoroutine(self._deliver(target, delivery))

    async def _deliver(self, target, delivery) -> Result:
        metrics = target.metrics
        attempt = 0
        while True:
            if attempt and delivery.expired(self.clock.seconds()):
                # Expired while waiting for another attempt [MQTT-3.3.2-5].
                return Result(False, attempt, "the message expired", expired=True)
            attempt += 1
            rule = target.rule
            outcome = await self.send(rule, delivery, attempt, metrics)
            if outcome.ok:
                metrics.delivered.inc()
                metrics.latency.observe(max(0.0, self.clock.seconds() - delivery.queued_at))
                return Result(True, attempt, outcome.reason)
            metrics.failed.inc()
            if not outcome.retry or attempt >= rule.retry.max_attempts:
                return Result(False, attempt, outcome.reason)
            if outcome.retry_after is not None:
                delay = outcome.retry_after
            else:
                delay = rule.retry.delay(attempt, self.jitter())
            log.debug("Webhook {rule} delivery {id}: {reason}; attempt {next} in {delay:.3f}s",
                      rule=rule.name, id=delivery.id, reason=outcome.reason,
                      next=attempt + 1, delay=delay)
            metrics.retries.inc()
            await deferLater(self.clock, delay)

    def send(self, rule, delivery, attempt: int, metrics) -> Deferred:
        """One request, bounded by the rule's timeout; fire with an `Attempt`."""
        headers, body = render(rule, delivery, attempt, self.clock.seconds())
        metrics.in_flight.inc()
        d = self.client.request(rule.method, rule.url, headers=headers, data=body,
                                allow_redirects=False, unbuffered=True)
        d.addCallback(self._cbResponse)
        d.addTimeout(rule.timeout, self.clock)
        d.addCallbacks(self._cbClassify, self._ebClassify, errbackArgs=(rule,))
        d.addBoth(self._done, metrics)
        return d

    def _cbResponse(self, response):
        """Read and discard the body, which frees the connection for the pool."""
        discard = _Discard()
        response.deliverBody(discard)
        return discard.finished.addCallback(lambda _: response)

    def _cbClassify(self, response) -> Attempt:
        code = response.code
        if 200 <= code < 300:
            return Attempt(True, False, f"HTTP {code}")
        reason = f"HTTP {code} {response.phrase.decode('latin-1')}".rstrip()
        if code != 429 and code < 500:
            return Attempt(False, False, reason)
        retry_after = None
        if code in (429, 503):
            retry_after = retry_after_seconds(
                response.headers.getRawHeaders(b"retry-after", [None])[0], self.clock.seconds())
        return Attempt(False, True, reason, retry_after)

    def _ebClassify(self, failure, rule) -> Attempt:
        if failure.check(CancelledError):
            return failure  # the outbox stopped the delivery
        if failure.check(TimeoutError):
            return Attempt(False, True, f"no answer within {rule.timeout:g} s")
        error = failure.value
        reasons = getattr(error, "reasons", None)  # ResponseFailed and friends
        if reasons:
            error = reasons[0].value
        text = str(error).strip() or type(error).__name__
        return Attempt(False, True, f"{type(error).__name__}: {text}"[:300])

    @staticmethod
    def _done(result, metrics):
        metrics.in_flight.dec()
        return result


def retry_after_seconds(value: bytes | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date)."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isascii() and text.isdigit():  # not '²': isdigit alone takes it
        seconds = float(text)  # a long run of digits is inf, then the cap
    else:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _Discard(Protocol):
    """Swallows a response body; cancelling it closes the connection."""

    def __init__(self) -> None:
        self.finished = Deferred(self._cancel)

    def _cancel(self, _d) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)
