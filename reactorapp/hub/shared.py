"""Shared subscriptions: ``$share/GROUP/FILTER`` (MQTT 5 section 4.8.2).

Every member of a group subscribes to the same filter, and each matching
message goes to one of them: the competing-consumers pattern. 3.1.1 clients
may join as well, and so may HTTP streams and webhook rules.

The choice is made per message, in turn (round robin), among the members
that can take the message now. A member says how ready it is through an
optional ``share_state(qos)`` method (no method: always `READY`):

- `READY`: connected and writing (an MQTT session with room in its
  in-flight window, a stream that is not paused);
- `BUSY`: connected, but congested or slow (reactorapp/hub/flow.py) or with
  messages already waiting: it takes a message only if nobody is `READY`;
- `AWAY`: a persistent session whose client is offline: it takes a message
  only if no member is connected, and then keeps it for its client.

A member's ``deliver`` may answer `REFUSED` (its ACL hides the topic from
it): the message then goes to the next member instead.
"""

from __future__ import annotations

__all__ = ["READY", "BUSY", "AWAY", "REFUSED", "ShareGroup"]

READY, BUSY, AWAY = 0, 1, 2

#: What ``deliver`` answers when the member will not take this message.
REFUSED = object()


def share_state(member, qos: int) -> int:
    """How ready ``member`` is for a message at ``qos`` (`READY`, `BUSY`, `AWAY`)."""
    state = getattr(member, "share_state", None)
    return READY if state is None else state(qos)


class ShareGroup:
    """The members of one ``$share/GROUP/FILTER``, and whose turn it is.

    ``members`` is the ``{subscriber: granted qos}`` dict the topic tree
    keeps for the whole filter, so joining, leaving and changing a QoS are
    seen here at once; ``_order`` follows it for the turns.
    """

    __slots__ = ("name", "topic_filter", "share_filter", "members", "_order", "_turn",
                 "deliveries", "handed_over")

    def __init__(self, name: str, topic_filter: str, members: dict) -> None:
        self.name = name
        #: The filter the members share (without "$share/GROUP/").
        self.topic_filter = topic_filter
        #: The whole filter, as subscribed: the group's key.
        self.share_filter = f"$share/{name}/{topic_filter}"
        self.members = members
        self._order: list = list(members)
        self._turn = 0
        #: Messages given to a member of the group, and given again to
        #: another member after the first went away without acknowledging.
        self.deliveries = 0
        self.handed_over = 0

    def __repr__(self) -> str:
        return f"<ShareGroup {self.share_filter!r} members={len(self.members)}>"

    def joined(self, member) -> None:
        self._order.append(member)

    def left(self, member) -> None:
        order = self._order
        index = order.index(member)
        del order[index]
        if index < self._turn:
            self._turn -= 1

    def next_ready(self, qos: int):
        """The member whose turn it is if it is `READY`, else None: the
        usual case, checked without building `candidates`."""
        order = self._order
        if not order:
            return None
        member = order[self._turn % len(order)]
        state = getattr(member, "share_state", None)
        return member if state is None or state(qos) == READY else None

    def candidates(self, qos: int, skip=None, connected_only: bool = False):
        """The members to offer a message at ``qos`` to, best first (a
        generator, so that the usual case looks at one member): the `READY`
        ones in turn from whoever is next, then the `BUSY` ones, then
        (unless ``connected_only``) the `AWAY` ones, each in turn.
        ``skip``: a member that must not get it (the one that left)."""
        order = self._order
        count = len(order)
        if not count:
            return
        start = self._turn % count
        busy: list = []
        away: list = []
        for member in order[start:] + order[:start] if start else list(order):
            if member is skip:
                continue
            state = share_state(member, qos)
            if state == READY:
                yield member
            elif state == BUSY:
                busy.append(member)
            else:
                away.append(member)
        yield from busy
        if not connected_only:
            yield from away

    def took(self, member) -> None:
        """``member`` took a message: the next one starts after it."""
        self.deliveries += 1
        order = self._order
        if order:
            turn = self._turn % len(order)
            if order[turn] is member:  # the usual case
                self._turn = turn + 1
            elif member in self.members:
                self._turn = order.index(member) + 1

    def describe(self) -> dict:
        """For the admin API and the dashboard."""
        return {
            "group": self.name,
            "filter": self.topic_filter,
            "members": len(self.members),
            "deliveries": self.deliveries,
            "handed_over": self.handed_over,
        }
