"""MQTT 5 subscription options of one session: No Local, Retain As
Published, Retain Handling and Subscription Identifiers.

The hub's `TopicTree` keeps ``{subscriber: highest QoS}`` per filter and
nothing else, so that routing costs the same for every subscriber. What a
5.0 subscription adds is the session's business: a session whose
subscriptions all have the default options has no `OptionTable` (None) and
pays nothing per message; one that uses them keeps ``filter -> Options``
here and works out, once per topic it receives (cached), what its matching
filters ask for: whether the client gets its own messages, whether the
RETAIN flag is kept, and every matching Subscription Identifier, so that
one PUBLISH carries them all when its subscriptions overlap [MQTT-3.3.4-3].
"""

from __future__ import annotations

from dataclasses import dataclass

from reactorapp.hub.topics import topic_matches

#: Topics whose routing a table remembers, at most (then it starts afresh).
CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Options:
    """One subscription's options beyond its QoS (section 3.8.3.1)."""

    no_local: bool = False
    retain_as_published: bool = False
    #: 0: send retained messages at subscribe; 1: only for a new
    #: subscription; 2: never [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11].
    retain_handling: int = 0
    #: The Subscription Identifier, 0 for none.
    identifier: int = 0

    @property
    def per_delivery(self) -> bool:
        """Whether the options change what a delivery looks like (Retain
        Handling only matters when subscribing)."""
        return self.no_local or self.retain_as_published or bool(self.identifier)

    @property
    def bits(self) -> int:
        """The Subscription Options byte without its QoS bits, as stored."""
        return (self.no_local << 2 | self.retain_as_published << 3
                | self.retain_handling << 4)

    @classmethod
    def from_bits(cls, bits: int, identifier: int = 0) -> Options:
        return cls(bool(bits & 0x04), bool(bits & 0x08), (bits >> 4) & 0x03, identifier)


DEFAULT = Options()


class Routing:
    """What a session's matching subscriptions ask of one topic's messages."""

    __slots__ = ("own", "as_published", "identifiers")

    def __init__(self, own: bool, as_published: bool, identifiers: tuple[int, ...]) -> None:
        #: The client gets messages it published itself (some matching
        #: subscription is not No Local) [MQTT-3.8.3-3].
        self.own = own
        #: Live messages keep their RETAIN flag [MQTT-3.3.1-12] [MQTT-3.3.1-13].
        self.as_published = as_published
        #: The Subscription Identifiers of the matching subscriptions, sorted.
        self.identifiers = identifiers


class OptionTable:
    """``filter -> Options`` for the subscriptions of a session that have
    options that matter when delivering.

    ``subscriptions`` is the session's own ``filter -> QoS`` dict (shared,
    not copied): a topic's routing looks at every subscription of the
    session, since a filter with default options still delivers the
    client's own messages.
    """

    __slots__ = ("subscriptions", "options", "_cache")

    def __init__(self, subscriptions: dict[str, int]) -> None:
        self.subscriptions = subscriptions
        self.options: dict[str, Options] = {}
        self._cache: dict[str, Routing] = {}

    def __bool__(self) -> bool:
        return bool(self.options)

    def set(self, topic_filter: str, options: Options) -> None:
        """A subscription was added, replaced or removed (`DEFAULT`): the
        session's subscriptions changed, so every routing is worked out again."""
        if options.per_delivery:
            self.options[topic_filter] = options
        else:
            self.options.pop(topic_filter, None)
        self._cache.clear()

    def routing(self, topic: str) -> Routing:
        routing = self._cache.get(topic)
        if routing is None:
            routing = self._route(topic)
            cache = self._cache
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[topic] = routing
        return routing

    def shared_routing(self, share_filter: str) -> Routing:
        """What the shared subscription ``share_filter`` asks of the copy it
        delivers: that copy is its own [MQTT-3.3.4-5], and No Local does not
        apply to it [MQTT-3.8.3-4]."""
        options = self.options.get(share_filter, DEFAULT)
        identifiers = (options.identifier,) if options.identifier else ()
        return Routing(True, options.retain_as_published, identifiers)

    def _route(self, topic: str) -> Routing:
        """For the copy the session's non-shared subscriptions deliver
        (a shared subscription's copy: `shared_routing`)."""
        own = as_published = False
        identifiers = set()
        get = self.options.get
        for topic_filter in self.subscriptions:
            if topic_filter.startswith("$share/") or not topic_matches(topic_filter, topic):
                continue
            options = get(topic_filter, DEFAULT)
            own = own or not options.no_local
            as_published = as_published or options.retain_as_published
            if options.identifier:
                identifiers.add(options.identifier)
        return Routing(own, as_published, tuple(sorted(identifiers)))
