"""CONNECT handling and authentication for `MQTTProtocol`: accept, hold, replay.

Kept apart from the packet handling of a connected client, as Mosquitto
keeps ``handle_connect.c`` apart from ``handle_publish.c``. The first packet
must be a CONNECT [MQTT-3.1.0-1]; the authenticator may take a while (scrypt
runs on a thread), and what the client sends meanwhile is held, in order,
with reading paused, then replayed once the session is bound, or dropped
with the connection when it is refused.

`ConnectHandling` is a base class of `MQTTProtocol` rather than an object
of its own: a connection stays one object with at most 29 attributes
(tests/test_protocol.py), and these run once per connection.
"""

from __future__ import annotations

import uuid

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from reactorapp.auth.interfaces import Identity, NotAuthorized
from reactorapp.auth.limits import TokenBucket
from reactorapp.auth.tls import peer_certificate
from reactorapp.hub.interfaces import ISessionLoader
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import ProtocolError, encode
from reactorapp.mqtt.session import Session, restore_sessions
from reactorapp.mqtt.states import AUTHENTICATING, AWAITING_CONNECT, CONNECTED

log = Logger()

#: Packets a client may send between CONNECT and CONNACK (reading is paused
#: meanwhile, so only what arrived with the CONNECT is ever held).
MAX_HELD_PACKETS = 1000


class ConnectHandling:
    """From the first packet to CONNACK. Uses the connection's ``guard``,
    ``hub``, ``settings``, ``_write``, ``_close``, ``_protocol_error`` and
    its ``_HANDLERS`` for the replay."""

    def _on_first_packet(self, packet) -> None:
        self._cancel_connect_timeout()
        if type(packet) is not P.Connect:
            # [MQTT-3.1.0-1]: close without CONNACK.
            self._protocol_error(f"first packet was {type(packet).__name__}, not CONNECT")
            return
        self._on_connect(packet)

    def _on_connect(self, connect: P.Connect) -> None:
        client_id = connect.client_id
        if connect.protocol_level == P.MQTT_3_1 and not 0 < len(client_id) <= 23:
            # MQTT 3.1 (section 3.1): a client id of 1 to 23 characters.
            self._refuse(P.ConnectReturnCode.IDENTIFIER_REJECTED,
                         "MQTT 3.1 client ids have 1 to 23 characters")
            return
        if not client_id:
            if not connect.clean_session:
                # [MQTT-3.1.3-8]
                self._refuse(P.ConnectReturnCode.IDENTIFIER_REJECTED,
                             "empty client id without Clean Session")
                return
            client_id = "auto-" + uuid.uuid4().hex  # [MQTT-3.1.3-6]
        self.client_id = client_id
        authenticator = self.guard.authenticator
        if authenticator is None:
            maybeDeferred(self._accept, connect, Identity(connect.username, client_id)
                          ).addErrback(self._ebAccept)
            return
        # [§3.1.4]: authentication may take a while (scrypt runs on a thread).
        # Packets sent behind the CONNECT wait, in order, and reading pauses.
        self.state = AUTHENTICATING
        self._held = []
        d = maybeDeferred(authenticator.authenticate, connect.username, connect.password,
                          client_id, self.transport.getPeer(), peer_certificate(self.transport))
        d.addTimeout(self.settings.connect_timeout or 60.0, self.clock)
        d.addCallbacks(self._cbAuthenticated, self._ebAuthenticated,
                       callbackArgs=(connect,))
        d.addErrback(self._ebAccept)
        if self.state is AUTHENTICATING:
            self._pause_reading("auth")

    def _hold(self, item) -> None:
        if len(self._held) >= MAX_HELD_PACKETS:
            self._protocol_error("too many packets before CONNACK")
            return
        self._held.append(item)

    def _cbAuthenticated(self, identity, connect: P.Connect) -> None:
        if self.state is not AUTHENTICATING:
            return  # closed meanwhile
        if identity is None:
            self.guard.stats.bad_credentials += 1
            self._refuse(P.ConnectReturnCode.BAD_USERNAME_OR_PASSWORD,
                         f"bad user name or password for {connect.username!r}")
            return
        self._resume_reading("auth")
        self._accept(connect, identity)

    def _ebAuthenticated(self, failure) -> None:
        if self.state is not AUTHENTICATING:
            return
        if failure.check(NotAuthorized):
            self.guard.stats.not_authorized += 1
            self._refuse(P.ConnectReturnCode.NOT_AUTHORIZED, str(failure.value) or "not authorised")
            return
        log.failure("Could not authenticate {peer}", failure, peer=self._peer())
        self._refuse(P.ConnectReturnCode.SERVER_UNAVAILABLE, "authentication failed")

    def _ebAccept(self, failure) -> None:
        """Accepting raised (a plugin authorizer, a bug): log it once, tell
        the client (CONNACK 3 if no CONNACK went out yet) and close."""
        log.failure("Could not accept {peer} ({client_id})", failure,
                    peer=self._peer(), client_id=self.client_id)
        if self.state in (AWAITING_CONNECT, AUTHENTICATING):
            self._refuse(P.ConnectReturnCode.SERVER_UNAVAILABLE, "accepting the connection failed")
        else:
            self._close(abort=True)

    def _accept(self, connect: P.Connect, identity: Identity) -> None:
        """The client is who it says: apply the session rules, CONNACK 0,
        then handle what it sent while it waited."""
        client_id = self.client_id
        will = connect.will
        if (will is not None and self.authorizer is not None
                and not self.authorizer.can_publish(identity, will.topic)):
            self.guard.stats.not_authorized += 1
            self._refuse(P.ConnectReturnCode.NOT_AUTHORIZED,
                         f"will topic {will.topic!r} not allowed")
            return
        self.identity = identity
        self.keep_alive = min(connect.keep_alive, self.settings.max_keepalive)
        self.will = will
        if self.settings.publish_rate:
            self._bucket = TokenBucket(self.settings.publish_rate,
                                       self.settings.publish_burst, self.clock)

        hub = self.hub
        loader = ISessionLoader(hub.store, None)
        if loader is not None and hub.get_session(client_id) is None:
            if not connect.clean_session:
                self._load_session(loader, connect, identity)
                return
            loader.forget_session(client_id)  # [MQTT-3.1.2-6], wherever it was kept
        self._bind_session(connect, identity)

    def _load_session(self, loader, connect: P.Connect, identity: Identity) -> None:
        """The hub's store is shared with other nodes (a cluster): the
        client's session may have been left on another one. Read it first,
        holding what the client sends meanwhile, as during authentication."""
        self.state = AUTHENTICATING
        if self._held is None:
            self._held = []
        self._pause_reading("session")
        d = loader.load_session(self.client_id)
        d.addTimeout(self.settings.connect_timeout or 60.0, self.clock)
        d.addCallbacks(self._cbSessionLoaded, self._ebSessionLoaded,
                       callbackArgs=(connect, identity))
        d.addErrback(self._ebAccept)

    def _cbSessionLoaded(self, stored, connect: P.Connect, identity: Identity) -> None:
        if self.state is not AUTHENTICATING:
            return  # closed meanwhile
        self._resume_reading("session")
        if stored is not None and self.hub.get_session(self.client_id) is None:
            restore_sessions(self.hub, [stored], self.settings)
        self._bind_session(connect, identity)

    def _ebSessionLoaded(self, failure) -> None:
        if self.state is not AUTHENTICATING:
            return
        log.failure("Could not read the session of {client_id}", failure,
                    client_id=self.client_id)
        self._refuse(P.ConnectReturnCode.SERVER_UNAVAILABLE, "the session could not be read")

    def _bind_session(self, connect: P.Connect, identity: Identity) -> None:
        """Take over, discard or make the client's session, then CONNACK."""
        client_id = self.client_id
        hub = self.hub
        # A connection with this id on another node closes; after a stored
        # session was read (this node holds it now), so that messages for it
        # go to one node or the other, never to neither.
        hub.claim(client_id)
        session = hub.get_session(client_id)
        if (session is not None and session.identity is not None
                and session.identity.username != identity.username):
            # A session belongs to the user who made it: another user with
            # the same client id starts afresh and never sees its messages.
            if session.connection is not None:
                session.connection.take_over()
            session.discard()
            session = None
        if session is not None and session.connection is not None:
            session.connection.take_over()
        if session is not None and (connect.clean_session or not session.persistent):
            session.discard()  # [MQTT-3.1.2-6]
            session = None
        # [MQTT-3.2.2-1..3]; in MQTT 3.1 that byte is reserved, always 0.
        session_present = session is not None and connect.protocol_level != P.MQTT_3_1
        if session is None:
            session = Session(client_id, not connect.clean_session, hub, self.settings)
            hub.add_session(client_id, session)
        session.identity = identity
        session.may_read = self.guard.read_filter(identity)
        self.session = session
        self.state = CONNECTED
        self.stats.client_connected()
        # [MQTT-3.2.0-1]: CONNACK goes out before anything queued.
        self._write(encode(P.ConnAck(session_present, P.ConnectReturnCode.ACCEPTED)))
        self._start_keepalive()
        session.attach(self)
        held, self._held = self._held, None
        if held:
            self._replay(held)

    def _replay(self, held: list) -> None:
        handlers = self._HANDLERS
        for item in held:
            if self.state is not CONNECTED:
                return
            if isinstance(item, ProtocolError):
                self._protocol_error(item.reason)
                return
            handlers[type(item)](self, item)

    def _refuse(self, return_code: int, reason: str) -> None:
        """CONNACK with a non-zero code, then close [MQTT-3.2.2-5];
        Session Present is 0 [MQTT-3.2.2-4]."""
        log.info("Refusing {peer}: {reason}", peer=self._peer(), reason=reason)
        self._write(encode(P.ConnAck(False, return_code)))
        self._close(abort=False)
