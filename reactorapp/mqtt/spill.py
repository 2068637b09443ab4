"""A session's overflow on disk: queue entries appended to a file and read
back in order.

This is about memory, not durability (persistent sessions are made durable
by the store): nothing is synced, and the files are anonymous temporary
files, gone when closed or when the process ends, so nothing is ever left
behind. Entries are written to the page cache 64 KiB at a time (a larger
entry alone), and read back 64 KiB at a time, so that spilling costs the
reactor thread one system call per 64 KiB and never waits for a disk. When
everything written has been read, the file is truncated.
"""

from __future__ import annotations

import marshal
import os
import struct
import tempfile

from reactorapp.hub.message import Message

_LENGTH = struct.Struct(">I")
_CHUNK = 65536


def _encode(entry) -> bytes:
    message, qos, retained, seq = entry
    record = marshal.dumps((
        message.topic, message.payload, message.qos, message.retain, message.properties,
        message.sender, message.timestamp, message.id, qos, retained, seq))
    return _LENGTH.pack(len(record)) + record


def _decode(record: bytes):
    (topic, payload, message_qos, retain, properties, sender, timestamp, message_id,
     qos, retained, seq) = marshal.loads(record)
    message = Message(topic, payload, message_qos, retain, properties, sender,
                      timestamp, message_id)
    return message, qos, retained, seq


class SpillFile:
    """Entries ``(message, qos, retained, seq)`` kept in one file, in order."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._file = None
        self._fd: int | None = None
        self._write_at = 0
        self._read_at = 0
        #: Entries appended but not written yet (less than a chunk).
        self._pending = bytearray()
        #: Entries written and not yet read back.
        self.count = 0

    @property
    def size(self) -> int:
        """Bytes spilled and not yet read back."""
        return self._write_at + len(self._pending) - self._read_at

    def append(self, entry) -> int:
        """Keep one entry; return its size. Raises OSError (disk full) or
        ValueError (properties that cannot be written), and then the entry
        is not kept."""
        data = _encode(entry)
        pending = self._pending
        if len(pending) + len(data) >= _CHUNK:
            self._write(bytes(pending) + data if pending else data)
            pending.clear()
        else:
            pending += data
        self.count += 1
        return len(data)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._file = tempfile.TemporaryFile(dir=self.directory, prefix="spill-")
            self._fd = self._file.fileno()
        written = os.pwrite(self._fd, data, self._write_at)
        if written != len(data):
            raise OSError(f"short write to a spill file in {self.directory}")
        self._write_at += written

    def _flush(self) -> None:
        if self._pending:
            self._write(bytes(self._pending))
            self._pending.clear()

    def read(self, max_count: int, max_bytes: int) -> list:
        """Up to ``max_count`` entries (at least one if any) totalling about
        ``max_bytes``, oldest first."""
        self._flush()
        entries = []
        taken = 0
        fd = self._fd
        while self.count and len(entries) < max_count and (not entries or taken < max_bytes):
            chunk = os.pread(fd, _CHUNK, self._read_at)
            pos = 0
            while pos + 4 <= len(chunk) and self.count and len(entries) < max_count:
                (length,) = _LENGTH.unpack_from(chunk, pos)
                end = pos + 4 + length
                if end > len(chunk):
                    if pos == 0:  # one entry larger than a chunk
                        chunk = os.pread(fd, 4 + length, self._read_at)
                        end = 4 + length
                    else:
                        break
                entries.append(_decode(chunk[pos + 4:end]))
                taken += end - pos
                pos = end
                self.count -= 1
                if taken >= max_bytes:
                    break
            if pos == 0:
                raise OSError(f"a spill file in {self.directory} is shorter than what was written")
            self._read_at += pos
        if not self.count:
            self._rewind()
        return entries

    def _rewind(self) -> None:
        """Everything was read: give the disk space back."""
        self._write_at = self._read_at = 0
        if self._fd is not None:
            os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Forget every entry and remove the file."""
        self.count = 0
        self._write_at = self._read_at = 0
        self._pending.clear()
        if self._file is not None:
            self._file.close()
            self._file = self._fd = None
