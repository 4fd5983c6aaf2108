"""Appending journal entries and making them durable.

Promises (DESIGN.md invariants 1, 3, 4, 6):
- Entries get consecutive seqs and are written in seq order.  Each flush
  writes the buffered entries starting at a fresh device sector (`SECTOR`,
  the unit a disk writes atomically), so a flush never rewrites a sector
  holding an entry already durable, and a torn flush tears only its own.
- A flush first flushes the device (data written before it reaches the disk
  before the entries that point at it), then writes the entries, then
  flushes again; only then is `durable_seq` raised.  A failed write or flush
  leaves `durable_seq` where it was (`durability.py` then turns the engine
  read-only): it never reports durability it does not have.
- Journal space from the newest durable checkpoint onward is never
  overwritten; appends that would need it raise `JournalFull` (the engine
  checkpoints long before, when the journal is half full).  A quarter of the
  region (at most 256 KiB) is kept back for the checkpoint entry that frees
  the rest.
- Positions are kept as virtual offsets that only grow; the physical offset
  in the region is the virtual one modulo the region size.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from .device import SECTOR, Device
from ..format.journal_entry import JournalEntry, encode_entry


class JournalFull(OSError):
    def __init__(self, needed: int, free: int) -> None:
        super().__init__(errno.ENOSPC, f"journal full: entry needs {needed} bytes, {free} free")


@dataclass
class FlushJob:
    """The bytes one flush writes: (device offset, data) chunks, in order."""

    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    last_seq: int = 0
    checkpoint_vpos: int | None = None  # virtual offset of the newest checkpoint written by this job


class JournalWriter:
    def __init__(
        self,
        device: Device,
        region_offset: int,
        region_size: int,
        seed: int,
        *,
        next_seq: int,
        durable_seq: int,
        checkpoint_seq: int,
        checkpoint_offset: int,
        tail_offset: int,
    ) -> None:
        self.device = device
        self.region_offset = region_offset
        self.region_size = region_size
        self.seed = seed
        self.next_seq = next_seq
        self.durable_seq = durable_seq
        self.checkpoint_seq = checkpoint_seq  # newest checkpoint appended (replay would start there)
        # Virtual positions: reclaim_vpos is the newest durable checkpoint's
        # start; everything before it may be overwritten.
        self.reclaim_vpos = checkpoint_offset
        self.tail_vpos = checkpoint_offset + (tail_offset - checkpoint_offset) % region_size
        if self.tail_vpos == self.reclaim_vpos and tail_offset != checkpoint_offset:
            self.tail_vpos += region_size
        self._buffer: list[tuple[int, bytes]] = []  # (vpos, entry bytes) not yet handed to a flush
        self._pending_checkpoints: list[tuple[int, int]] = []  # (seq, vpos) appended, not yet durable
        self.bytes_written = 0
        # Space kept back for the checkpoint entry that frees the journal.
        self.reserve = min(region_size // 4, 256 << 10)

    # -- space --------------------------------------------------------

    @property
    def used(self) -> int:
        return self.tail_vpos - self.reclaim_vpos

    @property
    def fill(self) -> float:
        """Fraction of the region holding entries still needed for replay."""
        return self.used / self.region_size

    def _place(self, length: int) -> int:
        """Virtual offset for an entry of `length` bytes; entries never wrap."""
        pos = self.tail_vpos
        phys = pos % self.region_size
        if phys + length > self.region_size:
            pos += self.region_size - phys
        return pos

    # -- appending -----------------------------------------------------

    def append(self, entry_fields: dict, *, checkpoint: bool = False) -> JournalEntry:
        """Give the entry the next seq, encode it and buffer it; returns the entry."""
        seq = self.next_seq
        if checkpoint:
            last_seq = seq
        else:
            last_seq = self.checkpoint_seq
        entry = JournalEntry(seq=seq, last_seq=last_seq, durable_seq=self.durable_seq, **entry_fields)
        raw = encode_entry(entry, self.seed)
        pos = self._place(len(raw))
        limit = self.region_size if checkpoint else self.region_size - self.reserve
        if pos + len(raw) - self.reclaim_vpos > limit:
            raise JournalFull(len(raw), max(0, limit - self.used))
        self._buffer.append((pos, raw))
        self.tail_vpos = pos + len(raw)
        self.next_seq = seq + 1
        if checkpoint:
            self.checkpoint_seq = seq
            self._pending_checkpoints.append((seq, pos))
        return entry

    @property
    def has_pending(self) -> bool:
        return bool(self._buffer)

    @property
    def last_committed_seq(self) -> int:
        return self.next_seq - 1

    # -- flushing --------------------------------------------------------

    def prepare_flush(self) -> FlushJob:
        """Take the buffered entries as one job; the buffer starts afresh."""
        job = FlushJob(last_seq=self.next_seq - 1)
        chunk_start: int | None = None
        chunk = bytearray()
        for pos, raw in self._buffer:
            if chunk_start is not None and pos != chunk_start + len(chunk):
                job.chunks.append(self._chunk(chunk_start, chunk))
                chunk_start, chunk = None, bytearray()
            if chunk_start is None:
                chunk_start = pos
            chunk += raw
        if chunk_start is not None:
            job.chunks.append(self._chunk(chunk_start, chunk))
        self._buffer = []
        # The next flush starts on a fresh sector.
        self.tail_vpos += -self.tail_vpos % SECTOR
        if self._pending_checkpoints:
            job.checkpoint_vpos = self._pending_checkpoints[-1][1]
        self._pending_checkpoints = []
        return job

    def _chunk(self, vpos: int, data: bytearray) -> tuple[int, bytes]:
        data += bytes(-len(data) % SECTOR)
        return self.region_offset + vpos % self.region_size, bytes(data)

    def run_flush(self, job: FlushJob, data_pending: bool = True) -> None:
        """The blocking I/O of a job (safe to run in a worker thread)."""
        if data_pending:
            self.device.flush()
        for offset, data in job.chunks:
            self.device.pwrite(offset, data)
            self.bytes_written += len(data)
        if job.chunks:
            self.device.flush()

    def complete_flush(self, job: FlushJob) -> None:
        """The job is on disk: raise durable_seq and reclaim space before a new checkpoint."""
        self.durable_seq = max(self.durable_seq, job.last_seq)
        if job.checkpoint_vpos is not None:
            self.reclaim_vpos = job.checkpoint_vpos
