"""Reading the small text files that configure access (passwords, ACLs)."""

from __future__ import annotations

import os


def read_text(path: str, what: str, error: type[Exception]) -> str:
    """The UTF-8 text of ``path``, or ``error`` with one sentence naming
    ``what`` the file is ("password file", "ACL file")."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise error(f"cannot read {what} {path!r}: {reason}.") from None


def file_stamp(path: str):
    """What changes when ``path`` is replaced or rewritten (inode, size,
    modification time), or None if it cannot be seen."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def reread(path: str, stamp, read, errors: tuple[type[Exception], ...]):
    """Meant for a thread: None if ``path`` is unchanged since ``stamp``
    (or cannot be seen), else ``(new stamp, read(path), None)``, or
    ``(new stamp, None, error)`` when ``read`` raised one of ``errors``.
    The system calls and the parsing stay off the reactor's thread."""
    new = file_stamp(path)
    if new is None or new == stamp:
        return None
    try:
        return new, read(path), None
    except errors as e:
        return new, None, e


class WatchedFile:
    """A file read again when it changes, by `check` (the service calls it
    on a timer). ``run(function, *args) -> Deferred`` runs the reading: on a
    thread pool in the service, at once in tests. ``apply(value)`` takes a
    new value on the caller's thread; an error keeps the old one, logged."""

    def __init__(self, path: str, read, errors, apply, log, what: str, run) -> None:
        self.path = path
        self._read = read
        self._errors = errors
        self._apply = apply
        self._log = log
        self._what = what
        self._run = run
        self._stamp = file_stamp(path)

    def check(self):
        """A Deferred that fires (never fails) once the file was looked at."""
        d = self._run(reread, self.path, self._stamp, self._read, self._errors)
        return d.addCallbacks(self._cbRead, self._ebRead)

    def _cbRead(self, result) -> None:
        if result is None:
            return
        self._stamp, value, error = result
        if error is not None:
            self._log.error("{error} Keeping the previous {what}.",
                            error=str(error).rstrip(".") + ".", what=self._what)
            return
        self._apply(value)
        self._log.info("{path} reloaded", path=self.path)

    def _ebRead(self, failure) -> None:
        self._log.failure("Could not look at {path}", failure, path=self.path)
