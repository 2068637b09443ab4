"""Webhook deliveries per second to a local receiver, with and without the
connection pool.

The receiver is a twisted.web Site in a child process (so it does not share
the sender's reactor thread) that answers every POST with 204. The sender is
the real thing minus MQTT: a `Hub`, the `Outbox` with an in-memory store and
the treq `Dispatcher`. One rule; ``--count`` QoS 1 messages are published at
once and the clock runs until the last one is answered. The run is repeated
with a pool that keeps connections open (as the hub runs) and with one that
opens a new connection for every request. Besides the rate, each run reports
the sender's CPU time per delivery, which varies less than the rate on a
machine that is busy with other work.

Usage::

    python bench/bench_webhooks.py                      # both, 5000 deliveries each
    python bench/bench_webhooks.py --count 20000 --concurrency 32
    python bench/bench_webhooks.py --json               # one JSON object

Needs nothing but this checkout (run from its root).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def serve() -> None:
    """The receiver (child process): print the port, answer 204 forever."""
    from twisted.internet import reactor
    from twisted.web import resource, server

    class Sink(resource.Resource):
        isLeaf = True

        def render_POST(self, request):
            request.content.read()
            request.setResponseCode(204)
            return b""

    site = server.Site(Sink())
    site.noisy = False
    site.log = lambda request: None  # no access log: it would be the bottleneck
    port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
    print(port.getHost().port, flush=True)
    reactor.run()


def run_once(url: str, count: int, concurrency: int, persistent: bool, payload: bytes) -> dict:
    """Publish ``count`` messages to one rule; time until the last 2xx."""
    from prometheus_client import CollectorRegistry
    from twisted.internet import defer, reactor

    from reactorapp.hub.hub import Hub
    from reactorapp.hub.message import Message
    from reactorapp.webhooks.dispatcher import Dispatcher, make_client
    from reactorapp.webhooks.memorystore import MemoryWebhookStore
    from reactorapp.webhooks.metrics import WebhookMetrics
    from reactorapp.webhooks.outbox import Outbox
    from reactorapp.webhooks.rules import parse_rule

    client, pool = make_client(reactor, persistent=persistent, max_per_host=concurrency)
    done = defer.Deferred()
    results = {"delivered": 0, "failed": 0}

    class Counting(Dispatcher):
        def deliver(self, target, delivery):
            return super().deliver(target, delivery).addCallback(self._count)

        @staticmethod
        def _count(result):
            results["delivered" if result.delivered else "failed"] += 1
            if results["delivered"] + results["failed"] == count:
                done.callback(None)
            return result

    hub = Hub(reactor)
    outbox = Outbox(hub, MemoryWebhookStore(), Counting(reactor, client), reactor,
                    WebhookMetrics(CollectorRegistry()), queue_size=count)
    outbox.add_rule(parse_rule({
        "name": "bench", "filters": ["bench/#"], "url": url,
        "max_concurrency": concurrency, "retry": {"max_attempts": 1},
    }))

    async def measure():
        started = time.perf_counter()
        cpu = time.process_time()
        for i in range(count):
            hub.publish(Message(f"bench/{i % 16}", payload, 1))
        await done
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        outbox.stop()
        await pool.closeCachedConnections()
        return elapsed, cpu

    elapsed, cpu = _run(reactor, measure)
    return {
        "pool": persistent, "count": count, "concurrency": concurrency,
        "delivered": results["delivered"], "failed": results["failed"],
        "seconds": round(elapsed, 3), "per_second": round(results["delivered"] / elapsed, 1),
        "sender_cpu": round(cpu / elapsed, 2),
        "sender_cpu_ms_per_delivery": round(1000 * cpu / max(1, results["delivered"]), 3),
    }


def _run(reactor, coroutine_function):
    """Run one coroutine on the reactor and return its result."""
    from twisted.internet import defer

    outcome = {}

    def go():
        d = defer.Deferred.fromCoroutine(coroutine_function())
        d.addBoth(lambda result: outcome.__setitem__("result", result))
        d.addBoth(lambda _: reactor.callLater(0, reactor.stop))

    reactor.callWhenRunning(go)
    reactor.run()
    result = outcome["result"]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="deliveries per run")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="the rule's max_concurrency (requests under way)")
    parser.add_argument("--payload", type=int, default=64, help="payload bytes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", choices=("pool", "no-pool"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()
    if args.one:  # one run in a fresh process: a reactor runs once per process
        result = run_once(args.url, args.count, args.concurrency, args.one == "pool",
                          b"x" * args.payload)
        print(json.dumps(result))
        return None

    receiver = subprocess.Popen([sys.executable, __file__, "--serve"],
                                stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{receiver.stdout.readline().strip()}/hook"
        runs = []
        for mode in ("pool", "no-pool"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--url", url,
                 "--count", str(args.count), "--concurrency", str(args.concurrency),
                 "--payload", str(args.payload)],
                check=True, capture_output=True, text=True, timeout=600)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        receiver.terminate()
        receiver.wait(10)
    report = {
        "runs": runs,
        "speedup": round(runs[0]["per_second"] / runs[1]["per_second"], 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python " + " ".join(sys.argv),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return None
    for run in runs:
        label = "with the pool   " if run["pool"] else "without the pool"
        print(f"{label}: {run['per_second']:>8.1f} deliveries/s  ({run['delivered']} in"
              f" {run['seconds']} s, {run['failed']} failed; sender CPU"
              f" {run['sender_cpu_ms_per_delivery']:.2f} ms a delivery, busy {run['sender_cpu']:.0%})")
    print(f"pool speed-up: x{report['speedup']}  ({report['machine']})")
    return None


if __name__ == "__main__":
    main()
