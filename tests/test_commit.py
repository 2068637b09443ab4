"""`Commit`: the one wait a store hands everybody who writes during a batch."""

from __future__ import annotations

import pytest
from twisted.python.failure import Failure

from reactorapp.hub.commit import Commit


def test_callbacks_run_once_in_order_when_the_batch_is_durable():
    commit, calls = Commit(), []
    commit.add(lambda failure: calls.append(("a", failure)))
    commit.add(lambda failure: calls.append(("b", failure)))
    assert calls == [] and not commit.done
    commit.fire()
    commit.fire()  # a store settles a batch once; a second fire runs nothing again
    assert calls == [("a", None), ("b", None)]
    commit.add(lambda failure: calls.append(("late", failure)))
    assert calls[-1] == ("late", None)  # added after: runs at once


def test_a_failed_batch_gives_every_waiter_the_failure():
    commit, failures = Commit(), []
    commit.add(failures.append)
    commit.fire(Failure(OSError("disk full")))
    commit.add(failures.append)
    assert [f.value.args for f in failures] == [("disk full",), ("disk full",)]
    assert Commit.failed(OSError("closed")).failure.check(OSError)


def test_one_failing_callback_does_not_keep_the_others_from_running():
    commit, calls = Commit(), []

    def broken(failure):
        raise RuntimeError("bug")

    commit.add(broken)
    commit.add(calls.append)
    commit.fire()
    assert calls == [None]


def test_each_deferred_is_its_own_so_callers_can_chain_freely():
    commit = Commit()
    first, second = commit.deferred(), commit.deferred()
    first.addCallback(lambda _: "changed by the first caller")
    results = []
    second.addCallback(results.append)
    commit.fire()
    assert results == [None]
    failed = Commit.failed(OSError("disk full")).deferred()
    with pytest.raises(OSError):
        failed.result.raiseException()
    failed.addErrback(lambda _: None)
