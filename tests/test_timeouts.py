"""Shared timeouts: many deadlines, one DelayedCall, never early."""

from __future__ import annotations

from twisted.internet.task import Clock

from reactorapp.mqtt.timeouts import Timeouts


def test_deadlines_fire_in_order_never_early_at_most_a_tick_late():
    clock, fired = Clock(), []
    timeouts = Timeouts(clock)
    timeouts.add(1.5, "b", lambda: fired.append("b"))
    timeouts.add(0.25, "a", lambda: fired.append("a"))
    clock.advance(0.24)
    assert fired == []
    clock.advance(0.06)
    assert fired == ["a"]
    clock.advance(1.2)
    assert fired == ["a", "b"]
    assert not clock.getDelayedCalls()


def test_many_deadlines_share_one_timer():
    clock, fired = Clock(), []
    timeouts = Timeouts(clock)
    for i in range(1000):
        timeouts.add(10, i, lambda i=i: fired.append(i))
    assert len(clock.getDelayedCalls()) == 1 and len(timeouts) == 1000
    clock.advance(10)
    assert fired == list(range(1000))


def test_a_removed_deadline_never_fires_and_leaves_no_timer():
    clock, fired = Clock(), []
    timeouts = Timeouts(clock)
    tick = timeouts.add(5, "k", lambda: fired.append("k"))
    timeouts.remove(tick, "k")
    timeouts.remove(tick, "k")  # twice is harmless
    assert not clock.getDelayedCalls()
    clock.advance(10)
    assert fired == []


def test_a_callback_may_add_its_next_deadline():
    clock, fired = Clock(), []
    timeouts = Timeouts(clock)

    def again():
        fired.append(clock.seconds())
        if clock.seconds() < 6:
            timeouts.add(2, "k", again)

    timeouts.add(2, "k", again)
    timeouts.add(3, "other", lambda: fired.append("other"))
    clock.pump([1] * 7)
    assert fired == [2, "other", 4, 6]


def test_an_earlier_deadline_moves_the_timer_forward():
    clock, fired = Clock(), []
    timeouts = Timeouts(clock)
    timeouts.add(60, "late", lambda: fired.append("late"))
    timeouts.add(1, "soon", lambda: fired.append("soon"))
    clock.advance(1)
    assert fired == ["soon"]
