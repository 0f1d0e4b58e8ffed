"""A durable store-and-forward spool: wire bodies appended to segment files, read back in order.

Synchronous and meant for one dedicated worker thread (a lock still guards every method)::

    spool = Spool(SpoolConfig(directory="/var/lib/sentinel/spool"))
    report = spool.open()                   # recovers after a crash, resumes from the cursor
    spool.append(body, rows=512, seq=41)    # may drop the oldest records, or raise SpoolFullError
    record = spool.peek()                   # oldest unacknowledged record, or None
    if record is not None and send(record.body):
        spool.ack(record)
    spool.close()

On disk, in ``directory``:

``00000000000000000001.seg``, ``...02.seg``, ...
    Segment files; lexical order is write order. Records are appended to the newest segment; a new
    one is begun when the next record would take the current past ``segment_bytes``. A segment is
    deleted once every record in it is acknowledged or dropped.
``cursor``
    Where reading resumes: the oldest record not yet acknowledged. Replaced atomically (written to
    ``cursor.tmp``, then ``os.replace``) on every ``ack()`` and after drops.

A record is a 24-byte little-endian header followed by the body::

    offset  size  field
         0     4  magic     b"LSP1"
         4     4  body_len  u32
         8     4  rows      u32, rows in the batch (for accounting without decoding the body)
        12     8  seq       u64, the batch sequence number
        20     4  crc       u32, zlib.crc32 over bytes 0..19 and then the body
        24     n  body      the wire body (``sentinel.wire``), opaque here

The cursor file is 32 bytes: magic b"LSC1", segment u64, offset u64, last_seq i64 (-1: none), and a
crc32 of the first 28 bytes.

Recovery on ``open()`` scans from the cursor. A record whose magic, length or crc is wrong is skipped
by searching forward for the next header whose crc checks out; invalid bytes at the end of the
newest segment (a write torn by a crash) are truncated. A corrupt body is never returned. Delivery
is at-least-once: a cursor that was lost, or not yet fsynced, makes records be delivered again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sentinel.config import ConfigError, setting

__all__ = [
    "HEADER_SIZE",
    "SPOOL_FSYNC_POLICIES",
    "SPOOL_FULL_POLICIES",
    "Dropped",
    "RecoveryReport",
    "Spool",
    "SpoolConfig",
    "SpoolFullError",
    "SpoolLockedError",
    "SpoolPosition",
    "SpoolRecord",
]

log = logging.getLogger(__name__)

DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SPOOL_SEGMENT_BYTES = 8 * 1024 * 1024
DEFAULT_FULL_POLICY = "drop_oldest"
#: What an unset ``fsync`` means to a spool on its own; the sidecar chooses by its mode instead
#: (:attr:`sidecar.config.SidecarConfig.effective_fsync`).
DEFAULT_FSYNC = "always"
DEFAULT_FSYNC_INTERVAL_S = 1.0
SPOOL_FULL_POLICIES = ("drop_oldest", "refuse")
SPOOL_FSYNC_POLICIES = ("always", "interval", "never")

_MAGIC = b"LSP1"
_PREFIX = struct.Struct("<4sIIQ")
_HEADER = struct.Struct("<4sIIQI")
HEADER_SIZE = _HEADER.size
_CURSOR_MAGIC = b"LSC1"
_CURSOR = struct.Struct("<4sQQqI")
_CURSOR_NAME = "cursor"
_CURSOR_TMP = "cursor.tmp"
_LOCK_FILE = "lock"
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")
_SCAN_CHUNK = 64 * 1024
_U32 = 2**32
_U64 = 2**64


class SpoolLockedError(RuntimeError):
    """Another process holds the spool directory."""


class SpoolFullError(Exception):
    """The spool is at ``max_bytes`` and ``full_policy`` is ``refuse``; nothing was written.

    Retryable: it clears as records are acknowledged.
    """


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """The sidecar's ``spool:`` section, e.g. ``SpoolConfig(directory="/spool", max_bytes=64 << 20)``.

    An empty ``directory`` is no spool (the sidecar then runs without one; :class:`Spool` refuses it),
    and an empty ``fsync`` is chosen by whoever runs the spool: the sidecar by its mode, a
    :class:`Spool` on its own takes ``always``.
    """

    directory: str = setting("", "directory of the durable spool (required in store-and-forward mode; empty: "
                             "no spool)")
    max_bytes: int = setting(DEFAULT_SPOOL_MAX_BYTES, "size bound of the spool", kind="size")
    segment_bytes: int = setting(DEFAULT_SPOOL_SEGMENT_BYTES, "size at which a spool segment file is closed and "
                                 "a new one begun", kind="size")
    full_policy: str = setting(DEFAULT_FULL_POLICY, "when the spool is full: drop_oldest (counted) or refuse "
                               "(exports get UNAVAILABLE)")
    fsync: str = setting("", "always (fsync every batch), interval, or never [default: always in "
                         "store-and-forward mode, interval otherwise]")
    fsync_interval_s: float = setting(DEFAULT_FSYNC_INTERVAL_S, "fsync period for spool.fsync=interval",
                                      kind="duration")

    def validate(self) -> None:
        # Messages name the sidecar's dotted keys, which is what a user can change.
        if self.max_bytes <= HEADER_SIZE:
            raise ConfigError(f"spool.max_bytes: must be greater than {HEADER_SIZE}")
        if self.segment_bytes <= 0:
            raise ConfigError("spool.segment_bytes: must be greater than 0")
        if self.segment_bytes > self.max_bytes:
            raise ConfigError("spool.segment_bytes: must not be greater than spool.max_bytes")
        if self.full_policy not in SPOOL_FULL_POLICIES:
            raise ConfigError(f"spool.full_policy: {self.full_policy!r} is not one of {', '.join(SPOOL_FULL_POLICIES)}")
        if self.fsync and self.fsync not in SPOOL_FSYNC_POLICIES:
            raise ConfigError(f"spool.fsync: {self.fsync!r} is not one of {', '.join(SPOOL_FSYNC_POLICIES)}")
        if not self.fsync_interval_s > 0:
            raise ConfigError("spool.fsync_interval_s: must be greater than 0")


class SpoolPosition(NamedTuple):
    """Where a record starts; ordered like the spool."""

    segment: int
    offset: int


class SpoolRecord(NamedTuple):
    """One stored batch, as returned by :meth:`Spool.peek`."""

    seq: int
    rows: int
    body: bytes
    position: SpoolPosition


class Dropped(NamedTuple):
    """A record dropped to make room under ``drop_oldest``."""

    seq: int
    rows: int


class RecoveryReport(NamedTuple):
    """What :meth:`Spool.open` found."""

    pending_records: int  # valid records found after the cursor
    records_skipped: int  # corrupt records (or runs of corrupt bytes) passed over
    bytes_truncated: int  # invalid bytes cut from the end of the newest segment (a torn write)
    pending_rows: int
    last_seq: int | None
    cursor_reset: bool  # the cursor file was missing or corrupt: reading restarted at the oldest segment


class _Found(NamedTuple):
    offset: int
    rows: int
    seq: int
    body: bytes

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + len(self.body)


def _encode(body: bytes, rows: int, seq: int) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(_PREFIX.pack(_MAGIC, len(body), rows, seq)))
    return _HEADER.pack(_MAGIC, len(body), rows, seq, crc) + body


def _pread(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            break
        parts.append(part)
        size -= len(part)
        offset += len(part)
    return b"".join(parts)


def _read_at(fd: int, offset: int, end: int) -> _Found | None:
    """The valid record starting exactly at ``offset``, or None."""
    if end - offset < HEADER_SIZE:
        return None
    head = _pread(fd, HEADER_SIZE, offset)
    if len(head) < HEADER_SIZE:
        return None
    magic, length, rows, seq, crc = _HEADER.unpack(head)
    if magic != _MAGIC or length > end - offset - HEADER_SIZE:
        return None
    body = _pread(fd, length, offset + HEADER_SIZE)
    if len(body) != length or zlib.crc32(body, zlib.crc32(head[: _PREFIX.size])) != crc:
        return None
    return _Found(offset, rows, seq, body)


def _find_magic(fd: int, start: int, end: int) -> int:
    pos = start
    while end - pos >= len(_MAGIC):
        chunk = _pread(fd, min(_SCAN_CHUNK, end - pos), pos)
        i = chunk.find(_MAGIC)
        if i >= 0:
            return pos + i
        if len(chunk) < len(_MAGIC):
            break
        pos += len(chunk) - len(_MAGIC) + 1  # a magic may straddle two chunks
    return -1


def _next_valid(fd: int, offset: int, end: int) -> _Found | None:
    """The first valid record at or after ``offset``, resyncing past corrupt bytes; None if there is none."""
    pos = offset
    while end - pos >= HEADER_SIZE:
        found = _read_at(fd, pos, end)
        if found is not None:
            return found
        pos = _find_magic(fd, pos + 1, end)
        if pos < 0:
            return None
    return None


def _segment_name(index: int) -> str:
    return f"{index:020d}.seg"


class Spool:
    """A durable FIFO of wire bodies in segment files; see the module docstring for the layout."""

    def __init__(self, config: SpoolConfig) -> None:
        config.validate()
        if not os.fspath(config.directory):
            raise ConfigError("spool.directory: required")
        if not config.fsync:
            config = dataclasses.replace(config, fsync=DEFAULT_FSYNC)
        self.config = config
        self._dir = Path(config.directory)
        self._lock = threading.Lock()
        self._open = False
        self._reset_state()

    def _reset_state(self) -> None:
        self._segments: list[int] = []  # existing segment indices, ascending; [0] holds the cursor
        self._sizes: dict[int, int] = {}
        self._bytes_used = 0
        self._cursor = SpoolPosition(1, 0)
        self._pending_records = 0
        self._pending_rows = 0
        self._last_seq: int | None = None
        self._peeked: _Found | None = None
        self._read_seg: int | None = None
        self._read_fd = -1
        self._write_seg: int | None = None
        self._write_fd = -1
        self._last_fsync = time.monotonic()
        self._data_unsynced = False
        self._cursor_unsynced = False
        self._dir_unsynced = False

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Create the directory if needed, recover what a crash left, and resume from the cursor."""
        with self._lock:
            if self._open:
                raise RuntimeError("spool is already open")
            self._reset_state()
            self._dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            (self._dir / _CURSOR_TMP).unlink(missing_ok=True)
            segments = self._list_segments()
            cursor, cursor_last_seq, cursor_ok = self._load_cursor()
            cursor_reset = False
            if cursor is None:
                cursor_reset = not cursor_ok or bool(segments)
                if cursor_reset:
                    log.warning("spool %s: cursor file missing or corrupt; reading from the oldest segment",
                                self._dir)
                cursor = SpoolPosition(segments[0] if segments else 1, 0)
            for index in [s for s in segments if s < cursor.segment]:
                self._unlink(index)  # fully acknowledged; a crash came between the cursor write and the delete
            segments = [s for s in segments if s >= cursor.segment]
            if segments and segments[0] != cursor.segment:
                cursor = SpoolPosition(segments[0], 0)
            self._cursor = cursor
            self._last_seq = cursor_last_seq
            found = skipped = truncated = 0
            for index in segments:
                stats = self._scan_segment(index, cursor.offset if index == cursor.segment else 0,
                                           is_last=index == segments[-1])
                if stats is None:
                    continue
                found += stats[0]
                skipped += stats[1]
                truncated += stats[2]
            if not self._segments:
                self._cursor = SpoolPosition(max(cursor.segment, 1), 0)
            elif self._cursor.segment != self._segments[0]:
                self._cursor = SpoolPosition(self._segments[0], 0)
            self._pending_records = found
            self._open = True
            self._persist_cursor()  # so that from now on a missing cursor file means it was lost
            report = RecoveryReport(found, skipped, truncated, self._pending_rows, self._last_seq, cursor_reset)
            if skipped or truncated:
                log.warning("spool %s: skipped %d corrupt records, truncated %d bytes of torn tail",
                            self._dir, skipped, truncated)
            return report

    def close(self) -> None:
        """Fsync and close the files; idempotent."""
        with self._lock:
            if not self._open:
                return
            try:
                self._fsync_all()
            finally:
                self._close_reader()
                self._close_writer(sync=False)
                self._release_lock()
                self._open = False

    def _take_lock(self) -> None:
        # Two processes appending to one spool would interleave records and fight over the
        # cursor; an advisory lock (released by the kernel if the holder dies) refuses the second.
        fd = os.open(self._dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLockedError(f"spool {self._dir} is in use by another process") from None
        self._lock_fd: int | None = fd

    def _release_lock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def sync(self) -> None:
        """Fsync the data, the cursor and the directory now, whatever the policy."""
        with self._lock:
            self._check_open()
            self._fsync_all()

    # -- data ----------------------------------------------------------------------------------

    def append(self, body: bytes, *, rows: int, seq: int) -> list[Dropped]:
        """Store one body; return what ``drop_oldest`` dropped to make room (oldest first)."""
        with self._lock:
            self._check_open()
            if not 0 <= rows < _U32:
                raise ValueError(f"rows must be in [0, 2**32), got {rows}")
            if not 0 <= seq < _U64:
                raise ValueError(f"seq must be in [0, 2**64), got {seq}")
            size = HEADER_SIZE + len(body)
            if len(body) >= _U32 or size > self.config.max_bytes:
                raise ValueError(f"record of {size} bytes is larger than spool.max_bytes ({self.config.max_bytes})")
            dropped: list[Dropped] = []
            if self._bytes_used + size > self.config.max_bytes:
                if self.config.full_policy == "refuse":
                    raise SpoolFullError(f"spool is full ({self._bytes_used} of {self.config.max_bytes} bytes)")
                while self._bytes_used + size > self.config.max_bytes:
                    dropped.extend(self._drop_oldest_segment())
                self._persist_cursor()
            fd, index = self._writer(size)
            data = _encode(body, rows, seq)
            before = self._sizes[index]
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                os.ftruncate(fd, before)  # leave no torn record in front of later appends
                raise
            self._sizes[index] = before + size
            self._bytes_used += size
            self._pending_records += 1
            self._pending_rows += rows
            self._last_seq = seq if self._last_seq is None else max(self._last_seq, seq)
            self._data_unsynced = True
            if self._fsync_due():
                self._fsync_all()
            return dropped

    def peek(self) -> SpoolRecord | None:
        """The oldest unacknowledged record (read from disk), or None when nothing is pending."""
        with self._lock:
            self._check_open()
            while self._peeked is None and self._segments:
                index = self._segments[0]
                found = _next_valid(self._reader(index), self._cursor.offset, self._sizes[index])
                if found is not None:
                    self._peeked = found
                elif index == self._segments[-1]:
                    break
                else:
                    self._unlink(index)  # only corrupt bytes were left in it
            if self._peeked is None:
                self._pending_records = self._pending_rows = 0  # keep the counts honest if files changed under us
                return None
            p = self._peeked
            return SpoolRecord(p.seq, p.rows, p.body, SpoolPosition(self._segments[0], p.offset))

    def ack(self, record: SpoolRecord) -> bool:
        """Acknowledge the record :meth:`peek` returned and advance the cursor past it.

        Returns False, doing nothing, when the record was dropped meanwhile to make room.
        """
        with self._lock:
            self._check_open()
            p = self._peeked
            if p is None or record.position != SpoolPosition(self._segments[0], p.offset) or record.seq != p.seq:
                if record.position < self._cursor:
                    return False
                raise ValueError("ack() takes the record peek() returned last")
            self._peeked = None
            index = self._segments[0]
            self._cursor = SpoolPosition(index, p.end)
            self._pending_records = max(0, self._pending_records - 1)
            self._pending_rows = max(0, self._pending_rows - p.rows)
            if p.end >= self._sizes[index]:
                self._unlink(index)
            self._persist_cursor()
            return True

    # -- state ---------------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        with self._lock:
            return self._pending_records

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return self._pending_rows

    @property
    def bytes_used(self) -> int:
        """Sum of the segment files' sizes."""
        with self._lock:
            return self._bytes_used

    @property
    def last_seq(self) -> int | None:
        """The largest seq ever appended (kept across restarts in the cursor), None if never."""
        with self._lock:
            return self._last_seq

    # -- internals (called with the lock held) -------------------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("spool is not open")

    def _list_segments(self) -> list[int]:
        indices = []
        for entry in os.scandir(self._dir):
            m = _SEGMENT_RE.match(entry.name)
            if m and entry.is_file(follow_symlinks=False):
                indices.append(int(m.group(1)))
        return sorted(indices)

    def _load_cursor(self) -> tuple[SpoolPosition | None, int | None, bool]:
        """(cursor, last_seq, ok); ok is False when the file exists but is corrupt."""
        try:
            data = (self._dir / _CURSOR_NAME).read_bytes()
        except FileNotFoundError:
            return None, None, True
        except OSError as exc:
            log.warning("spool %s: cannot read the cursor: %s", self._dir, exc)
            return None, None, False
        if len(data) != _CURSOR.size:
            return None, None, False
        magic, segment, offset, last_seq, crc = _CURSOR.unpack(data)
        if magic != _CURSOR_MAGIC or zlib.crc32(data[:-4]) != crc:
            return None, None, False
        return SpoolPosition(segment, offset), (None if last_seq < 0 else last_seq), True

    def _scan_segment(self, index: int, offset: int, *, is_last: bool) -> tuple[int, int, int] | None:
        """Count the valid records from ``offset``; truncate a torn tail of the newest segment."""
        path = self._dir / _segment_name(index)
        try:
            fd = os.open(path, os.O_RDWR if is_last else os.O_RDONLY)
        except OSError as exc:
            log.warning("spool %s: ignoring unreadable segment: %s", path, exc)
            return None
        found = skipped = truncated = 0
        try:
            size = os.fstat(fd).st_size
            pos = min(offset, size)
            if pos != offset:
                log.warning("spool %s: cursor offset %d is past the end (%d)", path, offset, size)
                self._cursor = SpoolPosition(index, pos)
            while True:
                record = _next_valid(fd, pos, size)
                if record is None:
                    break
                if record.offset != pos:
                    skipped += 1
                found += 1
                self._pending_rows += record.rows
                self._last_seq = record.seq if self._last_seq is None else max(self._last_seq, record.seq)
                pos = record.end
            if pos < size:
                if is_last:
                    os.ftruncate(fd, pos)
                    os.fsync(fd)
                    truncated = size - pos
                    size = pos
                else:
                    skipped += 1
        finally:
            os.close(fd)
        self._segments.append(index)
        self._sizes[index] = size
        self._bytes_used += size
        return found, skipped, truncated

    def _reader(self, index: int) -> int:
        if self._read_seg != index:
            self._close_reader()
            self._read_fd = os.open(self._dir / _segment_name(index), os.O_RDONLY)
            self._read_seg = index
        return self._read_fd

    def _writer(self, size: int) -> tuple[int, int]:
        """The fd and index of the segment the next ``size``-byte record goes to."""
        if self._segments:
            index = self._segments[-1]
            current = self._sizes[index]
            if current > 0 and current + size > self.config.segment_bytes:
                index += 1
        else:
            index = self._cursor.segment
        if self._write_seg != index:
            self._close_writer(sync=self.config.fsync != "never")
            if index not in self._sizes:
                self._segments.append(index)
                self._sizes[index] = 0
                self._dir_unsynced = True
            self._write_fd = os.open(self._dir / _segment_name(index), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._write_seg = index
        return self._write_fd, index

    def _drop_oldest_segment(self) -> list[Dropped]:
        index = self._segments[0]
        fd, end = self._reader(index), self._sizes[index]
        dropped = []
        pos = self._cursor.offset
        while (record := _next_valid(fd, pos, end)) is not None:
            dropped.append(Dropped(record.seq, record.rows))
            pos = record.end
        self._pending_records = max(0, self._pending_records - len(dropped))
        self._pending_rows = max(0, self._pending_rows - sum(d.rows for d in dropped))
        self._unlink(index)
        return dropped

    def _unlink(self, index: int) -> None:
        """Delete a consumed segment; if it was the oldest tracked one, the cursor moves to the next."""
        if index == self._read_seg:
            self._close_reader()
        if index == self._write_seg:
            self._close_writer(sync=False)
        (self._dir / _segment_name(index)).unlink(missing_ok=True)
        if index in self._sizes:
            self._bytes_used -= self._sizes.pop(index)
            self._segments.remove(index)
            self._peeked = None
            self._cursor = SpoolPosition(self._segments[0] if self._segments else index + 1, 0)

    def _persist_cursor(self) -> None:
        durable = self._fsync_due()
        last_seq = -1 if self._last_seq is None else self._last_seq
        head = _CURSOR.pack(_CURSOR_MAGIC, self._cursor.segment, self._cursor.offset, last_seq, 0)[:-4]
        data = head + struct.pack("<I", zlib.crc32(head))
        tmp = self._dir / _CURSOR_TMP
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._dir / _CURSOR_NAME)
        self._dir_unsynced = True
        if durable:
            self._cursor_unsynced = False
            self._fsync_all()
        else:
            self._cursor_unsynced = True

    def _fsync_due(self) -> bool:
        if self.config.fsync == "always":
            return True
        if self.config.fsync == "interval":
            return time.monotonic() - self._last_fsync >= self.config.fsync_interval_s
        return False

    def _fsync_all(self) -> None:
        if self._data_unsynced and self._write_fd >= 0:
            os.fsync(self._write_fd)
        self._data_unsynced = False
        if self._cursor_unsynced:
            try:
                fd = os.open(self._dir / _CURSOR_NAME, os.O_RDONLY)
            except FileNotFoundError:
                pass
            else:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._cursor_unsynced = False
        if self._dir_unsynced:
            fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._dir_unsynced = False
        self._last_fsync = time.monotonic()

    def _close_reader(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
        self._read_fd, self._read_seg = -1, None

    def _close_writer(self, *, sync: bool) -> None:
        if self._write_fd >= 0:
            if sync and self._data_unsynced:
                os.fsync(self._write_fd)  # a later interval fsync could not reach this file any more
            self._data_unsynced = False
            os.close(self._write_fd)
        self._write_fd, self._write_seg = -1, None
