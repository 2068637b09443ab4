"""The benchmark load generator still speaks to the broker correctly.

bench/ is not part of the test suite; this runs its scenario 1 (fan-in, 4
publishers -> 1 subscriber) for about a second at QoS 1 against a real
broker, so that a change to either side that breaks the benchmarks shows up
here. Bounded in time by the generator itself; no timing assertions.
"""

from __future__ import annotations

import sys
from pathlib import Path

from brokerproc import running_broker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import loadgen  # noqa: E402


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
