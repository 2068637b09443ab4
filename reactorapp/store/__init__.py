"""Where the hub keeps what must outlive the process: `IStore` and its kinds."""

from __future__ import annotations

from reactorapp.store.interfaces import IStore, StoreError

#: The values of ``--store``.
KINDS = ("sqlite", "memory")


def make_store(kind: str, directory: str, reactor) -> IStore:
    """The store ``--store`` names; nothing is opened until `IStore.load`."""
    if kind == "sqlite":
        from reactorapp.store.sqlite import SQLiteStore

        return SQLiteStore(directory, reactor)
    if kind == "memory":
        from reactorapp.store.memory import MemoryStore

        return MemoryStore()
    raise StoreError(f"unknown store {kind!r}; choose one of {', '.join(KINDS)}.")
