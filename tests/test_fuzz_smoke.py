"""bench/fuzz.py, small: a few thousand malformed and truncated packets
over a hundred connections (MQTT and the line plugin) against a real
broker, which stays up, stays small and delivers every message of a
well-behaved pair. The full run (100,000 packets and more) is in bench/;
its figures are in docs/security.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import fuzz  # noqa: E402


def test_a_short_fuzz_run_leaves_the_broker_serving_everything():
    result = fuzz.run(packets=4000, seed=11, threads=2, messages=300)
    assert result["packets"] >= 4000
    assert result["broker_alive"], result
    assert result["received_in_order"], result
    assert not result["tracebacks_in_log"], result
    assert result["ok"], result
