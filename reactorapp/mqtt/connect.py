"""CONNECT handling and authentication for `MQTTProtocol`: accept, hold, replay.

Kept apart from the packet handling of a connected client, as Mosquitto
keeps ``handle_connect.c`` apart from ``handle_publish.c``. The first packet
must be a CONNECT [MQTT-3.1.0-1]; the authenticator may take a while (scrypt
runs on a thread), and what the client sends meanwhile is held, in order,
with reading paused, then replayed once the session is bound, or dropped
with the connection when it is refused.

MQTT 5 (a level-5 CONNECT) adds what was agreed (`reactorapp.mqtt.v5.V5`),
CONNACK properties and reason codes, Session Expiry in place of Clean
Session, and enhanced authentication: AUTH packets between CONNECT and
CONNACK, and again while connected (re-authentication).

`ConnectHandling` is a base class of `MQTTProtocol` rather than an object
of its own: a connection stays one object with at most 29 attributes
(tests/test_protocol.py), and these run once per connection.
"""

from __future__ import annotations

import math
import uuid

from twisted.internet.defer import CancelledError, TimeoutError, maybeDeferred
from twisted.python.failure import Failure
from twisted.logger import Logger

from reactorapp.auth.interfaces import (
    Authenticated, Challenge, Identity, IEnhancedAuthenticator, NotAuthorized, UseAnotherServer,
)
from reactorapp.auth.limits import TokenBucket
from reactorapp.auth.tls import peer_certificate
from reactorapp.hub.interfaces import ISessionLoader
from reactorapp.mqtt import packets as P
from reactorapp.mqtt.codec import ProtocolError, encode
from reactorapp.mqtt.session import Session, restore_sessions
from reactorapp.mqtt.states import AUTHENTICATING, AWAITING_CONNECT, CHALLENGED, CONNECTED
from reactorapp.mqtt.v5 import MAX_PACKET, V5, return_code_for, session_expiry_seconds

log = Logger()

R = P.ReasonCode

#: Packets a client may send between CONNECT and CONNACK (reading is paused
#: meanwhile, so only what arrived with the CONNECT is ever held).
MAX_HELD_PACKETS = 1000

#: What every MQTT 5 CONNACK says the broker supports [§3.2.2.3]. Maximum
#: QoS is left out: absent means 2, and 2 may not be sent [MQTT-3.2.2-9].
SUPPORTED = {
    "retain_available": 1,
    "wildcard_subscription_available": 1,
    "subscription_identifier_available": 1,
    "shared_subscription_available": 1,
}


def receive_maximum(settings) -> int:
    """Our Receive Maximum: --max-pending-acks, within what MQTT can say."""
    return min(settings.max_pending_acks, 65535)


def expiry_for(interval: int, settings) -> float:
    """The seconds a session is kept for a Session Expiry Interval a 5.0
    client asked for: no more than --session-expiry when it is set."""
    seconds = session_expiry_seconds(interval)
    return min(seconds, settings.session_expiry) if settings.session_expiry else seconds


def protocol_version(protocol) -> str | None:
    """"5.0", "3.1.1" or "3.1", as its CONNECT said (the parser's level)."""
    if protocol.v5 is not None:
        return "5.0"
    return {P.MQTT_3_1: "3.1", P.MQTT_3_1_1: "3.1.1"}.get(protocol._parser.protocol_level)


class ConnectHandling:
    """From the first packet to CONNACK, and AUTH. Uses the connection's
    ``guard``, ``hub``, ``settings``, ``_write``, ``_close``,
    ``_protocol_error``, ``_disconnect`` and its ``_HANDLERS`` for the replay."""

    def _on_first_packet(self, packet) -> None:
        self._stop_timer()
        if type(packet) is not P.Connect:
            # [MQTT-3.1.0-1]: close without CONNACK.
            self._protocol_error(f"first packet was {type(packet).__name__}, not CONNECT")
            return
        self._on_connect(packet)

    def _on_connect(self, connect: P.Connect) -> None:
        if connect.protocol_level == P.MQTT_5:
            self.v5 = V5(connect.properties)
            self.v5.limit = receive_maximum(self.settings)
        client_id = connect.client_id
        if connect.protocol_level == P.MQTT_3_1 and not 0 < len(client_id) <= 23:
            # MQTT 3.1 (section 3.1): a client id of 1 to 23 characters.
            self._refuse(R.CLIENT_IDENTIFIER_NOT_VALID,
                         "MQTT 3.1 client ids have 1 to 23 characters")
            return
        if not client_id:
            if not connect.clean_session and self.v5 is None:
                # [MQTT-3.1.3-8] (3.1.1 only: MQTT 5 keeps an assigned id's session)
                self._refuse(R.CLIENT_IDENTIFIER_NOT_VALID,
                             "empty client id without Clean Session")
                return
            # [MQTT-3.1.3-6]; MQTT 5 says which in CONNACK [MQTT-3.1.3-7].
            client_id = "auto-" + uuid.uuid4().hex
        self.client_id = client_id
        authenticator = self.guard.authenticator
        method = self.v5.auth_method if self.v5 is not None else None
        if method is not None:
            enhanced = _enhanced(authenticator)
            if enhanced is None or method not in enhanced.auth_methods:
                # [MQTT-4.12.0-1]
                self._refuse(R.BAD_AUTHENTICATION_METHOD,
                             f"authentication method {method!r} is not supported")
                return
            self.state = AUTHENTICATING
            self._held = []
            self._await_authentication(maybeDeferred(
                enhanced.start_authentication, method,
                connect.properties.get("authentication_data"), connect.username,
                client_id, self.transport.getPeer(), peer_certificate(self.transport)), connect)
            return
        if authenticator is None:
            try:
                self._accept(connect, Identity(connect.username, client_id))
            except Exception:
                self._ebAccept(Failure())
            return
        # [§3.1.4]: authentication may take a while (scrypt runs on a thread).
        # Packets sent behind the CONNECT wait, in order, and reading pauses.
        self.state = AUTHENTICATING
        self._held = []
        self._await_authentication(maybeDeferred(
            authenticator.authenticate, connect.username, connect.password,
            client_id, self.transport.getPeer(), peer_certificate(self.transport)), connect)

    def _await_authentication(self, d, connect: P.Connect) -> None:
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

    def _cbAuthenticated(self, result, connect: P.Connect) -> None:
        if self.state is not AUTHENTICATING:
            return  # closed meanwhile
        if isinstance(result, Challenge):
            # [MQTT-4.12.0-2]: AUTH 0x18, then wait (reading) for the
            # client's AUTH, within the CONNECT timeout.
            self.v5.auth_step = (result.next, connect)
            self.state = CHALLENGED
            self._send_auth(R.CONTINUE_AUTHENTICATION, result.data)
            if self.settings.connect_timeout:
                self._timer = self.factory.timeouts.add(
                    self.settings.connect_timeout, self, self._connect_timed_out)
            self._resume_reading("auth")
            return
        if result is None:
            self.guard.stats.bad_credentials += 1
            self._refuse(R.BAD_USER_NAME_OR_PASSWORD,
                         f"bad user name or password for {connect.username!r}")
            return
        self._resume_reading("auth")
        if isinstance(result, Authenticated):
            self._accept(connect, result.identity, result.data)
        else:
            self._accept(connect, result)

    def _ebAuthenticated(self, failure) -> None:
        if self.state is not AUTHENTICATING:
            return
        if failure.check(NotAuthorized):
            self.guard.stats.not_authorized += 1
            self._refuse(R.NOT_AUTHORIZED, str(failure.value) or "not authorised")
            return
        if failure.check(UseAnotherServer):
            moved = failure.value
            self._refuse(R.SERVER_MOVED if moved.permanent else R.USE_ANOTHER_SERVER,
                         f"use another server: {moved.reference}",
                         {"server_reference": moved.reference})
            return
        if failure.check(TimeoutError, CancelledError):
            self._refuse(R.SERVER_BUSY, "the authenticator did not answer in time")
            return
        log.failure("Could not authenticate {peer}", failure, peer=self._peer())
        self._refuse(R.SERVER_UNAVAILABLE, "authentication failed")

    def _ebAccept(self, failure) -> None:
        """Accepting raised (a plugin authorizer, a bug): log it once, tell
        the client (CONNACK 3 if no CONNACK went out yet) and close."""
        log.failure("Could not accept {peer} ({client_id})", failure,
                    peer=self._peer(), client_id=self.client_id)
        if self.state in (AWAITING_CONNECT, AUTHENTICATING, CHALLENGED):
            self._refuse(R.SERVER_UNAVAILABLE, "accepting the connection failed")
        else:
            self._close(abort=True)

    def _accept(self, connect: P.Connect, identity: Identity, auth_data=None) -> None:
        """The client is who it says: apply the session rules, CONNACK 0,
        then handle what it sent while it waited."""
        client_id = self.client_id
        will = connect.will
        if (will is not None and self.authorizer is not None
                and not self.authorizer.can_publish(identity, will.topic)):
            self.guard.stats.not_authorized += 1
            self._refuse(R.NOT_AUTHORIZED, f"will topic {will.topic!r} not allowed")
            return
        self.identity = identity
        settings = self.settings
        v5 = self.v5
        properties = None
        if v5 is None:
            # 3.1.1 has no way to tell a client another keep-alive: it keeps its own.
            self.keep_alive = connect.keep_alive
            # Clean Session 0: kept after the connection (for --session-expiry).
            expiry = 0.0 if connect.clean_session else (settings.session_expiry or math.inf)
        else:
            properties = self._connack_properties(connect, auth_data)
            expiry = expiry_for(connect.properties.get("session_expiry_interval", 0), settings)
            if expiry != session_expiry_seconds(
                    connect.properties.get("session_expiry_interval", 0)):
                properties["session_expiry_interval"] = int(expiry)
        self.will = will
        if settings.publish_rate:
            self._bucket = TokenBucket(settings.publish_rate, settings.publish_burst, self.clock)

        hub = self.hub
        # providedBy, not adaptation: a tenth of the cost, paid by every CONNECT.
        loader = hub.store if ISessionLoader.providedBy(hub.store) else None
        if loader is not None and hub.get_session(client_id) is None:
            if not connect.clean_session:
                self._load_session(loader, connect, identity, expiry, properties)
                return
            loader.forget_session(client_id)  # [MQTT-3.1.2-6], wherever it was kept
        self._bind_session(connect, identity, expiry, properties)

    def _load_session(self, loader, connect: P.Connect, identity: Identity, expiry: float,
                      properties: dict | None) -> None:
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
                       callbackArgs=(connect, identity, expiry, properties))
        d.addErrback(self._ebAccept)

    def _cbSessionLoaded(self, stored, connect: P.Connect, identity: Identity, expiry: float,
                         properties: dict | None) -> None:
        if self.state is not AUTHENTICATING:
            return  # closed meanwhile
        self._resume_reading("session")
        if stored is not None and self.hub.get_session(self.client_id) is None:
            restore_sessions(self.hub, [stored], self.settings)
        self._bind_session(connect, identity, expiry, properties)

    def _ebSessionLoaded(self, failure) -> None:
        if self.state is not AUTHENTICATING:
            return
        log.failure("Could not read the session of {client_id}", failure,
                    client_id=self.client_id)
        self._refuse(R.SERVER_UNAVAILABLE, "the session could not be read")

    def _bind_session(self, connect: P.Connect, identity: Identity, expiry: float,
                      properties: dict | None) -> None:
        """Take over, discard or make the client's session (kept ``expiry``
        seconds once the client is away), then CONNACK (MQTT 5: with
        ``properties``)."""
        client_id = self.client_id
        hub = self.hub
        settings = self.settings
        v5 = self.v5
        # A connection with this id on another node closes; after a stored
        # session was read (this node holds it now), so that messages for it
        # go to one node or the other, never to neither.
        hub.claim(client_id, clean=connect.clean_session)
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
            session.connection.take_over()  # [MQTT-3.1.4-3]
        if session is not None and (connect.clean_session or not session.persistent):
            # Clean Start / Clean Session: the old session ends (its delayed
            # will goes out now) [MQTT-3.1.2-4] [MQTT-3.1.2-6].
            session.discard()
            session = None
        # [MQTT-3.2.2-1..3]; in MQTT 3.1 that byte is reserved, always 0.
        session_present = session is not None and connect.protocol_level != P.MQTT_3_1
        if session is None:
            session = Session(client_id, expiry > 0, hub, settings)
            hub.add_session(client_id, session)
        session.set_expiry(expiry, chosen=v5 is not None)
        session.window = (settings.max_inflight if v5 is None
                          else min(settings.max_inflight, v5.receive_maximum))
        session.identity = identity
        session.may_read = self.guard.read_filter(identity)
        self.session = session
        self.state = CONNECTED
        self.stats.client_connected(protocol_version(self))
        # [MQTT-3.2.0-1]: CONNACK goes out before anything queued.
        if v5 is None:
            self._write(encode(P.ConnAck(session_present, P.ConnectReturnCode.ACCEPTED)))
        else:
            data = v5.fit(P.ConnAck(session_present, R.SUCCESS, properties))
            if data is None:  # a Maximum Packet Size too small for any CONNACK
                self._close(abort=True)
                return
            self._write(data)
        self._start_keepalive()
        session.attach(self)  # cancels a will waiting for its delay [MQTT-3.1.3-9]
        held, self._held = self._held, None
        if held:
            self._replay(held)

    def _connack_properties(self, connect: P.Connect, auth_data) -> dict:
        """What an MQTT 5 CONNACK tells the client [§3.2.2.3]; sets the
        keep-alive it is held to."""
        settings = self.settings
        properties = dict(SUPPORTED)
        properties["receive_maximum"] = receive_maximum(settings)
        if settings.max_packet_size < MAX_PACKET:
            properties["maximum_packet_size"] = settings.max_packet_size
        if settings.topic_alias_maximum:
            properties["topic_alias_maximum"] = settings.topic_alias_maximum
        if not connect.client_id:
            properties["assigned_client_identifier"] = self.client_id  # [MQTT-3.1.3-7]
        keep_alive = connect.keep_alive
        limit = settings.max_keepalive
        if limit and (keep_alive == 0 or keep_alive > limit):
            # [MQTT-3.2.2-21]: the client uses ours, and is held to it.
            keep_alive = properties["server_keep_alive"] = limit
        self.keep_alive = keep_alive
        if (connect.properties.get("request_response_information")
                and settings.response_information):
            # [MQTT-3.1.2-28]: only when asked for.
            properties["response_information"] = settings.response_information.replace(
                "%c", self.client_id)
        if self.v5.auth_method is not None:
            properties["authentication_method"] = self.v5.auth_method
            if auth_data is not None:
                properties["authentication_data"] = auth_data
        return properties

    def _replay(self, held: list) -> None:
        handlers = self._HANDLERS
        for item in held:
            if self.state is not CONNECTED:
                return
            if isinstance(item, ProtocolError):
                self._protocol_error(item.reason, item.reason_code)
                return
            handlers[type(item)](self, item)

    def _refuse(self, reason_code: int, reason: str, properties: dict | None = None) -> None:
        """CONNACK with an MQTT 5 reason code (for 3.1.1, the closest return
        code), then close [MQTT-3.2.2-5] [MQTT-3.2.2-7]; Session Present is
        0 [MQTT-3.2.2-4] [MQTT-3.2.2-6]. MQTT 5 says why in a Reason String."""
        log.info("Refusing {peer}: {reason}", peer=self._peer(), reason=reason)
        v5 = self.v5
        if v5 is None:
            data = encode(P.ConnAck(False, return_code_for(reason_code)))
        else:
            data = v5.fit(P.ConnAck(False, reason_code,
                                    {**(properties or {}), "reason_string": reason}))
        if data is not None:
            self._write(data)
        self._close(abort=False)

    # -- AUTH: enhanced authentication and re-authentication [§4.12] ---------------

    def _send_auth(self, reason_code: int, data: bytes | None) -> None:
        """[MQTT-4.12.0-5]: every AUTH carries the CONNECT's method."""
        properties = {"authentication_method": self.v5.auth_method}
        if data is not None:
            properties["authentication_data"] = data
        packet = self.v5.fit(P.Auth(reason_code, properties))
        if packet is not None:
            self._write(packet)

    def _auth_problem(self, auth: P.Auth, expected: int) -> str | None:
        v5 = self.v5
        if v5.auth_method is None:
            return "AUTH without an Authentication Method in CONNECT"  # [MQTT-4.12.0-7]
        if auth.properties.get("authentication_method") != v5.auth_method:
            return "AUTH with another Authentication Method"  # [MQTT-4.12.0-5]
        if auth.reason_code != expected:
            return f"AUTH with reason code 0x{auth.reason_code:02x}"
        return None

    def _on_auth_answer(self, auth) -> None:
        """CHALLENGED: the client's answer to our AUTH [MQTT-4.12.0-3]."""
        if type(auth) is P.Disconnect:
            self._close(abort=False)
            return
        if type(auth) is not P.Auth:
            # [MQTT-3.1.2-30]: nothing but AUTH or DISCONNECT before CONNACK.
            self._refuse(R.PROTOCOL_ERROR, f"{type(auth).__name__} during authentication")
            return
        problem = self._auth_problem(auth, R.CONTINUE_AUTHENTICATION)
        if problem is not None:
            self._refuse(R.PROTOCOL_ERROR, problem)
            return
        self._stop_timer()
        step, connect = self.v5.auth_step
        self.v5.auth_step = None
        self.state = AUTHENTICATING
        self._await_authentication(
            maybeDeferred(step, auth.properties.get("authentication_data")), connect)

    def _on_auth(self, auth: P.Auth) -> None:
        """CONNECTED: re-authentication (AUTH 0x19), and its later rounds
        (AUTH 0x18) [MQTT-4.12.1-1]."""
        v5 = self.v5
        step = v5.auth_step
        problem = self._auth_problem(
            auth, R.RE_AUTHENTICATE if step is None else R.CONTINUE_AUTHENTICATION)
        if problem is not None:
            self._protocol_error(problem)
            return
        data = auth.properties.get("authentication_data")
        if step is None:
            enhanced = _enhanced(self.guard.authenticator)
            d = maybeDeferred(enhanced.start_authentication, v5.auth_method, data,
                              self.identity.username, self.client_id,
                              self.transport.getPeer(), peer_certificate(self.transport))
        else:
            v5.auth_step = None
            d = maybeDeferred(step[0], data)
        d.addTimeout(self.settings.connect_timeout or 60.0, self.clock)
        d.addCallbacks(self._cbReauthenticated, self._ebReauthenticated)
        d.addErrback(self._ebReauthenticated)

    def _cbReauthenticated(self, result) -> None:
        if self.state is not CONNECTED:
            return
        if isinstance(result, Challenge):
            self.v5.auth_step = (result.next, None)
            self._send_auth(R.CONTINUE_AUTHENTICATION, result.data)
            return
        if result is None:
            self.guard.stats.bad_credentials += 1
            self._disconnect(R.NOT_AUTHORIZED, "re-authentication failed")  # [MQTT-4.12.1-2]
            return
        identity, data = ((result.identity, result.data) if isinstance(result, Authenticated)
                          else (result, None))
        if identity.username != self.identity.username:
            self._disconnect(R.NOT_AUTHORIZED, "re-authenticated as another user")
            return
        self.identity = identity
        self.session.identity = identity
        self.session.may_read = self.guard.read_filter(identity)
        self._send_auth(R.SUCCESS, data)

    def _ebReauthenticated(self, failure) -> None:
        if self.state is not CONNECTED:
            return
        if failure.check(NotAuthorized):
            self.guard.stats.not_authorized += 1
            self._disconnect(R.NOT_AUTHORIZED, str(failure.value) or "not authorised")
        elif failure.check(UseAnotherServer):
            moved = failure.value
            self._disconnect(R.SERVER_MOVED if moved.permanent else R.USE_ANOTHER_SERVER,
                             f"use another server: {moved.reference}",
                             {"server_reference": moved.reference})
        else:
            log.failure("Could not re-authenticate {client_id}", failure,
                        client_id=self.client_id)
            self._disconnect(R.IMPLEMENTATION_SPECIFIC_ERROR, "re-authentication failed")


def _enhanced(authenticator):
    """The `IEnhancedAuthenticator` behind the configured authenticator
    (a TLS certificate check wraps the plugin in ``fallback``), or None."""
    for candidate in (authenticator, getattr(authenticator, "fallback", None)):
        if candidate is not None and IEnhancedAuthenticator.providedBy(candidate):
            return candidate
    return None
