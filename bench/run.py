"""Benchmark reactorapp next to Mosquitto and amqtt, on this machine, in one run.

Each broker is started fresh for each scenario on 127.0.0.1, pinned to one
CPU, and driven by bench/loadgen.py pinned to another. The figures, the
ratios reactorapp/Mosquitto and reactorapp/amqtt, the machine, the versions
and the command go to docs/benchmarks.md, with a chart in
docs/benchmarks.png and the raw results in docs/benchmarks.json.

The brokers:

- reactorapp: ``twistd -n reactorapp`` from this checkout (this interpreter);
- Mosquitto: Debian's package (``apt-get install -y mosquitto``, as root);
  the runner writes its own config (loopback listener, persistence off,
  max_queued_messages and max_inflight_messages as ours) and never uses the
  system service;
- amqtt: from PyPI, in its own virtualenv (default /tmp/amqtt-venv) so its
  dependencies stay out of ours.

``--setup`` installs the last two (apt-get needs root) and stops the Debian
service that the package starts. A broker that is not installed is skipped.
Scenario 5 holds 10,000 connections: the runner raises the open-file limit
of the brokers and the generator to 20,000 (above the hard limit only as
root). Scenarios 1-3 also report broker CPU per message, which a busy
machine moves much less than the rates; bench/hotpath.py measures our own
per-message cost in process.

Scenarios 6-8 are unpaced: publishers write ``--messages`` numbered QoS 0
messages each as fast as TCP takes them, and the figures are what reached
the subscribers that read (delivered, lost, out of order), broker CPU per
delivered message and the broker's peak RSS. Scenario 9 opens
``--storm-connections`` connections at once and reports the rate and the
slowest handshake.

``--tree DIR`` runs reactorapp from another checkout instead of this one;
``--compare-tree DIR`` adds one next to it (a before/after in one run).

Examples:

    python bench/run.py --setup            # once: mosquitto + the amqtt venv
    python bench/run.py                    # the whole comparison (~7 minutes)
    python bench/run.py --quick            # one shorter run of each (~2 minutes)
    python bench/run.py --brokers reactorapp --scenarios fanin --no-write
    python bench/run.py --scenarios blast-fanin,blast-fanout,blast-stuck,storm --no-write
    python bench/run.py --compare-tree /tmp/before --scenarios blast-fanin --no-write
    python bench/run.py --profile py-spy --scenarios fanin    # sampled, cheap
    python bench/run.py --profile cprofile --scenarios fanout # pstats summary
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402

SCENARIOS = {
    "fanin": "1. QoS 0 fan-in, 4 publishers -> 1 subscriber",
    "fanout": "2. QoS 0 fan-out, 1 publisher -> 16 subscribers",
    "qos1": "3. QoS 1 end to end, 4 publishers -> 1 subscriber",
    "latency": "4. latency at a fixed rate, QoS 0",
    "idle": "5. idle connections",
    "blast-fanin": "6. unpaced QoS 0 fan-in, 4 publishers -> 1 subscriber",
    "blast-fanout": "7. unpaced QoS 0 fan-out, 1 publisher -> 16 subscribers",
    "blast-stuck": "8. unpaced fan-in, a second subscriber that never reads",
    "storm": "9. connect storm, all clients at once",
}
BLASTS = ("blast-fanin", "blast-fanout", "blast-stuck")
BROKERS = ("reactorapp", "mosquitto", "amqtt")
MAX_INFLIGHT = 20
MAX_QUEUED = 1000
FD_LIMIT = 20_000


# -- brokers -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pinned(cpu: int):
    """preexec_fn: pin to ``cpu`` and allow enough file descriptors for scenario 5."""
    def preexec() -> None:
        os.sched_setaffinity(0, {cpu})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max(soft, FD_LIMIT)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return preexec


class Broker:
    name = ""

    def __init__(self, args) -> None:
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.port = 0
        self.command: list[str] = []

    def available(self) -> str | None:
        """None if it can run, else why not."""
        return None

    def version(self) -> str:
        return "?"

    def argv(self, port: int, workdir: Path, profile: str | None = None) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict | None:
        return None

    def start(self, cpu: int, profile: str | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        self.command = self.argv(self.port, self.workdir, profile)
        log = open(self.workdir / "broker.log", "wb")
        self.proc = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pinned(cpu))
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(0.3)  # let start-up settle before measuring
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen within 30 s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "broker.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.workdir is not None and not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Reactorapp(Broker):
    name = "reactorapp"

    def __init__(self, args, tree: Path = REPO, label: str = "reactorapp") -> None:
        super().__init__(args)
        self.tree = tree
        self.name = label

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env

    def options(self) -> set[str]:
        """The flags this checkout's Config declares (they change over time)."""
        code = ("from reactorapp.config import SETTINGS; "
                "print(' '.join(s.key for s in SETTINGS))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env(), cwd=self.tree,
                             capture_output=True, text=True, check=True).stdout
        return set(out.split())

    def argv(self, port, workdir, profile=None):
        options = self.options()
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        if profile == "cprofile":
            twistd += ["--profile", str(self.args.profile_dir / f"{self.current}.pstats"),
                       "--profiler", "cprofile", "--savestats"]
        flags = ["--mqtt", f"tcp:{port}:interface=127.0.0.1", "--data", str(workdir / "data")]
        wanted = {"http": "none", "sys-interval": "0", "max-inflight": str(MAX_INFLIGHT),
                  "max-queued-messages": str(MAX_QUEUED)}
        for key, value in wanted.items():
            if key in options:
                flags += [f"--{key}", value]
        return twistd + ["-n", "reactorapp"] + flags

    def version(self) -> str:
        code = "import reactorapp, twisted; print(reactorapp.__version__, twisted.__version__)"
        out = subprocess.run([sys.executable, "-c", code], env=self.env(), cwd=self.tree,
                             capture_output=True, text=True).stdout.split()
        where = "" if self.tree == REPO else f", from {self.tree}"
        return (f"{out[0]} (Twisted {out[1]}, Python {platform.python_version()}{where})"
                if out else "?")


class Mosquitto(Broker):
    name = "mosquitto"

    def binary(self) -> str | None:
        return shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)

    def available(self):
        return None if self.binary() else "mosquitto is not installed (see --setup)"

    def version(self) -> str:
        out = subprocess.run([self.binary(), "-h"], capture_output=True, text=True).stdout
        first = out.splitlines()[0] if out else "?"
        return first.replace("mosquitto version ", "") + " (Debian package)"

    def argv(self, port, workdir, profile=None):
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"max_queued_messages {MAX_QUEUED}\n"
            f"max_inflight_messages {MAX_INFLIGHT}\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n")
        os.chmod(workdir, 0o755)  # mosquitto drops root for its own user
        os.chmod(conf, 0o644)
        return [self.binary(), "-c", str(conf)]


class Amqtt(Broker):
    name = "amqtt"

    def binary(self) -> Path:
        return Path(self.args.amqtt_venv) / "bin" / "amqtt"

    def available(self):
        return None if self.binary().exists() else (
            f"amqtt is not installed in {self.args.amqtt_venv} (see --setup)")

    def version(self) -> str:
        python = Path(self.args.amqtt_venv) / "bin" / "python"
        out = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m, platform; "
             "print(m.version('amqtt'), platform.python_version())"],
            capture_output=True, text=True).stdout.split()
        return f"{out[0]} (Python {out[1]}, own venv)" if out else "?"

    def argv(self, port, workdir, profile=None):
        conf = workdir / "amqtt.yaml"
        # amqtt has no in-flight or queue limits to set.
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n")
        return [str(self.binary()), "-c", str(conf)]


# -- running ------------------------------------------------------------------------

def wait_for_quiet(limit: float = 20.0, threshold: float = 0.25) -> float:
    """Wait (at most ``limit`` s) until the rest of the machine uses less than
    ``threshold`` of a CPU; return what it used in the last half second."""
    deadline = time.monotonic() + limit
    while True:
        before = loadgen.machine_busy()
        time.sleep(0.5)
        after = loadgen.machine_busy()
        if before is None or after is None:
            return 0.0
        used = (after - before) / 0.5
        if used < threshold or time.monotonic() > deadline:
            return used


def run_scenario(broker: Broker, scenario: str, args) -> dict:
    """Start the broker, drive one scenario from the load CPU, stop the broker."""
    broker.current = scenario
    wait_for_quiet()
    profiler = None
    broker.start(args.broker_cpu, args.profile if isinstance(broker, Reactorapp) else None)
    try:
        if args.profile == "py-spy" and isinstance(broker, Reactorapp):
            stacks = args.profile_dir / f"{scenario}.stacks"
            profiler = subprocess.Popen(
                ["py-spy", "record", "--pid", str(broker.proc.pid), "--rate", "250",
                 "--output", str(stacks), "--format", "raw", "--function"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_pinned(args.load_cpu))
            time.sleep(1.0)
        command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(broker.port),
                   "--scenario", scenario, "--broker-pid", str(broker.proc.pid),
                   "--cpu", str(args.load_cpu), "--duration", str(args.duration),
                   "--warmup", str(args.warmup)]
        if scenario == "idle":
            command += ["--connections", str(args.connections),
                        "--time-limit", str(args.idle_time_limit)]
        if scenario == "latency":
            command += ["--rate", str(args.rate)]
        if scenario in BLASTS:
            command += ["--messages", str(args.messages), "--quiet", str(args.blast_quiet),
                        "--time-limit", str(args.blast_time_limit)]
        if scenario == "storm":
            command += ["--connections", str(args.storm_connections),
                        "--concurrency", str(args.storm_concurrency),
                        "--time-limit", str(args.idle_time_limit)]
        timeout = args.duration + args.warmup + 60 + (
            args.idle_time_limit if scenario in ("idle", "storm") else
            args.blast_time_limit if scenario in BLASTS else 0)
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_pinned(args.load_cpu))
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            result = {"error": f"load generator failed: {done.stderr.strip()[-500:]}"}
        if broker.proc.poll() is not None:
            result["error"] = f"broker died:\n{broker.log_tail()}"
        return result
    except subprocess.TimeoutExpired:
        return {"error": "load generator did not finish in time"}
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            try:
                profiler.wait(30)
            except subprocess.TimeoutExpired:
                profiler.kill()
        broker.stop()


def median_result(results: list[dict]) -> dict:
    """Per-field median of repeated runs (the first run's non-numeric fields)."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[-1]
    merged = dict(good[0])
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in good if key in r)
    merged["runs"] = len(good)
    return merged


def run_all(brokers: list[Broker], args) -> dict:
    """Each scenario on each broker; repeats take turns (A B A B, not A A B B)
    so that a noisy moment on the machine does not fall on one broker only."""
    results: dict = {b.name: {} for b in brokers}
    for scenario in args.scenarios:
        runs: dict[str, list] = {b.name: [] for b in brokers}
        for _ in range(args.repeat):
            for broker in brokers:
                print(f"  {broker.name:>20} {scenario:<8}", end=" ", flush=True)
                started = time.monotonic()
                try:
                    result = run_scenario(broker, scenario, args)
                except RuntimeError as e:
                    result = {"error": str(e)}
                print(f"{time.monotonic() - started:5.1f}s  {summary(scenario, result)}", flush=True)
                runs[broker.name].append(result)
        for broker in brokers:
            results[broker.name][scenario] = median_result(runs[broker.name])
    return results


# -- reporting ----------------------------------------------------------------------

#: (scenario, field, label, unit, higher is better)
FIGURES = [
    ("fanin", "rate", "1. fan-in QoS 0, delivered", "msg/s", True),
    ("fanout", "rate", "2. fan-out QoS 0, deliveries", "msg/s", True),
    ("qos1", "rate", "3. QoS 1 end to end, delivered", "msg/s", True),
    ("fanin", "broker_us_per_msg", "1. fan-in, broker CPU per message", "µs", False),
    ("fanout", "broker_us_per_msg", "2. fan-out, broker CPU per delivery", "µs", False),
    ("qos1", "broker_us_per_msg", "3. QoS 1, broker CPU per message", "µs", False),
    ("latency", "p50_us", "4. latency p50", "µs", False),
    ("latency", "p99_us", "4. latency p99", "µs", False),
    ("latency", "max_us", "4. latency max", "µs", False),
    ("idle", "connections", "5. idle connections held", "", True),
    ("idle", "connect_rate", "5. connect rate", "conn/s", True),
    ("idle", "rss_per_connection", "5. broker RSS per connection", "bytes", False),
    ("blast-fanin", "rate", "6. unpaced fan-in, delivered", "msg/s", True),
    ("blast-fanin", "lost_pct", "6. unpaced fan-in, lost", "%", False),
    ("blast-fanin", "broker_us_per_msg", "6. unpaced fan-in, broker CPU per delivery", "µs", False),
    ("blast-fanin", "broker_peak_rss", "6. unpaced fan-in, broker peak RSS", "bytes", False),
    ("blast-fanout", "rate", "7. unpaced fan-out, deliveries", "msg/s", True),
    ("blast-fanout", "lost_pct", "7. unpaced fan-out, lost", "%", False),
    ("blast-fanout", "broker_us_per_msg", "7. unpaced fan-out, broker CPU per delivery", "µs", False),
    ("blast-fanout", "broker_peak_rss", "7. unpaced fan-out, broker peak RSS", "bytes", False),
    ("blast-stuck", "rate", "8. beside a stuck subscriber, delivered", "msg/s", True),
    ("blast-stuck", "lost_pct", "8. beside a stuck subscriber, lost", "%", False),
    ("blast-stuck", "broker_peak_rss", "8. beside a stuck subscriber, broker peak RSS", "bytes", False),
    ("storm", "connect_rate", "9. connect storm, rate", "conn/s", True),
    ("storm", "handshake_max_ms", "9. connect storm, slowest connect() to CONNACK", "ms", False),
    ("storm", "tcp_max_ms", "9. connect storm, slowest TCP connect", "ms", False),
    ("storm", "connack_max_ms", "9. connect storm, slowest CONNECT to CONNACK", "ms", False),
]

#: How much worse than before a windowed figure may measure and still count
#: as "no worse": the run-to-run noise of this machine.
NOISE = 0.05
#: Most QoS 0 messages an unpaced scenario may lose to subscribers that read, in %.
MAX_LOST_PCT = 0.1


def targets(results: dict, names: list[str], baseline: dict | None) -> list[tuple]:
    """The targets as (scenario, target, measured, met) rows; met is None
    when the run lacks a figure to decide it.

    "Before" for the windowed scenarios is a ``--compare-tree`` checkout
    measured in the same run if there is one, else the report this run
    replaces (``baseline``), compared through each run's ratio to Mosquitto.
    """
    ours = names[0]
    rows = []

    def get(scenario, field, broker=ours):
        return figure(results, broker, scenario, field)

    def vs(scenario, field, against="mosquitto"):
        return ratio(get(scenario, field), get(scenario, field, against))

    def show(r):
        return "—" if r is None else f"{r:.2f} ×"

    for scenario, factor in (("blast-fanin", 1.0), ("blast-fanout", 2.0)):
        r, lost = vs(scenario, "rate"), get(scenario, "lost_pct")
        met = None if r is None or lost is None else (r >= factor and lost <= MAX_LOST_PCT)
        rows.append((scenario, f"≥ {factor:g} × Mosquitto, ≤ {MAX_LOST_PCT}% lost",
                     f"{show(r)}, {fmt_pct(lost)} lost", met))
    lost = get("blast-stuck", "lost_pct")
    rows.append(("blast-stuck", f"the reading subscriber loses ≤ {MAX_LOST_PCT}%",
                 f"{fmt_pct(lost)} lost", None if lost is None else lost <= MAX_LOST_PCT))
    r, slowest = vs("storm", "connect_rate"), get("storm", "handshake_max_ms")
    answered, wanted = get("storm", "connacked"), get("storm", "connections")
    met = None if None in (r, slowest, answered) else (
        r >= 0.5 and slowest < 50 and answered == wanted)
    rows.append(("storm", f"≥ 0.5 × Mosquitto's rate, slowest handshake < 50 ms, all answered",
                 f"{show(r)}, {fmt(slowest)} ms, {fmt(answered)} of {fmt(wanted)}", met))
    r = vs("latency", "p99_us")
    rows.append(("latency", "p99 ≤ 1.5 × Mosquitto", show(r), None if r is None else r <= 1.5))
    r, lost = vs("qos1", "rate"), get("qos1", "lost")
    rows.append(("qos1", "≥ 1.0 × Mosquitto, nothing lost", f"{show(r)}, {fmt(lost)} lost",
                 None if r is None or lost is None else (r >= 1.0 and lost == 0)))
    before = next((n for n in names[1:] if n.startswith("reactorapp")), None)
    for scenario in ("fanin", "fanout"):
        if before is not None:
            r, what = vs(scenario, "rate", before), f"vs {before}"
        else:
            now = vs(scenario, "rate")
            old = None
            if baseline:
                prior = baseline.get("results", {})
                old = ratio(figure(prior, baseline["brokers"][0], scenario, "rate"),
                            figure(prior, "mosquitto", scenario, "rate"))
            r, what = ratio(now, old), "vs the previous report, each as a ratio to Mosquitto"
        rows.append((scenario, f"no worse than before (≥ {1 - NOISE:g} ×, the noise)",
                     f"{show(r)} ({what})", None if r is None else r >= 1 - NOISE))
    held, rss = get("idle", "connections"), get("idle", "rss_per_connection")
    rows.append(("idle", "10,000 held, ≤ 8 KB RSS each", f"{fmt(held)} held, {fmt(rss)} B",
                 None if held is None or rss is None else (held >= 10_000 and rss <= 8192)))
    return rows


def fmt_pct(value) -> str:
    return "—" if value is None else f"{value:.3f}%"


def summary(scenario: str, result: dict) -> str:
    if "error" in result:
        return "ERROR " + result["error"].splitlines()[0]
    cpu = (f"load cpu {result.get('load_cpu', 0):.0%}, broker cpu {result.get('broker_cpu', 0):.0%}, "
           f"others {result.get('other_cpu', 0):.0%}")
    if scenario == "latency":
        return f"p50 {result['p50_us']} µs, p99 {result['p99_us']} µs, max {result['max_us']} µs ({cpu})"
    if scenario == "storm":
        return (f"{result['connacked']} of {result['connections']} answered, "
                f"{result['connect_rate']} conn/s, slowest handshake {result['handshake_max_ms']} ms "
                f"(TCP {result['tcp_max_ms']}, CONNACK {result['connack_max_ms']}) ({cpu})")
    if scenario in BLASTS:
        return (f"{result['rate']:,} msg/s delivered, lost {result['lost']} of {result['expected']}"
                f", {result['out_of_order']} out of order, {result.get('broker_us_per_msg')} µs/msg"
                f" ({cpu})")
    if scenario == "idle":
        return (f"{result['connections']} held, {result['connect_rate']} conn/s, "
                f"{result.get('rss_per_connection', '?')} B/conn ({cpu})")
    return f"{result['rate']:,} msg/s, lost {result['lost']} of {result['expected']} ({cpu})"


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def ratio(ours, theirs) -> float | None:
    if ours is None or theirs in (None, 0):
        return None
    return ours / theirs


def figure(results: dict, broker: str, scenario: str, field: str):
    result = results.get(broker, {}).get(scenario)
    if not result or "error" in result:
        return None
    return result.get(field)


def machine() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem = f"{int(mem) / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        mem = "?"
    return {"cpu": model, "cores": os.cpu_count(), "memory": mem,
            "kernel": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def write_markdown(path: Path, results: dict, names: list[str], args, info: dict,
                   chart: Path | None, baseline: dict | None = None) -> None:
    ours = names[0]
    others = [n for n in ("mosquitto", "amqtt") if n in names]
    lines = [
        "# Benchmarks",
        "",
        "reactorapp next to Mosquitto and amqtt, measured on the same machine in",
        "the same run by `bench/run.py`. Each broker is started fresh for each",
        "scenario on 127.0.0.1, pinned to one CPU; the load generator",
        "(`bench/loadgen.py`, raw MQTT 3.1.1, pre-encoded packets) runs pinned to",
        "the other. Numbers move from run to run by several per cent (latency",
        "more: on a virtual machine it depends much on how fast an idle CPU wakes",
        "up); compare ratios within one run rather than figures across runs.",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')} with:",
        "",
        "```",
        info["command"],
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {info['machine']['cpu']}, {info['machine']['cores']} cores "
        f"(broker on CPU {args.broker_cpu}, load on CPU {args.load_cpu}) |",
        f"| memory | {info['machine']['memory']} |",
        f"| system | {info['machine']['kernel']} |",
    ]
    for name in names:
        lines.append(f"| {name} | {info['versions'].get(name, '?')} |")
    lines += [
        f"| settings | max in-flight {MAX_INFLIGHT}, max queued {MAX_QUEUED} per client "
        "(reactorapp, Mosquitto; amqtt has no such limits); no persistence; "
        f"QoS 0/1 runs {args.duration:g} s after {args.warmup:g} s of warm-up; "
        f"latency at {args.rate} msg/s; {args.connections:,} idle connections"
        + (f"; unpaced runs of {args.messages:,} messages per publisher"
           if getattr(args, "messages", None) else "")
        + (f"; {args.storm_connections:,} clients in the connect storm"
           + (f", at most {args.storm_concurrency} under way" if args.storm_concurrency else "")
           if getattr(args, "storm_connections", None) else "")
        + (f"; each figure the median of {args.repeat} runs" if args.repeat > 1 else "") + " |",
        "",
        "## Results",
        "",
        "| figure | unit | " + " | ".join(names) + " | "
        + " | ".join(f"{ours}/{o}" for o in others) + " |",
        "|---|---|" + "---:|" * (len(names) + len(others)),
    ]
    for scenario, field, label, unit, higher in FIGURES:
        if scenario not in args.scenarios:
            continue
        values = [figure(results, n, scenario, field) for n in names]
        ratios = [ratio(values[0], figure(results, o, scenario, field)) for o in others]
        better = "" if higher else " (lower is better)"
        lines.append(
            f"| {label}{better} | {unit} | " + " | ".join(fmt(v) for v in values) + " | "
            + " | ".join("—" if r is None else f"{r:.2f}" for r in ratios) + " |")
    if chart is not None:
        lines += ["", f"![The table as bar charts]({chart.name})"]
    # Targets.
    lines += ["", "## Targets", "", "| scenario | target | measured | met |", "|---|---|---|---|"]
    for scenario, text, measured, met in targets(results, names, baseline):
        if scenario not in args.scenarios:
            continue
        lines.append(f"| {SCENARIOS[scenario]} | {text} | {measured} | "
                     f"{'—' if met is None else ('yes' if met else 'no')} |")
    # Sent against delivered, and who was busy.
    lines += ["", "## Sent, delivered, and CPU use", "",
              "`load cpu` is the generator's own CPU use over the measured window: near",
              "100% would mean it, not the broker, set the pace. `others` is what the",
              "rest of the machine used meanwhile (in CPUs; the runner waits for it to be",
              "quiet before each run, but cannot stop it). `broker µs/msg` is broker CPU",
              "per delivered message, the figure least moved by a busy machine. `lost`",
              "counts messages sent but never delivered (for fan-out, per subscriber);",
              "QoS 1 must lose nothing.",
              "",
              "| scenario | broker | sent | delivered | lost | broker cpu | broker µs/msg | load cpu | others |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario in args.scenarios:
        for n in names:
            r = results.get(n, {}).get(scenario, {})
            if "error" in r:
                lines.append(f"| {scenario} | {n} | error: {r['error'].splitlines()[0]} | | | | | | |")
                continue
            if scenario == "idle":
                sent, delivered, lost = r.get("connections"), r.get("connections"), r.get("failed")
            elif scenario == "storm":
                sent, delivered = r.get("connections"), r.get("connacked")
                lost = None if sent is None or delivered is None else sent - delivered
            else:
                sent, delivered, lost = r.get("expected", r.get("sent")), r.get("delivered"), r.get("lost")
            per_msg = r.get("broker_us_per_msg")
            lines.append(
                f"| {scenario} | {n} | {fmt(sent)} | {fmt(delivered)} | {fmt(lost)} | "
                f"{r.get('broker_cpu', 0):.0%} | {'—' if per_msg is None else f'{per_msg:.2f}'} | "
                f"{r.get('load_cpu', 0):.0%} | {r.get('other_cpu', 0):.0%} |")
    lines += unpaced_tables(results, names, args)
    observed = []
    for scenario in ("fanin", "fanout"):
        r = results.get(ours, {}).get(scenario, {})
        if r.get("lost") and r.get("expected"):
            observed.append(
                f"- In this run {ours} dropped {r['lost'] / r['expected']:.0%} of the QoS 0 "
                f"messages of scenario {SCENARIOS[scenario][:1]} ({fmt(r['lost'])} of "
                f"{fmt(r['expected'])}; QoS 0 may be dropped under pressure). The rate "
                "counts only what was delivered.")
    lines += ["", "## Notes", "",
              *observed,
              *NOTES,
              "", "## Repeating and profiling", "", *HOWTO]
    path.write_text("\n".join(lines) + "\n" + kept_sections(path))


#: Sections of the page written by other benchmarks, kept as they are.
KEPT_SECTIONS = ("## HTTP publish",)


def kept_sections(path: Path) -> str:
    """The part of the page, from the first of `KEPT_SECTIONS` on, that
    another benchmark wrote (bench/bench_http.py's figures)."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    starts = [text.find("\n" + title + "\n") for title in KEPT_SECTIONS]
    starts = [at for at in starts if at >= 0]
    return text[min(starts):] if starts else ""


def unpaced_tables(results: dict, names: list[str], args) -> list[str]:
    """The details of scenarios 6-9: what the broker took in, what reached
    the subscribers that read, and what the handshakes took."""
    lines = []
    blasts = [s for s in BLASTS if s in args.scenarios]
    if blasts:
        lines += ["", "## Unpaced publishers", "",
                  "Publishers write their numbered messages as fast as TCP takes them.",
                  "`sent` is what they wrote (all of it read by the broker: a broker",
                  "that stopped reading would leave some `unsent`); `delivered` is what",
                  "the subscribers that read received (fan-out: summed over 16), each",
                  "counted once; `lost` never came, `out of order` came after a later",
                  "message of the same publisher. The rate runs from the first write to",
                  "the last delivery. Broker CPU is counted over the whole run (dropping",
                  "costs too), per delivered message. Peak RSS is the broker's VmHWM.",
                  "",
                  "| scenario | broker | sent | unsent | delivered | lost | out of order "
                  "| msg/s | broker CPU s | broker µs/msg | peak RSS |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for scenario in blasts:
            for n in names:
                r = results.get(n, {}).get(scenario, {})
                if not r or "error" in r:
                    why = r.get("error", "not run").splitlines()[0] if r else "not run"
                    lines.append(f"| {scenario} | {n} | {why} | | | | | | | | |")
                    continue
                lost = f"{fmt(r.get('lost'))} ({fmt_pct(r.get('lost_pct'))})"
                lines.append(
                    f"| {scenario} | {n} | {fmt(r.get('sent'))} | {fmt(r.get('unsent'))} | "
                    f"{fmt(r.get('delivered'))} | {lost} | {fmt(r.get('out_of_order'))} | "
                    f"{fmt(r.get('rate'))} | {fmt(r.get('broker_cpu_seconds'))} | "
                    f"{fmt(r.get('broker_us_per_msg'))} | {fmt_mib(r.get('broker_peak_rss'))} |")
    if "storm" in args.scenarios:
        lines += ["", "## Connect storm", "",
                  "All clients open their TCP connection at once (non-blocking sockets,",
                  "one process) and send CONNECT as soon as it is up. `TCP` is connect()",
                  "to connected, `CONNACK` from CONNECT sent to CONNACK, `handshake` the",
                  "two together. A SYN the listen queue had no room for is sent again",
                  "after a second: slowest times near 1,000 ms or 3,000 ms are that.",
                  "",
                  "| broker | answered | conn/s | TCP max ms | CONNACK max ms "
                  "| handshake p50 / p99 / max ms | peak RSS |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for n in names:
            r = results.get(n, {}).get("storm", {})
            if not r or "error" in r:
                why = r.get("error", "not run").splitlines()[0] if r else "not run"
                lines.append(f"| {n} | {why} | | | | | |")
                continue
            lines.append(
                f"| {n} | {fmt(r.get('connacked'))} of {fmt(r.get('connections'))} | "
                f"{fmt(r.get('connect_rate'))} | {fmt(r.get('tcp_max_ms'))} | "
                f"{fmt(r.get('connack_max_ms'))} | {fmt(r.get('handshake_p50_ms'))} / "
                f"{fmt(r.get('handshake_p99_ms'))} / {fmt(r.get('handshake_max_ms'))} | "
                f"{fmt_mib(r.get('broker_peak_rss'))} |")
    return lines


def fmt_mib(value) -> str:
    return "—" if value is None else f"{value / 2**20:,.1f} MiB"


NOTES = [
    "- Mosquitto sends each message as soon as it is queued, one `send()` each;",
    "  reactorapp writes everything one read produced for a connection at once,",
    "  with one `send()` at the end of the read. That is most of the",
    "  difference in the QoS 0 scenarios. It shows in the load generator's CPU",
    "  too: it receives Mosquitto's messages in many small segments and runs near",
    "  100% against it in scenarios 1 and 3, as Mosquitto does, so Mosquitto's",
    "  figures there are close to, and may slightly understate, what it can do.",
    "- Debian 12's Mosquitto 2.0.11 drops some QoS 1 messages in scenario 3 with",
    "  `max_inflight_messages 20` and `max_queued_messages 1000` although far fewer",
    "  than 1000 are ever waiting (upstream lists fixes to its in-flight quota",
    "  in 2.0.13). A lost message frees its place in the publisher's window as",
    "  soon as a later one arrives, so the rate is still measured; the loss is",
    "  in the table above.",
    "- Scenario 4 sends one message at a time with a timestamp in its payload; its",
    "  load CPU is high because the generator spins for the last millisecond",
    "  before each send to keep the rate exact.",
    "- Scenario 5's RSS per connection is the broker's resident memory after the",
    "  connections were opened, minus before, divided by the connections held.",
    "- Scenarios 6-8 end when every reading subscriber has every message, or",
    "  when nothing was delivered and no publisher's bytes were taken for",
    "  `--blast-quiet` seconds (10): a QoS 0 message a broker dropped never",
    "  comes. In scenario 8 a broker may hold the publishers back until it",
    "  gives up on the subscriber that does not read (reactorapp's",
    "  `--slow-subscriber-timeout`); that pause is part of the rate, and",
    "  `unsent` counts what the publishers could not write by the end.",
    "- Scenario 9 opens every connection at once, so the listen queue decides",
    "  much of it: Mosquitto 2.0 listens with a backlog of 100, and a SYN that",
    "  finds the queue full is sent again after a second.",
]

HOWTO = [
    "```",
    "python bench/run.py --setup        # once, as root: mosquitto (apt) + amqtt (/tmp/amqtt-venv)",
    "python bench/run.py                # everything; rewrites this page",
    "python bench/run.py --quick        # shorter runs",
    "python bench/run.py --brokers reactorapp,mosquitto --scenarios fanin,fanout --no-write",
    "python bench/run.py --scenarios blast-fanin,blast-fanout,blast-stuck,storm --no-write",
    "python bench/loadgen.py --port 1883 --scenario fanin   # against any running broker",
    "python bench/loadgen.py --port 1883 --scenario blast-fanin --messages 100000",
    "```",
    "",
    "To measure a change to reactorapp, check out the code before it",
    "(`git worktree add /tmp/before HEAD~1`) and add `--compare-tree /tmp/before`:",
    "both run in the same turns and the windowed \"no worse than before\" targets",
    "compare with it. `--tree DIR` runs reactorapp from another checkout in place",
    "of this one. Without a second checkout, \"before\" is the report being",
    "replaced, through each run's ratio to Mosquitto.",
    "",
    "To see where reactorapp spends its time during a scenario:",
    "",
    "```",
    "python bench/run.py --profile py-spy --scenarios fanin     # sampling, low overhead",
    "python bench/run.py --profile cprofile --scenarios fanin   # twistd --profiler cprofile",
    "```",
    "",
    "`py-spy` (pip, in the `bench` extra) samples the running broker with little",
    "overhead; the runner prints the functions holding the most samples, on their",
    "own and with their callees, and keeps the collapsed stacks in",
    "`/tmp/reactorapp-profiles/<scenario>.stacks` (speedscope.app and",
    "flamegraph.pl read them). `cprofile` runs the broker under",
    "`twistd --profile ... --profiler cprofile --savestats`, which slows it down",
    "severalfold but counts every call; the runner prints the top functions by own",
    "time and keeps `/tmp/reactorapp-profiles/<scenario>.pstats` for",
    "`python -m pstats`. Profiling runs only reactorapp and writes no report.",
]


def write_chart(path: Path, results: dict, names: list[str], args) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return False
    panels = [f for f in FIGURES if f[0] in args.scenarios
              and f[1] not in ("max_us", "connections", "broker_us_per_msg", "lost_pct",
                               "broker_peak_rss", "tcp_max_ms", "connack_max_ms")]
    if not panels:
        return False
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colours = {"mosquitto": "#8c8c8c", "amqtt": "#c9a227"}
    for ax, (scenario, field, label, unit, higher) in zip(axes.flat, panels):
        values = [figure(results, n, scenario, field) for n in names]
        shown = [v if v is not None else 0 for v in values]
        bars = ax.bar(names, shown, color=[colours.get(n, "#2b6cb0") for n in names])
        for bar, v in zip(bars, values):
            ax.annotate("n/a" if v is None else f"{v:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(label + ("" if higher else " (lower is better)"), fontsize=9)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelsize=8)
        if any(shown) and max(shown) > 20 * max(min(v for v in shown if v) , 1):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"reactorapp, Mosquitto and amqtt on {os.cpu_count()} cores "
                 "(broker and load generator on separate CPUs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_stacks(path: Path, scenario: str, top: int = 25) -> None:
    """Summarise py-spy's collapsed stacks: where samples were, by function."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        print(f"no samples written for {scenario}")
        return
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    print(f"\n== {scenario}: {total} samples ({path}) ==")
    for title, table in (("own time", own), ("including callees", inclusive)):
        print(f"-- {title}")
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100 * n / max(total, 1):5.1f}%  {frame}")


def print_profile(args) -> None:
    if args.profile == "py-spy":
        for scenario in args.scenarios:
            print_stacks(args.profile_dir / f"{scenario}.stacks", scenario)
        return
    import pstats
    for scenario in args.scenarios:
        path = args.profile_dir / f"{scenario}.pstats"
        if not path.exists():
            print(f"no profile written for {scenario}")
            continue
        print(f"\n== {scenario}: top functions by own time ({path}) ==")
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)


# -- setup --------------------------------------------------------------------------

def setup(args) -> int:
    """Install Mosquitto from Debian (root) and amqtt in its own venv."""
    if not shutil.which("mosquitto") and not os.path.exists("/usr/sbin/mosquitto"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "mosquitto"], check=True, env=env)
    # The package starts a system broker on 1883 where it can: we run our own.
    for command in (["systemctl", "stop", "mosquitto"], ["systemctl", "disable", "mosquitto"],
                    ["service", "mosquitto", "stop"]):
        if shutil.which(command[0]):
            subprocess.run(command, capture_output=True)
    venv = Path(args.amqtt_venv)
    if not (venv / "bin" / "amqtt").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "amqtt"], check=True)
    print("mosquitto:", Mosquitto(args).version())
    print("amqtt:", Amqtt(args).version())
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one shorter run of each (about 2 minutes)")
    parser.add_argument("--brokers", default=",".join(BROKERS),
                        help="comma-separated, from: " + ", ".join(BROKERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: " + ", ".join(SCENARIOS))
    parser.add_argument("--duration", type=float, help="measured seconds per run (5; quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (1; quick 0.5)")
    parser.add_argument("--repeat", type=int, help="runs per figure, the median kept (3; quick 1)")
    parser.add_argument("--rate", type=int, default=2000, help="scenario 4: messages per second")
    parser.add_argument("--connections", type=int, default=10_000, help="scenario 5: how many")
    parser.add_argument("--idle-time-limit", type=float,
                        help="scenarios 5 and 9: give up after (60; quick 30)")
    parser.add_argument("--messages", type=int,
                        help="scenarios 6-8: messages per publisher (200,000; quick 50,000)")
    parser.add_argument("--blast-time-limit", type=float,
                        help="scenarios 6-8: give up after (60; quick 30)")
    parser.add_argument("--blast-quiet", type=float, default=10.0,
                        help="scenarios 6-8: stop after this long with nothing moving; longer"
                             " than reactorapp's --slow-subscriber-timeout (default %(default)s)")
    parser.add_argument("--storm-connections", type=int, default=10_000,
                        help="scenario 9: how many clients connect at once")
    parser.add_argument("--storm-concurrency", type=int, default=0,
                        help="scenario 9: at most this many handshakes under way (0: no limit)")
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="run reactorapp from this checkout (default: this one)")
    parser.add_argument("--broker-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--amqtt-venv", default="/tmp/amqtt-venv",
                        help="virtualenv holding amqtt, kept apart from ours (default %(default)s)")
    parser.add_argument("--compare-tree", type=Path, action="append", default=[],
                        help="also run reactorapp from another checkout (e.g. before a change)")
    parser.add_argument("--profile", choices=("py-spy", "cprofile"),
                        help="profile reactorapp during the scenarios; no report is written")
    parser.add_argument("--profile-dir", type=Path, default=Path("/tmp/reactorapp-profiles"))
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only; write no report")
    parser.add_argument("--from-json", type=Path,
                        help="write the report from a results file of an earlier run, running nothing")
    parser.add_argument("--keep", action="store_true", help="keep the brokers' work directories")
    parser.add_argument("--setup", action="store_true",
                        help="install mosquitto (apt-get, needs root) and amqtt (own venv), then exit")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick or args.profile else 3
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    if args.idle_time_limit is None:
        args.idle_time_limit = 30.0 if args.quick else 60.0
    if args.messages is None:
        args.messages = 50_000 if args.quick else 200_000
    if args.blast_time_limit is None:
        args.blast_time_limit = 30.0 if args.quick else 60.0
    args.tree = args.tree.resolve()
    args.brokers = [b for b in args.brokers.split(",") if b]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for b in args.brokers:
        if b not in BROKERS:
            parser.error(f"unknown broker {b!r}")
    for s in args.scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    if os.cpu_count() and max(args.broker_cpu, args.load_cpu) >= os.cpu_count():
        parser.error("--broker-cpu/--load-cpu name a CPU this machine does not have")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.setup:
        return setup(args)
    if args.from_json:
        report(args.output, json.loads(args.from_json.read_text()))
        return 0
    os.sched_setaffinity(0, {args.load_cpu})
    if args.profile:
        args.brokers = ["reactorapp"]
        args.no_write = True
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        if args.profile == "py-spy" and not shutil.which("py-spy"):
            print("py-spy is not installed: pip install py-spy")
            return 2
    classes = {"reactorapp": Reactorapp, "mosquitto": Mosquitto, "amqtt": Amqtt}
    brokers: list[Broker] = []
    for name in args.brokers:
        broker = classes[name](args) if name != "reactorapp" else Reactorapp(args, args.tree)
        why = broker.available()
        if why:
            print(f"skipping {name}: {why}")
            continue
        brokers.append(broker)
        if name == "reactorapp":
            for i, tree in enumerate(args.compare_tree):
                label = f"reactorapp ({tree.name or 'other'})"
                brokers.append(Reactorapp(args, tree.resolve(), label))
    if not brokers:
        print("no broker to run")
        return 2
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    info = {"command": command.strip(), "machine": machine(),
            "versions": {b.name: b.version() for b in brokers}}
    print(f"{info['machine']['cpu']}, {info['machine']['cores']} cores; "
          f"brokers on CPU {args.broker_cpu}, load on CPU {args.load_cpu}")
    for b in brokers:
        print(f"  {b.name}: {info['versions'][b.name]}")
    started = time.monotonic()
    results = run_all(brokers, args)
    print(f"done in {time.monotonic() - started:.0f} s")
    if args.profile:
        print_profile(args)
        return 0
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        saved = {"info": info, "results": results, "brokers": [b.name for b in brokers],
                 "args": {k: getattr(args, k) for k in REPORTED_ARGS},
                 "baseline": previous_report(args.output.with_suffix(".json"))}
        args.output.with_suffix(".json").write_text(
            json.dumps(saved, indent=1, ensure_ascii=False) + "\n")
        report(args.output, saved)
    return 0


#: The settings a report mentions, saved with the results.
REPORTED_ARGS = ("scenarios", "duration", "warmup", "rate", "connections",
                 "broker_cpu", "load_cpu", "repeat", "messages", "storm_connections",
                 "storm_concurrency", "blast_quiet")


def previous_report(path: Path) -> dict | None:
    """The windowed figures of the report about to be replaced: the "before"
    of the no-worse-than-before targets."""
    try:
        old = json.loads(path.read_text())
        ours = old["brokers"][0]
        kept = {name: {s: old["results"][name][s] for s in ("fanin", "fanout")
                       if s in old["results"].get(name, {})}
                for name in (ours, "mosquitto")}
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return {"brokers": [ours, "mosquitto"], "results": kept,
            "command": old.get("info", {}).get("command")}


def report(output: Path, saved: dict) -> None:
    """Write the page and the chart from saved results."""
    args = argparse.Namespace(**saved["args"])
    names = saved["brokers"]
    output.parent.mkdir(parents=True, exist_ok=True)
    chart = output.with_suffix(".png")
    has_chart = write_chart(chart, saved["results"], names, args)
    write_markdown(output, saved["results"], names, args, saved["info"],
                   chart if has_chart else None, saved.get("baseline"))
    print(f"wrote {output}" + (f" and {chart}" if has_chart else ""))


if __name__ == "__main__":
    sys.exit(main())
