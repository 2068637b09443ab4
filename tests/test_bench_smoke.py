"""The benchmark harness still speaks to the broker correctly, and counts right.

bench/ is not part of the test suite; these run its scenarios briefly against
a real broker (scenario 1 at QoS 1, the unpaced ones with a few thousand
messages, a small connect storm), so that a change to either side that breaks
the benchmarks shows up here, and check the unpaced scenarios' accounting of
lost, reordered and repeated messages on streams made up for it. Bounded in
time by the generator itself; no timing assertions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from brokerproc import running_broker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import loadgen  # noqa: E402
import run as bench_run  # noqa: E402


def test_fanin_qos1_delivers_everything_it_sent(tmp_path):
    """[MQTT-4.3.2-1] [MQTT-4.3.2-2] [MQTT-3.3.4-1] Every QoS 1 message the
    generator published is acknowledged and reaches the subscriber."""
    with running_broker(tmp_path, "--sys-interval", "0") as broker:
        result = loadgen.run("fanin", "127.0.0.1", broker.port, duration=1.0, warmup=0.2,
                             qos=1, window=200, broker_pid=broker.proc.pid)
    assert result["sent"] > 0
    assert result["acked"] == result["sent"]
    assert result["delivered"] == result["sent"]
    assert result["lost"] == 0


def test_fanin_qos1_with_mqtt_5_clients_keeps_to_the_brokers_receive_maximum(tmp_path):
    """``--mqtt-version 5``: level-5 packets, and a window no larger than the
    Receive Maximum the broker announced [MQTT-3.3.4-7] (a larger one would
    be disconnected with 0x93)."""
    loadgen.PROTOCOL["level"] = 5
    try:
        with running_broker(tmp_path, "--sys-interval", "0", "--max-pending-acks", "50") as broker:
            result = loadgen.run("fanin", "127.0.0.1", broker.port, duration=1.0, warmup=0.2,
                                 qos=1, window=200, broker_pid=broker.proc.pid)
        assert loadgen.PROTOCOL["receive_maximum"] == 50
    finally:
        loadgen.PROTOCOL.update(level=4, receive_maximum=65535)
    assert result["mqtt_version"] == "5"
    assert result["sent"] > 0
    assert result["acked"] == result["delivered"] == result["sent"]
    assert result["lost"] == 0


def _blast_checks(result: dict, publishers: int, subscribers: int, messages: int) -> None:
    """What every unpaced run must report, whatever the broker dropped or
    held back (a broker may hold publishers back for a subscriber that does
    not read, longer than this short run waits)."""
    assert result["sent"] + result["unsent"] == publishers * messages
    assert result["sent"] > 0
    assert result["expected"] == result["sent"] * subscribers
    assert result["delivered"] > 0
    assert result["delivered"] + result["lost"] == result["expected"]
    # [MQTT-4.6.0-6] a broker keeps each publisher's QoS 0 messages in order.
    assert result["out_of_order"] == 0
    assert result["duplicates"] == 0
    assert result["broker_peak_rss"] > 0


def test_unpaced_scenarios_count_what_the_broker_delivered(tmp_path):
    """blast-fanin, blast-fanout and blast-stuck run against twistd: every
    message is written, and delivered plus lost adds up to what was sent."""
    with running_broker(tmp_path, "--sys-interval", "0", "--http", "none") as broker:
        runs = {scenario: loadgen.run(scenario, "127.0.0.1", broker.port, messages=3000,
                                      quiet=1.0, time_limit=30.0, broker_pid=broker.proc.pid)
                for scenario in ("blast-fanin", "blast-fanout", "blast-stuck")}
    _blast_checks(runs["blast-fanin"], 4, 1, 3000)
    _blast_checks(runs["blast-fanout"], 1, 16, 3000)
    assert runs["blast-fanin"]["unsent"] == runs["blast-fanout"]["unsent"] == 0
    _blast_checks(runs["blast-stuck"], 4, 1, 3000)
    assert runs["blast-stuck"]["stuck"] == 1


def test_connect_storm_every_client_gets_its_connack(tmp_path):
    """[MQTT-3.2.0-1] [MQTT-3.2.2-1] 300 clients connecting at once are each answered with
    a CONNACK that accepts them."""
    with running_broker(tmp_path, "--sys-interval", "0", "--http", "none") as broker:
        result = loadgen.run("storm", "127.0.0.1", broker.port, connections=300,
                             time_limit=30.0, broker_pid=broker.proc.pid)
    assert result["connacked"] == 300
    assert result["failed"] == 0
    assert result["unanswered"] == 0
    assert result["handshake_max_ms"] >= result["connack_max_ms"]


def _subscriber(count: int, sources: str = "0"):
    """A blast subscriber's Reader and Ledger over made-up streams."""
    built = [loadgen.numbered_publishes(f"bench/t/{s}", count) for s in sources]
    streams = [data for data, _ in built]
    size = built[0][1]
    client = loadgen.Client(None, "subscriber")
    ledger = loadgen.Ledger(len(sources), count)
    reader = loadgen._blast_reader(client, ledger, streams, size,
                                   [s.encode() for s in sources])
    return reader, ledger, streams, size


def test_ledger_counts_gaps_reordering_and_repeats():
    """A missing message counts as lost, one that comes after a later one as
    out of order, one that comes twice as a duplicate, whether it arrives
    in a long run or split across reads."""
    reader, ledger, streams, size = _subscriber(10)
    stream = streams[0]

    def msg(i: int) -> bytes:
        return stream[i * size:(i + 1) * size]

    data = stream[:5 * size] + msg(6) + msg(5) + msg(7) + msg(3)
    reader.feed(data[:7])
    reader.feed(data[7:])
    assert ledger.distinct == 8  # 8 and 9 never came
    assert ledger.out_of_order == 2  # 5 after 6, 3 after 7
    assert ledger.duplicates == 1  # 3 twice


def test_ledger_splits_interleaved_publishers():
    """Deliveries from two publishers interleaved in one read are told apart
    by topic: each publisher's messages are counted in order."""
    reader, ledger, streams, size = _subscriber(4, "01")
    a, b = streams
    data = a[:2 * size] + b[:3 * size] + a[2 * size:] + b[3 * size:]
    reader.feed(data)
    assert ledger.distinct == 8
    assert ledger.out_of_order == 0
    assert ledger.duplicates == 0


def test_report_states_the_targets(tmp_path):
    """The report marks each target met or not from the figures of one run."""
    blast = {"rate": 400_000, "lost_pct": 0.0, "lost": 0, "expected": 800_000,
             "delivered": 800_000, "sent": 800_000, "unsent": 0, "out_of_order": 0}
    mosquitto_blast = dict(blast, rate=300_000)
    saved = {
        "info": {"command": "python bench/run.py", "versions": {},
                 "machine": {"cpu": "x", "cores": 2, "memory": "1 GiB", "kernel": "k"}},
        "brokers": ["reactorapp", "mosquitto"],
        "args": {"scenarios": ["blast-fanin", "blast-fanout", "storm"], "duration": 5,
                 "warmup": 1, "rate": 2000, "connections": 10_000, "broker_cpu": 0,
                 "load_cpu": 1, "repeat": 1, "messages": 200_000,
                 "storm_connections": 10_000, "storm_concurrency": 0},
        "results": {
            "reactorapp": {
                "blast-fanin": blast,
                "blast-fanout": dict(blast, rate=500_000, lost_pct=5.0),
                "storm": {"connections": 10_000, "connacked": 10_000, "connect_rate": 30_000,
                          "handshake_max_ms": 20.0},
            },
            "mosquitto": {
                "blast-fanin": mosquitto_blast,
                "blast-fanout": mosquitto_blast,
                "storm": {"connections": 10_000, "connacked": 10_000, "connect_rate": 40_000,
                          "handshake_max_ms": 2.0},
            },
        },
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(saved))
    output = tmp_path / "benchmarks.md"
    assert bench_run.main(["--from-json", str(path), "--output", str(output)]) == 0
    rows = {line.split(" | ")[0].lstrip("| "): line for line in output.read_text().splitlines()
            if "| ≥" in line}
    assert rows[bench_run.SCENARIOS["blast-fanin"]].endswith("| yes |")
    assert rows[bench_run.SCENARIOS["blast-fanout"]].endswith("| no |")  # 5% lost
    assert rows[bench_run.SCENARIOS["storm"]].endswith("| yes |")


def test_http_load_gets_whole_answers(tmp_path):
    """bench_http.py's client reads keep-alive answers whole, fixed-length
    and chunked, and every bulk publish is a 200."""
    import bench_http

    with running_broker(tmp_path, "--sys-interval", "0") as broker:
        for payload in (bench_http.request("GET", "/healthz"),
                        bench_http.request("POST", "/api/v1/publish", bench_http.ndjson(50, 1),
                                           "application/x-ndjson")):
            rate, failures, _, _ = bench_http.run_load(
                "127.0.0.1", broker.http_port, payload, connections=2, seconds=0.3, warmup=0.1,
                pid=broker.proc.pid)
            assert failures == 0
            assert rate > 0
