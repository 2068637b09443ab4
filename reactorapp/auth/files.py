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
