"""Redis going away while a node sends several commands at once is not an
error to log with a traceback: the node reconnects on its own."""

from __future__ import annotations

from twisted.internet.defer import FirstError
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError

from reactorapp.cluster.node import ClusterNode


def logged(call) -> list:
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        call()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_namespace") == "reactorapp.cluster.node"]


def test_a_lost_connection_behind_gather_results_is_not_a_failure():
    lost = Failure(FirstError(Failure(RedisConnectionError("Lost connection")), 0))
    events = logged(lambda: ClusterNode._ebRedis(None, lost, "sending a heartbeat"))
    assert [e["log_level"].name for e in events] == ["debug"]


def test_other_errors_are_still_logged_with_their_traceback():
    broken = Failure(FirstError(Failure(ValueError("bad reply")), 0))
    events = logged(lambda: ClusterNode._ebRedis(None, broken, "sending a heartbeat"))
    assert [e["log_level"].name for e in events] == ["critical"]
