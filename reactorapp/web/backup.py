"""POST /api/v1/backup: a consistent copy of the running hub's database.

The store holds an exclusive lock on its file, so ``sqlite3 ... .backup``
cannot read it while the hub runs. The store copies itself (SQLite's online
backup, in its writer thread) into a scratch file in the data directory,
which is sent as the response body and then removed.
"""

from __future__ import annotations

import os
import tempfile
import time

from twisted.logger import Logger
from twisted.protocols.basic import FileSender

from reactorapp.web.errors import STREAMING, ApiError, JSONResource, error_body, internal_error_body

log = Logger()

MEDIA_TYPE = b"application/vnd.sqlite3"


class Backup(JSONResource):
    """The database as ``application/vnd.sqlite3``; 409 without one."""

    def __init__(self, store, directory: str, clock) -> None:
        super().__init__()
        self.store = store
        self.directory = directory
        self.clock = clock

    def json_POST(self, request):
        backup = getattr(self.store, "backup", None)
        if backup is None:
            raise ApiError(409, "no database", "This hub keeps its state in memory"
                           " (--store memory): there is nothing to back up.")
        fd, path = tempfile.mkstemp(prefix=".backup-", suffix=".sqlite3", dir=self.directory)
        os.close(fd)
        gone = []
        request.notifyFinish().addBoth(gone.append)
        backup(path).addCallback(self._send, request, gone).addErrback(
            self._failed, request, gone).addBoth(self._remove, path)
        return STREAMING

    def _send(self, path, request, gone):
        if gone:
            return None
        size = os.path.getsize(path)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock.seconds()))
        request.setHeader(b"Content-Type", MEDIA_TYPE)
        request.setHeader(b"Content-Length", b"%d" % size)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Disposition",
                          f'attachment; filename="reactorapp-{stamp}.sqlite3"'.encode("ascii"))
        log.info("Sending a backup of {size} bytes to {peer}", size=size,
                 peer=request.getClientAddress())
        f = open(path, "rb")
        d = FileSender().beginFileTransfer(f, request)
        d.addBoth(self._sent, f, request, gone)
        return d

    @staticmethod
    def _sent(result, f, request, gone):
        f.close()
        if not gone:
            request.finish()
        return None

    @staticmethod
    def _failed(failure, request, gone):
        if failure.check(ApiError):
            body = error_body(request, failure.value)
        else:
            log.failure("Could not make a backup", failure)
            body = internal_error_body(request)
        if not gone:
            request.write(body)
            request.finish()

    @staticmethod
    def _remove(result, path):
        try:
            os.remove(path)
        except OSError as e:
            log.warn("Could not remove the scratch backup {path}: {error}", path=path, error=e)
        return result
