"""Putting a backup of the SQLite store in place, with the hub stopped.

A backup (``POST /api/v1/backup``) is a plain SQLite file. `restore` checks
that it is a reactorapp database this version can open, that no hub is
using the data directory, keeps the database it replaces next to it, and
moves the backup in whole (a copy, then a rename), so a crash half-way never
leaves half a database.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time

from reactorapp.store.interfaces import StoreError
from reactorapp.store.schema import FILENAME, VERSION, open_database


def check_backup(path: str) -> int:
    """The schema version of the backup at ``path``; `StoreError` if it is
    not a sound reactorapp database this version can open."""
    if not os.path.isfile(path):
        raise StoreError(f"{path!r} is not a file.")
    try:
        connection = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path!r}: {e}.") from None
    try:
        (ok,) = connection.execute("PRAGMA integrity_check").fetchone()
        if ok != "ok":
            raise StoreError(f"{path!r} is damaged ({ok}).")
        (version,) = connection.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.Error as e:
        raise StoreError(f"{path!r} is not a reactorapp backup ({e}).") from None
    finally:
        connection.close()
    if version > VERSION:
        raise StoreError(f"{path!r} was written by a newer reactorapp (schema version {version};"
                         f" this one knows up to {VERSION}).")
    return version


def restore(path: str, directory: str, clock=time.time) -> str | None:
    """Make the backup at ``path`` the database of ``directory`` (the hub
    must be stopped). Return where the database it replaces was kept, if any."""
    check_backup(path)
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, FILENAME)
    kept = None
    if os.path.lexists(target):
        # Opening it fails if a hub holds it; closing folds its log back in.
        open_database(directory).close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
        kept = f"{target}.replaced-{stamp}"
        os.replace(target, kept)
    for leftover in (target + "-wal", target + "-journal"):
        if os.path.lexists(leftover):
            os.remove(leftover)
    scratch = target + ".restoring"
    shutil.copyfile(path, scratch)
    with open(scratch, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(scratch, target)
    return kept
