"""The moment a batch of writes becomes durable, shared by all who wait for it.

A store commits writes in batches, and hundreds of acknowledgements can wait
for one batch. A Deferred for each of them costs more than the write itself,
so a store hands every writer of a batch the same `Commit`, and a connection
registers once per batch however many of its messages are in it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
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
