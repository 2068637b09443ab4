"""Reading Redis at start-up, before the reactor runs: txredisapi's protocol
over a plain socket.

`IStore.load` may block, and it runs in `startService`, before twistd starts
the reactor, so that nothing is served until the state is back. The
protocol's parser is txredisapi's own; this module only feeds it the bytes
read from a blocking socket, and runs the calls it would have asked the
reactor to make later, in order, itself.
"""

from __future__ import annotations

import socket
from collections import deque

from twisted.python.failure import Failure

from reactorapp.cluster.url import ssl_context


class _SocketTransport:
    """The little of `ITransport` the protocol uses, on a blocking socket."""

    disconnecting = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def writeSequence(self, data) -> None:
        self.sock.sendall(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True

    abortConnection = loseConnection

    def pauseProducing(self) -> None:
        pass

    resumeProducing = stopProducing = pauseProducing


class _Factory:
    """What the protocol calls on its factory when logging in fails."""

    isLazy = True

    def __init__(self) -> None:
        self.error: str | None = None

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        self.error = why


class BlockingRedis:
    """One connection, each call waits for its answer; `send` then `wait`
    pipelines."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, tls: bool | str = False,
                 timeout: float = 10.0) -> None:
        """``tls``: true to check the server against the system's trusted
        certificates, or the file of those to trust instead (``--cluster-ca``)."""
        import txredisapi  # imports the global reactor: only when Redis is used

        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            sock = ssl_context(tls).wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self._later: deque = deque()
        protocol = txredisapi.RedisProtocol(charset=None, password=password, dbid=db or None,
                                            convertNumbers=False, username=username)
        protocol.callLater = self._call_later
        protocol.factory = self._factory = _Factory()
        self.protocol = protocol
        protocol.makeConnection(_SocketTransport(sock))
        self.wait(protocol.whenConnected())

    def _call_later(self, _delay, function, *args, **kwargs) -> None:
        self._later.append((function, args, kwargs))

    def send(self, *args):
        """Send one command; a Deferred of its answer, fired by `wait`."""
        return self.protocol.execute_command(*args)

    def call(self, *args):
        return self.wait(self.send(*args))

    def wait(self, d):
        """Read until ``d`` fires; return its result or raise its error."""
        results: list = []
        d.addBoth(results.append)
        while not results:
            if self._factory.error is not None:
                raise ConnectionError(self._factory.error)
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.protocol.dataReceived(data)
            while self._later:  # the protocol's "later", now and in order
                function, args, kwargs = self._later.popleft()
                function(*args, **kwargs)
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def close(self) -> None:
        self.sock.close()
