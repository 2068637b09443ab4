"""Two cluster nodes (publishers on one, subscribers on the other) against one node.

Starts a redis-server of its own (append-only, ``appendfsync always``, in a
temporary directory, a free port) and reactorapp nodes under twistd, then
runs bench/loadgen.py's ``fanin`` (QoS 0), ``qos1`` and ``latency``
scenarios three ways:

- ``one node``: no --cluster, publishers and subscribers on the same node;
- ``one node, --cluster``: a cluster of one (what joining costs a node that
  has no peers: nothing crosses Redis);
- ``two nodes``: publishers on node A, the subscriber on node B: every
  message crosses Redis (A's XADD, B's XREAD and XDEL);
- ``two nodes, appendfsync everysec``: the same with Redis syncing its
  file once a second (what the wait for the disk costs; a PUBACK then
  survives a node's death but not Redis's).

For each: delivered messages per second, latency p50/p99 (latency
scenario, 2,000 messages/s), and CPU per delivered message of the broker
processes together (both nodes and redis-server, from /proc, over the whole
loadgen run).

Usage: ``python bench/cluster.py [--duration 3] [--write]``; ``--write``
replaces the cluster section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOADGEN = REPO / "bench" / "loadgen.py"
TIMEOUT = 30.0
COMMAND = "python bench/cluster.py --write"
BEGIN = "<!-- cluster: begin -->"
END = "<!-- cluster: end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_port(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a child's port; not in a test
    raise TimeoutError(f"nothing listens on {port}")


class Process:
    def __init__(self, command: list[str], port: int, directory: Path, name: str) -> None:
        self.name = name
        self.log = directory / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=directory, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env)
        self.port = port
        wait_for_port(self.process, port, self.log)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis(directory: Path, fsync: str = "always") -> Process:
    port = free_port()
    return Process([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                    "--dir", str(directory), "--save", "", "--appendonly", "yes",
                    "--appendfsync", fsync], port, directory, "redis")


def node(directory: Path, name: str, cluster: str | None) -> Process:
    port = free_port()
    path = directory / name
    path.mkdir()
    extra = ["--cluster", cluster, "--node-name", name] if cluster else ["--store", "memory"]
    return Process([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                    "--pidfile", "", "-n", "reactorapp",
                    "--mqtt", f"tcp:{port}:interface=127.0.0.1", "--http", "none",
                    "--sys-interval", "0", "--data", str(path / "data"),
                    "--max-queued-messages", "1000000", *extra], port, path, name)


def loadgen(scenario: str, port: int, sub_port: int, duration: float,
            processes: list[Process]) -> dict:
    before = [p.cpu() for p in processes]
    redis_before = sum(p.cpu() for p in processes if p.name == "redis")
    output = subprocess.run(
        [sys.executable, str(LOADGEN), "--port", str(port), "--sub-port", str(sub_port),
         "--scenario", scenario, "--duration", str(duration), "--warmup", "1"],
        capture_output=True, text=True, timeout=120)
    used = sum(p.cpu() for p in processes) - sum(before)
    redis_used = sum(p.cpu() for p in processes if p.name == "redis") - redis_before
    result = json.loads(output.stdout)
    delivered = result.get("delivered") or 0
    if delivered:
        result["cpu_us_per_msg"] = round(used * 1e6 / delivered, 1)
        result["redis_us_per_msg"] = round(redis_used * 1e6 / delivered, 1)
    return result


SETUPS = ("one node", "one node, --cluster", "two nodes",
          "two nodes, appendfsync everysec")


def setup(kind: str, directory: Path):
    """The processes of one set-up, and the (publish port, subscribe port)."""
    if kind == "one node":
        a = node(directory, "alone", None)
        return [a], (a.port, a.port)
    server = redis(directory, "everysec" if "everysec" in kind else "always")
    url = f"redis://127.0.0.1:{server.port}/0"
    a = node(directory, "a", url)
    if kind == "one node, --cluster":
        return [server, a], (a.port, a.port)
    b = node(directory, "b", url)
    # Wait until A knows B's subscriptions: the loadgen subscribes first,
    # and B announces its filters within a Redis round trip; a second's
    # warm-up covers it.
    return [server, a, b], (a.port, b.port)


def measure(duration: float) -> dict:
    results = {}
    for kind in SETUPS:
        directory = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        processes, (pub, sub) = setup(kind, directory)
        try:
            results[kind] = {scenario: loadgen(scenario, pub, sub, duration, processes)
                             for scenario in ("fanin", "qos1", "latency")}
        finally:
            for process in reversed(processes):
                process.stop()
            shutil.rmtree(directory, ignore_errors=True)
        print(kind, json.dumps(results[kind]), file=sys.stderr)
    return results


def table(results: dict, duration: float) -> str:
    rows = ["| set-up | QoS 0 msg/s | QoS 1 msg/s | p50 µs | p99 µs"
            " | CPU µs/msg QoS 0 (Redis) | CPU µs/msg QoS 1 (Redis) | lost |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, r in results.items():
        lost = sum(r[s].get("lost", 0) for s in ("fanin", "qos1"))
        rows.append(f"| {kind} | {r['fanin'].get('rate', '-'):,} | {r['qos1'].get('rate', '-'):,}"
                    f" | {r['latency'].get('p50_us', '-')} | {r['latency'].get('p99_us', '-')}"
                    f" | {r['fanin'].get('cpu_us_per_msg', '-')}"
                    f" ({r['fanin'].get('redis_us_per_msg', '-')})"
                    f" | {r['qos1'].get('cpu_us_per_msg', '-')}"
                    f" ({r['qos1'].get('redis_us_per_msg', '-')}) | {lost} |")
    cpus = os.cpu_count()
    return "\n".join([
        BEGIN,
        f"Measured with `{COMMAND}` ({duration:g} s per scenario after a 1 s warm-up;"
        f" {platform.machine()}, {cpus} CPUs, Python {platform.python_version()},"
        f" {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}"
        f" with `appendfsync always`). QoS 0 is `fanin` (4 publishers, 1 subscriber), QoS 1"
        " is `qos1` (4 publishers with 100 in flight each, 1 subscriber), latency is one"
        " publisher at 2,000 msg/s. CPU is all broker processes together (both nodes and"
        " redis-server) per delivered message, Redis's own part in brackets. `lost` counts"
        " QoS 0 and QoS 1 messages sent and never delivered (the latency scenario's first"
        " messages, sent before the subscriber's filter reached the other node, are not"
        " counted).",
        "",
        *rows,
        END,
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--write", action="store_true",
                        help="replace the cluster section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    results = measure(args.duration)
    text = table(results, args.duration)
    print(text)
    if args.write:
        path = REPO / "docs" / "benchmarks.md"
        doc = path.read_text()
        if BEGIN in doc:
            doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip() + "\n\n## Two nodes on Redis\n\n" + text + "\n"
        path.write_text(doc)
        (REPO / "docs" / "benchmarks-cluster.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
