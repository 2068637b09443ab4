"""The store's place in the service tree: opened first, closed last."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.logger import Logger


class StoreService(Service):
    """Open the store and hand what it holds to ``restore`` before the other
    services start; flush and close it when the hub stops.

    Opening happens in `startService`, after twistd has daemonized and shed
    privileges, so the database belongs to the process (and user) that
    writes it. A parent `MultiService` stops its children in reverse order,
    so as the first child the store is closed after the listeners stopped
    accepting connections.
    """

    log = Logger()

    def __init__(self, store, restore) -> None:
        self.store = store
        self._restore = restore

    def startService(self) -> None:
        state = self.store.load()  # StoreError: one sentence, exit status 1
        self._restore(state)
        super().startService()
        self.log.info(
            "Store {store!r}: {sessions} persistent sessions, {retained} retained messages",
            store=self.store, sessions=len(state.sessions), retained=len(state.retained))

    def stopService(self):
        super().stopService()
        return self.store.close()
