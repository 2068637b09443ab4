"""Flow control: an output that cannot keep up holds back the inputs feeding it.

A broker that reads faster than it writes must either buffer without bound,
drop, or stop reading. reactorapp stops reading, as Mosquitto does (and as
RabbitMQ's credit flow and Twisted's producers do): the pause travels back
through TCP to the publishers.

- A front end that reads from a socket (an MQTT connection, over TCP or
  WebSocket) sets ``Flow.current`` to itself while it hands messages to the
  hub, and provides `IInput`: ``hold(by)`` and ``release(by)`` pause and
  resume its reading. A caller of `reactorapp.hub.hub.Hub.publish` with no
  socket of its own (an HTTP publish, a plugin through ``HubClient``) is a
  `Caller`: it is held back by waiting, since the hub answers it later.
- A subscriber whose transport is over its high-water mark (Twisted paused
  it) keeps writing, and opens a `Congestion`. Each message it takes while
  congested holds back ``Flow.current``, once per input. When its transport
  has drained, every input it held is released.
- A subscriber that drains nothing for ``timeout`` seconds is stuck, not
  busy: its congestion turns ``slow``, it releases what it held and holds
  nobody back from then on; it drops QoS 0 messages instead (counted), and
  its QoS 1/2 messages follow the queue and spill policy. It stops being
  slow once its transport has drained; but for `SLOW_REMEMBERED` seconds
  after, its next congestion is slow from the start, so that a client that
  reads a little now and then cannot keep publishers waiting.

So a subscriber that keeps reading loses nothing, its memory grows by at
most one read of each input that feeds it, and one stuck client holds
publishers back for at most ``timeout`` seconds.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer


class IInput(Interface):
    """Where messages come from: something that can stop taking more."""

    def hold(by):
        """Take no more input until ``release(by)``; holds by several
        outputs add up, and the input goes on when all are released."""

    def release(by):
        """End the hold ``by`` placed."""


#: Seconds a subscriber that was slow stays suspect: congested again within
#: them, it is slow at once instead of holding publishers back again.
SLOW_REMEMBERED = 60.0


class Flow:
    """The input whose messages the hub is routing now, if any.

    The reactor handles one event at a time, so one value serves the whole
    hub; front ends set it around the calls that publish, and put back the
    previous value (reads can nest when a transport delivers synchronously).
    """

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current = None


class Congestion:
    """One output over its high-water mark: the inputs it holds back, and
    the timer that calls it stuck when nothing drains for ``timeout``."""

    __slots__ = ("held", "slow", "_call", "_on_slow")

    def __init__(self, clock, timeout: float, on_slow=None, *, slow: bool = False) -> None:
        """``slow``: the output was slow a moment ago (`SLOW_REMEMBERED`)
        and is taken for stuck from the start."""
        self.held: set = set()
        #: Stuck: holds nobody back; the owner drops what it cannot keep.
        self.slow = slow
        self._on_slow = on_slow
        self._call = clock.callLater(timeout, self._stuck) if timeout > 0 and not slow else None

    def hold(self, flow: Flow, owner=None) -> bool:
        """Hold back the input routing now, unless it is ``owner`` itself.
        Return False when the output is slow: it must not be written to."""
        if self.slow:
            return False
        current = flow.current
        if current is not None and current is not owner and current not in self.held:
            self.held.add(current)
            current.hold(self)
        return True

    def end(self) -> None:
        """The output drained or went away: let every held input go on."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._release_all()

    def _stuck(self) -> None:
        self._call = None
        self.slow = True
        self._release_all()
        if self._on_slow is not None:
            self._on_slow()

    def _release_all(self) -> None:
        held, self.held = self.held, set()
        for source in held:
            source.release(self)


@implementer(IInput)
class Caller:
    """An input with nothing to pause: one call of ``Hub.publish``. Held
    back, it hands its caller a Deferred that fires once every output it
    congested has drained (or turned slow, or gone)."""

    __slots__ = ("_holds", "_drained")

    def __init__(self) -> None:
        self._holds: set = set()
        self._drained: Deferred | None = None

    def hold(self, by) -> None:
        self._holds.add(by)

    def release(self, by) -> None:
        holds = self._holds
        holds.discard(by)
        if not holds and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def drained(self) -> Deferred | None:
        """None when nothing holds this call back, else a Deferred."""
        if not self._holds:
            return None
        if self._drained is None:
            self._drained = Deferred()
        return self._drained
