"""Run reactorapp under twistd in a child process, for end-to-end tests.

``python -m twisted`` is the newer ``twist`` runner (no ``-n``, JSON logs
when not on a terminal), so the broker is started with this interpreter's
twistd entry point: the same code as the ``twistd`` script, without relying
on which ``twistd`` comes first on PATH.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
LISTENING = re.compile(r"MQTT listening on (?P<host>[^\s:]+):(?P<port>\d+)")
HTTP_LISTENING = re.compile(r"HTTP listening on (?P<host>[^\s:]+):(?P<port>\d+)")
FREE_HTTP = "tcp:0:interface=127.0.0.1"


def with_free_http(args) -> list[str]:
    """``args`` with an HTTP listener on a free port unless they name one:
    the default, 8080, is not for tests."""
    args = list(args)
    if "reactorapp" in args and "--http" not in args:
        at = args.index("reactorapp") + 1
        args[at:at] = ["--http", FREE_HTTP]
    return args


def twistd_env() -> dict[str, str]:
    """The environment for a child twistd: this checkout first on sys.path."""
    env = dict(os.environ)
    paths = [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_twistd(cwd, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``twistd <args>`` to completion in ``cwd`` (where twistd.pid lands)."""
    return subprocess.run(
        [*TWISTD, *with_free_http(args)], cwd=cwd, env=twistd_env(), capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


class BrokerProcess:
    """A twistd child whose log (stdout and stderr merged) is read on a thread."""

    def __init__(self, args: list[str], cwd, free_http: bool = True):
        """``free_http=False`` keeps the arguments as they are (for a test of
        the ``http`` setting in a config file, which ``--http`` overrides)."""
        self.proc = subprocess.Popen(
            [*TWISTD, *(with_free_http(args) if free_http else args)], cwd=cwd,
            env=twistd_env(), text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.host: str | None = None
        self.port: int | None = None
        self.http_port: int | None = None

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern | str, timeout: float = 20.0) -> re.Match:
        """Return the first log line matching ``pattern``, waiting at most ``timeout``."""
        pattern = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "exited" if self._eof else f"did not log it within {timeout} s"
                    raise AssertionError(
                        f"waiting for {pattern.pattern!r}: broker {why}; log:\n"
                        + "".join(self.lines)
                    )
                self._changed.wait(remaining)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait for a clean exit; return the exit status.

        twistd stops the reactor, then re-raises the signal on itself, so a
        clean stop returns ``-signal.SIGTERM``.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self._wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"broker did not stop within {timeout} s; log:\n{self.log}"
            ) from None

    def kill(self) -> int:
        """SIGKILL: the broker gets no chance to clean up (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self._wait(10.0)

    def _wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        self.proc.stdout.close()
        return code


@contextmanager
def running_broker(tmp_path, *extra_args: str, timeout: float = 20.0,
                   twistd_args: tuple[str, ...] = ()):
    """Start ``twistd -n reactorapp`` on a free port; yield it once it listens.

    Runs in ``tmp_path`` with its data in ``tmp_path/data``; extra arguments
    come last, so they can add listeners or override these. HTTP listens on
    a free port too (``.http_port``) unless ``--http`` is given (``--http
    none``: no HTTP). ``twistd_args`` go to twistd itself, before
    ``reactorapp`` (``--uid``, ``--logfile``). Stopped on exit.
    """
    args = [
        "-n", *twistd_args, "reactorapp", "--mqtt", "tcp:0:interface=127.0.0.1",
        "--data", str(Path(tmp_path) / "data"), *extra_args,
    ]
    broker = BrokerProcess(args, cwd=tmp_path)
    try:
        match = broker.wait_for(LISTENING, timeout)
        broker.host, broker.port = match["host"], int(match["port"])
        if not _http_off(extra_args):
            broker.http_port = int(broker.wait_for(HTTP_LISTENING, timeout)["port"])
        yield broker
    finally:
        if broker.proc.poll() is None:
            broker.stop()
        else:
            broker.kill()


def _http_off(args) -> bool:
    return "--http" in args and args[args.index("--http") + 1] == "none"
