"""Acknowledgement ordering without a transport (`reactorapp.mqtt.acks`), and
the connection states that name themselves (`reactorapp.mqtt.states`)."""

from __future__ import annotations

from reactorapp.hub.commit import Commit
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.acks import AckLine
from reactorapp.mqtt.states import AUTHENTICATING, AWAITING_CONNECT, CLOSED, CONNECTED


def test_placed_acknowledgements_behind_a_waiting_one_wait_their_turn():
    """[MQTT-4.6.0-2] [MQTT-4.6.0-3]: answers leave in arrival order."""
    line, commit = AckLine(), Commit()
    assert line.add(b"ack1", commit) is True
    assert line.add(b"ack2", None) is False
    assert line.ready() == []
    commit.fire()
    assert line.ready() == [b"ack1", b"ack2"] and not line


def test_one_registration_per_batch():
    """Acknowledgements of one store batch share its Commit: the connection
    registers once, however many of its messages the batch holds."""
    line, first, second = AckLine(), Commit(), Commit()
    assert [line.add(b"a", first), line.add(b"b", first), line.add(b"c", second),
            line.add(b"d", first)] == [True, False, True, True]
    first.fire()
    assert line.ready() == [b"a", b"b"]
    second.fire()
    assert line.ready() == [b"c", b"d"]


def test_a_later_batch_does_not_overtake_an_earlier_one():
    line, first, second = AckLine(), Commit(), Commit()
    line.add(b"a", first)
    line.add(b"b", second)
    second.fire()
    assert line.ready() == []
    first.fire()
    assert line.ready() == [b"a", b"b"]


def test_states_print_their_names_and_have_a_handler_for_every_packet():
    import reactorapp.mqtt.protocol  # noqa: F401 (fills the tables)

    assert [repr(s) for s in (AWAITING_CONNECT, AUTHENTICATING, CONNECTED, CLOSED)] == [
        "AWAITING_CONNECT", "AUTHENTICATING", "CONNECTED", "CLOSED"]
    for state in (AWAITING_CONNECT, AUTHENTICATING, CONNECTED, CLOSED):
        assert {P.Connect, P.Publish, P.PubRel, P.Subscribe, P.Disconnect} <= set(state.handlers)
