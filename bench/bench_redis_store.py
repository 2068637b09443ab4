"""The Redis store against the SQLite store, in this process: how fast QoS 1
messages are made durable for a persistent session, and at what CPU cost.

Each round queues ``--batch`` messages for one session in one reactor turn
(what one read of a busy publisher does), waits for the commit, then
forgets them (as PUBACKs would), and waits again. Redis is a redis-server
started here with ``appendonly yes`` and ``appendfsync always`` (or
``--fsync everysec``); SQLite is the store of ``--store sqlite``, in a
temporary directory. Figures: messages per second made durable, and the
CPU time of this process (all threads; the redis-server's is not counted)
per message.

Usage: ``python bench/bench_redis_store.py [--messages 20000] [--batch 100]
[--fsync always|everysec]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from reactorapp.cluster.redisstore import RedisStore  # noqa: E402
from reactorapp.hub.message import Message  # noqa: E402
from reactorapp.store.sqlite import SQLiteStore  # noqa: E402
from tests.redisserver import redis_server  # noqa: E402


async def run(store, messages: int, batch: int) -> tuple[float, float]:
    payload = b"x" * 64
    seq = 0
    started, cpu = time.perf_counter(), time.process_time()
    while seq < messages:
        first = seq + 1
        for _ in range(batch):
            seq += 1
            store.enqueue("bench", seq, Message("bench/store", payload, 1), 1, False)
        await store.pending_commit().deferred()
        for done in range(first, seq + 1):
            store.dequeue("bench", done)
        await store.pending_commit().deferred()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return messages / elapsed, 1e6 * cpu / messages


async def main(options) -> None:
    with tempfile.TemporaryDirectory() as directory:
        sqlite = SQLiteStore(directory, reactor)
        sqlite.load()
        sqlite.add_session("bench")
        rate, cpu = await run(sqlite, options.messages, options.batch)
        await sqlite.close()
    print(f"sqlite             {rate:9.0f} msg/s  {cpu:6.1f} µs CPU/msg")
    with redis_server("--appendfsync", options.fsync) as server:
        redis = RedisStore(reactor, port=server.port, node="bench")
        redis.load()
        redis.add_session("bench")
        rate, cpu = await run(redis, options.messages, options.batch)
        await redis.close()
    print(f"redis ({options.fsync:8}) {rate:9.0f} msg/s  {cpu:6.1f} µs CPU/msg")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--fsync", choices=("always", "everysec"), default="always")
    options = parser.parse_args()
    task.react(lambda _reactor: Deferred.fromCoroutine(main(options)))
