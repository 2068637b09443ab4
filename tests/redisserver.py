"""A real redis-server for the tests: a free port, a temporary directory,
never the system's service."""

from __future__ import annotations

import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            # With --requirepass a server that is up answers NOAUTH.
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """``redis-server`` in a child process; ``url`` is what ``--cluster`` takes.

    Append-only with ``appendfsync always`` by default: what the docs tell
    users to run when a PUBACK must survive Redis being killed too.
    """

    def __init__(self, port: int | None = None, directory: str | None = None,
                 *extra: str) -> None:
        self.port = port or free_port()
        self.directory = directory or tempfile.mkdtemp(prefix="redis-")
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.directory, "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no", "--loglevel", "notice",
             *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        # redis-server logs "Ready to accept connections" once it listens.
        deadline = time.monotonic() + timeout
        log = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"Ready to accept connections" not in log:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.stop(kill=True)
                    raise RuntimeError(f"redis-server did not start: {log[-500:]!r}")
                chunk = self.proc.stdout.read1(65536)
                if not chunk:
                    raise RuntimeError(f"redis-server exited: {log[-500:]!r}")
                log += chunk
        # Keep draining its log so a full pipe never blocks it.
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        if "--tls-port" not in self.extra and not _answers_ping(self.port):
            raise RuntimeError("redis-server is up but does not answer PING")
        return self

    @staticmethod
    def _drain(stream) -> None:
        while stream.read1(65536):
            pass

    def stop(self, kill: bool = False) -> None:
        """Stop it (SIGKILL with ``kill``); the directory stays for a restart."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> "RedisServer":
        """Start again on the same port and directory (the append-only file)."""
        self.stop()
        return self.start()


@contextmanager
def redis_server(*extra: str):
    server = RedisServer(None, None, *extra).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
