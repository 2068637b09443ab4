"""Logging as twistd sets it up, in JSON for log shippers (``--log-format json``).

twistd starts logging after `makeService`, with an observer it builds from
its own flags, unless the application carries an ``ILogObserver``. For
``--log-format json`` the hub hands it twisted.logger's JSON observer
(one event per line, without RFC 7464's record separator, as log shippers
read it) writing where twistd would have written text:
standard output with ``-n`` (or ``--logfile -``), else ``--logfile`` (by
default ``twistd.log``), a twisted `LogFile` that rotates at 1 MB and on
SIGUSR1, as twistd's own.
"""

from __future__ import annotations

import signal
import sys

from twisted.logger import jsonFileLogObserver
from twisted.python.logfile import LogFile

from reactorapp.config import ConfigError

FORMATS = ("text", "json")


def check_format(name: str) -> None:
    if name not in FORMATS:
        raise ConfigError(f"--log-format must be one of {', '.join(FORMATS)}, not {name!r}.")


def json_observer(runner_options):
    """twisted.logger's JSON observer on twistd's log destination."""
    if runner_options.get("syslog"):
        raise ConfigError("--log-format json cannot be combined with twistd's --syslog.")
    name = runner_options.get("logfile") or ""
    if name == "-" or (not name and runner_options.get("nodaemon")):
        return jsonFileLogObserver(sys.stdout, recordSeparator="")
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if hasattr(signal, "SIGUSR1") and not signal.getsignal(signal.SIGUSR1):
        from twisted.internet import reactor

        def rotate(signum, frame):
            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return jsonFileLogObserver(log_file, recordSeparator="")
