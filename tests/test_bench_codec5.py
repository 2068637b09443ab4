"""bench/bench_codec5.py still runs, and its strictness table says true
things: every malformed packet it lists is refused by our codec with the
reason code it names. Works with or without the `mqtt5` package."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import pytest  # noqa: E402

import bench_codec5  # noqa: E402


def test_listed_malformed_packets_are_refused_with_their_codes(monkeypatch):
    """[MQTT-4.13.1-1] Each packet of the comparison is refused at level 5
    with the reason code the table gives."""
    monkeypatch.setattr(bench_codec5, "mqtt5", None)
    got = {what: ours for what, _, ours, _ in bench_codec5.strictness()}
    assert got == {what: code for what, _, _, code in bench_codec5.MALFORMED}


# mqtt5 0.8.0 panics on a string that is not UTF-8 and leaves the decode
# error behind as an unraisable exception; the table reports the panic.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_quick_run_prints_both_tables(capsys):
    """The smoke run measures every packet both ways and prints both tables."""
    assert bench_codec5.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for name in bench_codec5.PACKETS:
        assert f"| decode | {name} |" in out
        assert f"| encode | {name} |" in out
    assert "| malformed packet | statement | ours | mqtt5 |" in out
