"""twistd glue: the ``reactorapp`` command line and `makeService`."""

from __future__ import annotations

import gc
import os
import sys

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from reactorapp.config import SETTINGS, ConfigError, load_config, merge
from reactorapp.errors import SetupError
from reactorapp.logs import check_format, json_observer
from reactorapp.webhooks.rules import rules_from_config


def _described(setting) -> str:
    default = setting.default
    if setting.repeatable:
        default = ", ".join(default) or "none"
    elif isinstance(default, float):
        default = f"{default:g}"
    return f"{setting.help} [default: {default}]"


class Options(usage.Options):
    """Every setting of `reactorapp.config.Config` as a flag, plus ``--config``."""

    synopsis = "[options]"
    longdesc = (
        "Run the reactorapp message hub. Each flag can also be set in the TOML "
        "file given with --config, under the flag's name without the dashes; "
        "flags override the file."
    )
    optParameters = [
        ["config", "c", None, "TOML file with settings (keys are the flag names)."],
    ] + [
        [s.key, None, None, _described(s)] for s in SETTINGS
        if not s.repeatable and s.type is not bool
    ]
    # A true/false setting is a flag: given means true.
    optFlags = [[s.key, None, s.help] for s in SETTINGS if s.type is bool]

    def __init__(self):
        super().__init__()
        for s in SETTINGS:
            if s.repeatable:
                self[s.key] = []
        self.flags: dict[str, object] = {}

    def opt_version(self):
        """Print reactorapp's version (and Twisted's) and exit."""
        from twisted import copyright

        from reactorapp import __version__

        print(f"reactorapp {__version__} (Twisted {copyright.version})")
        sys.exit(0)

    def getUsage(self, width=None):
        """The flags, then the protocol plugins installed for ``--listen``."""
        return super().getUsage(width) + _pluginsUsage()

    def postOptions(self):
        """Check the flags given and keep them, typed, in `flags`."""
        for s in SETTINGS:
            value = self[s.key]
            if s.repeatable:
                if value:
                    self.flags[s.name] = tuple(value)
            elif s.type is bool:
                if value:
                    self.flags[s.name] = True
            elif value is not None:
                try:
                    self.flags[s.name] = s.from_text(value, f"--{s.key}")
                except ConfigError as e:
                    raise usage.UsageError(str(e)) from None


def _pluginsUsage() -> str:
    from reactorapp.plugins import authenticatorPlugins, protocolPlugins

    text = ""
    for title, plugins in [("Protocols for --listen NAME:ENDPOINT", protocolPlugins()),
                           ("Authenticators for --authenticator NAME", authenticatorPlugins())]:
        if plugins:
            width = max(len(name) for name in plugins) + 2
            text += f"\n{title}:\n" + "".join(
                f"  {name:<{width}}{plugin.description}\n" for name, plugin in plugins.items())
    return text


def _collector(setting):
    def opt(self, value):
        self[setting.key].append(value)

    opt.__doc__ = _described(setting)
    return opt


# usage.Options collects a repeatable flag only through an opt_<name> method.
for _setting in SETTINGS:
    if _setting.repeatable:
        setattr(Options, "opt_" + _setting.name, _collector(_setting))


#: The arrays of tables of the config file and the feature that reads each.
TABLES = {"webhooks": rules_from_config}


def makeService(options: Options):
    """Load the config file, merge the flags, and build the hub's services.

    Errors found here end twistd before it logs, forks or writes its pid
    file: SystemExit with a message prints that one sentence on stderr.
    """
    from twisted.internet import reactor

    try:
        fileValues = load_config(options["config"], TABLES) if options["config"] else {}
        config = merge(fileValues, options.flags)
        check_format(config.log_format)
        observer = json_observer(options.parent or {}) if config.log_format == "json" else None
        from reactorapp.service import makeHubService  # only a run needs the hub

        hubService = makeHubService(config, reactor, _serviceOwner(options.parent))
    except SetupError as e:
        raise SystemExit(f"reactorapp: {e}") from None
    warn_if_few_files(config.max_connections, reactor)
    return _ExitOnStartupError(hubService, options.parent, observer)


#: Files a hub keeps open besides its connections: listeners, the database
#: and its log, spill files, log files, webhook connections.
FILES_BESIDES_CONNECTIONS = 100


def warn_if_few_files(max_connections: int, reactor, limits=None) -> None:
    """Warn when the open-file limit is below what --max-connections needs:
    past it, accepting a connection fails with "Too many open files"."""
    if limits is None:
        try:
            import resource
        except ImportError:  # not on this platform
            return
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, _hard = limits
    if max_connections == 0:
        return
    needed = max_connections + FILES_BESIDES_CONNECTIONS
    if soft != -1 and soft < needed:
        reactor.callWhenRunning(
            _log.warn,
            "WARNING: the open-file limit (ulimit -n) is {soft}, but --max-connections"
            " {connections} needs about {needed}: raise it (LimitNOFILE= in a systemd"
            " unit, ulimit -n in a shell) or lower --max-connections.",
            soft=soft, connections=max_connections, needed=needed)


def _serviceOwner(runnerOptions) -> tuple[int, int] | None:
    """The (uid, gid) twistd switches to after binding (``--uid``, ``--gid``),
    when it runs as root and is told to; None otherwise."""
    if not runnerOptions or os.geteuid() != 0:
        return None
    uid, gid = runnerOptions.get("uid"), runnerOptions.get("gid")
    if uid is None:
        return None
    if gid is None:
        import pwd

        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


class _ExitOnStartupError(MultiService):
    """Turn a listener that cannot bind into one sentence and a non-zero exit.

    twistd binds (privilegedStartService) after it has sent stderr into the
    log and written its pid file, and shows an exception from there as a
    traceback. So in the foreground we log the sentence, write it to the real
    stderr too, remove the pid file and exit with status 1. A daemon re-raises:
    twistd passes the error through its status pipe to the waiting parent.
    """

    log = Logger()

    def __init__(self, child, runnerOptions, logObserver=None):
        super().__init__()
        child.setServiceParent(self)
        self._runnerOptions = runnerOptions or {}
        self._logObserver = logObserver

    def setServiceParent(self, parent):
        """twistd's application: it logs through our observer if we have one."""
        if self._logObserver is not None:
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self._logObserver)
        return super().setServiceParent(parent)

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except SetupError as e:
            self._exit(e)

    def startService(self):
        try:
            super().startService()
        except SetupError as e:
            self._exit(e)
        tune_garbage_collector()

    def _exit(self, error):
        sentence = f"reactorapp: {error}"
        if not self._runnerOptions.get("nodaemon", True):
            raise error
        if sys.stderr is sys.__stderr__:
            raise SystemExit(sentence)  # logging has not begun (the twist runner)
        self.log.critical("{sentence}", sentence=sentence)
        sys.__stderr__.write(sentence + "\n")
        sys.__stderr__.flush()
        _removeOwnPidfile(self._runnerOptions.get("pidfile"))
        raise SystemExit(1)


#: Allocations between young collections (CPython's default is 700).
YOUNG_COLLECTION_THRESHOLD = 20_000


_log = Logger()


def tune_garbage_collector() -> None:
    """Fit the cyclic garbage collector to a broker, once it has started.

    Every queued message is a handful of tracked objects, and with the
    default thresholds a collection ran every hundred or so messages, and a
    full one, walking everything queued and every module, every few
    thousand: a fifth of a publish's CPU, and stalls of 40 ms. What start-up
    made (modules, restored sessions) is frozen out of the collections, and
    young collections run 30 times less often. Memory is still freed by
    reference counting as before; only cycles wait a little longer.
    """
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 20, 20)
    _log.info("Garbage collection: {frozen} start-up objects frozen, young collections"
              " every {young} allocations", frozen=gc.get_freeze_count(),
              young=YOUNG_COLLECTION_THRESHOLD)


def _removeOwnPidfile(path: str | None) -> None:
    """Remove twistd's pid file if it names this process (twistd skips this on exit)."""
    if not path:
        return
    try:
        with open(path) as f:
            ours = f.read().strip() == str(os.getpid())
        if ours:
            os.remove(path)
    except OSError:
        pass
