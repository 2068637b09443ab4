"""The moment a message is placed: what an acknowledgement waits for.

A subscriber that wrote a message to storage returns, from
`ISubscriber.deliver`, the `Commit` that makes it durable; the hub combines
what its subscribers return into one `Commit` (or None: placed already), and
a front end sends its acknowledgement once that fires.

A store commits writes in batches, and hundreds of acknowledgements can wait
for one batch. A Deferred for each of them costs more than the write itself,
so a store hands every writer of a batch the same `Commit`, and a connection
registers once per batch however many of its messages are in it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class Commit:
    """Plain callbacks run once, in the reactor thread, when a batch is
    durable (with None) or cannot be made durable (with a Failure)."""

    __slots__ = ("done", "failure", "_callbacks")

    def __init__(self) -> None:
        self.done = False
        self.failure: Failure | None = None
        self._callbacks: list = []

    @classmethod
    def failed(cls, failure: Failure | BaseException) -> Commit:
        """A commit that already failed, for a store that cannot write."""
        commit = cls()
        commit.fire(failure if isinstance(failure, Failure) else Failure(failure))
        return commit

    @classmethod
    def after(cls, deferred: Deferred) -> Commit:
        """A commit settled when ``deferred`` fires (a subscriber over its
        bounds): rare, so that front ends wait on one type only."""
        commit = cls()
        deferred.addCallbacks(lambda _: commit.fire(), commit.fire)
        return commit

    def add(self, callback) -> None:
        """Call ``callback(failure_or_None)`` once the batch is settled (now,
        if it already is)."""
        if self.done:
            callback(self.failure)
        else:
            self._callbacks.append(callback)

    def deferred(self) -> Deferred:
        """A Deferred of its own for this commit, for callers that chain."""
        d = Deferred()
        self.add(lambda failure: d.callback(None) if failure is None else d.errback(failure))
        return d

    def fire(self, failure: Failure | None = None) -> None:
        """Settle the commit and run the callbacks, each once."""
        self.done, self.failure = True, failure
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(failure)
            except Exception:
                log.failure("A callback of {commit!r} failed", commit=self)


def placed(commit: Commit | None, waits: list) -> Deferred:
    """One Deferred for a message that must be durable (``commit``, unless
    None) and that subscribers took over their bounds (``waits``, their
    Deferreds, at least one): back-pressure, the answer waits for all."""
    if commit is not None:
        waits = [*waits, commit.deferred()]
    return waits[0] if len(waits) == 1 else gatherResults(waits, consumeErrors=True)
