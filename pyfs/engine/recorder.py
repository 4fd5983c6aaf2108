"""A device that records every write and flush it passes on, for power-loss replay.

`RecordingDevice` wraps a `FileDevice` (or any `Device`) and appends each
`pwrite` (offset and data) and each successful `flush` to a side log, so a
harness can rebuild what the disk could hold after a power cut at any point
of a real mount's life (tools/crashloop.py; the role dm-log-writes plays for
kernel filesystems).  `pyfs mount --record FILE` opens the image through it.

Promises (what makes the log a faithful record of what reached the disk; it
keeps DESIGN.md invariant 4 for itself, tests/test_crashloop.py):
- A write's record is appended (with write(2), no Python buffering) *before*
  the write is passed on.  A SIGKILL of the daemon can therefore never lose
  the record of a write that reached the image; at worst the log names one
  write per thread that never happened, which a crash image may keep or drop
  like any unflushed write.
- A flush's record is appended only *after* the underlying flush returned.
  A failed flush leaves no record, so the log never claims durability the
  disk did not give.
- A flush covers exactly the writes that had completed when it began: its
  record carries `barrier` (every write with a lower sequence number had been
  issued) and the writes still in flight at that moment, which it does not
  cover.  Writes issued by another thread while the flush ran stay pending.
- A write that raised gets a FAILED record; a later flush never covers it
  (it may have landed in part, or not at all).
- Records are checksummed; a record cut short by a kill is the last one and
  `read_log` drops it.

Format (little-endian): the file header `MAGIC`, u64 image size, u64 zero;
then records: u8 kind, 3 zero bytes, u32 payload length, u64 seq, u64 arg,
u64 xxh3_64 (of the record with this field zero, and its payload), payload.

| kind | seq | arg | payload |
|---|---|---|---|
| WRITE (1) | write number (0, 1, ...) | image offset | the data |
| FLUSH (2) | flush number | barrier: writes numbered below it had been issued | u64 numbers of the writes in flight (not covered) |
| FAILED (3) | the write number whose pwrite raised | errno | empty |
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from .device import Device

__all__ = ["MAGIC", "WRITE", "FLUSH", "FAILED", "Record", "RecordingDevice", "LogError", "read_log", "iter_log"]

MAGIC = b"PYFSREC1"
FILE_HEADER = struct.Struct("<8sQQ")
RECORD = struct.Struct("<BxxxIQQQ")
WRITE, FLUSH, FAILED = 1, 2, 3
_U64 = struct.Struct("<Q")


class LogError(ValueError):
    """The log is not a recording log, or is damaged before its last record."""


@dataclass(frozen=True)
class Record:
    """One record of the log; `pos` is the log offset just after it."""

    kind: int
    seq: int
    arg: int
    payload: bytes
    pos: int

    @property
    def offset(self) -> int:
        """WRITE: where the data goes in the image."""
        return self.arg

    @property
    def in_flight(self) -> tuple[int, ...]:
        """FLUSH: numbers of the writes issued before it that it does not cover."""
        return tuple(_U64.unpack_from(self.payload, i)[0] for i in range(0, len(self.payload), 8))


def _checksum(header: bytes, payload: bytes) -> int:
    h = xxhash.xxh3_64()
    h.update(header)
    h.update(payload)
    return h.intdigest()


def _encode(kind: int, seq: int, arg: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    blank = RECORD.pack(kind, len(payload), seq, arg, 0)
    return [RECORD.pack(kind, len(payload), seq, arg, _checksum(blank, payload)), payload]


class RecordingDevice:
    """A device that logs every write and flush of `inner` to `log_path` (see the module docstring).

    Thread-safe: the engine's flush worker and the main thread may call it at
    once.  The log is opened with O_APPEND and truncated.
    """

    def __init__(self, inner: Device, log_path: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.log_path = os.fsdecode(log_path)
        self._lock = threading.Lock()
        self._next_write = 0
        self._next_flush = 0
        self._in_flight: set[int] = set()
        self._log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                            0o644)
        try:
            self._append([FILE_HEADER.pack(MAGIC, inner.size, 0)])
        except BaseException:
            os.close(self._log)
            raise

    # The Device protocol: size, read_only and everything else come from the inner device.
    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def read_only(self) -> bool:
        return self.inner.read_only

    def _append(self, parts: list[bytes | memoryview]) -> None:
        """write(2) the parts in full; the caller holds the lock (or is the constructor)."""
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        while views:
            n = os.writev(self._log, views)
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes) -> None:
        if self.inner.read_only:
            self.inner.pwrite(offset, data)  # raises EROFS; nothing to record
            return
        payload = memoryview(data).cast("B")
        with self._lock:
            seq = self._next_write
            self._next_write += 1
            self._in_flight.add(seq)
            self._append(_encode(WRITE, seq, offset, payload))
        try:
            self.inner.pwrite(offset, data)
        except BaseException as exc:
            with self._lock:
                self._in_flight.discard(seq)
                self._append(_encode(FAILED, seq, getattr(exc, "errno", 0) or 0, b""))
            raise
        with self._lock:
            self._in_flight.discard(seq)

    def flush(self) -> None:
        with self._lock:
            barrier = self._next_write
            pending = sorted(self._in_flight)
        self.inner.flush()  # a failure propagates and leaves no record
        if self.inner.read_only:
            return
        with self._lock:
            number = self._next_flush
            self._next_flush += 1
            self._append(_encode(FLUSH, number, barrier, b"".join(_U64.pack(s) for s in pending)))

    def close(self) -> None:
        """Close the inner device, then the log.  Closing twice is harmless."""
        try:
            self.inner.close()
        finally:
            with self._lock:
                fd, self._log = self._log, -1
            if fd >= 0:
                os.close(fd)

    def __enter__(self) -> "RecordingDevice":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RecordingDevice {self.inner!r} -> {self.log_path!r}>"


def iter_log(data: bytes) -> Iterator[Record]:
    """The records of a log's bytes, in order; a damaged or short last record ends the log."""
    if len(data) < FILE_HEADER.size:
        raise LogError("too short for a recording log")
    magic, _size, _zero = FILE_HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise LogError("not a pyfs recording log")
    pos = FILE_HEADER.size
    end = len(data)
    view = memoryview(data)
    while pos + RECORD.size <= end:
        kind, length, seq, arg, check = RECORD.unpack_from(data, pos)
        body = pos + RECORD.size
        if body + length > end:
            return  # cut short by a kill: the tail
        payload = bytes(view[body : body + length])
        blank = RECORD.pack(kind, length, seq, arg, 0)
        if kind not in (WRITE, FLUSH, FAILED) or _checksum(blank, payload) != check:
            if body + length == end:
                return  # torn last record
            raise LogError(f"damaged record at log offset {pos}")
        pos = body + length
        yield Record(kind, seq, arg, payload, pos)


def read_log(path: str | os.PathLike[str]) -> tuple[int, list[Record]]:
    """(image size, records) of the log at `path`."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) >= FILE_HEADER.size:
        magic, size, _ = FILE_HEADER.unpack_from(data, 0)
        if magic == MAGIC:
            return size, list(iter_log(data))
    raise LogError(f"{os.fsdecode(path)}: not a pyfs recording log")
