"""Appending journal entries and making them durable.

Promises (DESIGN.md invariants 1, 3, 4, 6):
- Entries get consecutive seqs and are written in seq order.  Each flush
  writes the buffered entries starting at a fresh device sector (`SECTOR`,
  the unit a disk writes atomically), so a flush never rewrites a sector
  holding an entry already durable, and a torn flush tears only its own.
- Format v1: a flush first flushes the device (data written before it
  reaches the disk before the entries that point at it), then writes the
  entries, then flushes again.  Format v2: the entries name the data
  regions they depend on, so data and entries are written and flushed once
  (replay verifies the regions of entries not known durable); a job that
  carries a checkpoint then writes the next checkpoint slot and flushes it.
  Only then is `durable_seq` raised.  A failed write or flush
  leaves `durable_seq` where it was (`durability.py` then turns the engine
  read-only): it never reports durability it does not have.
- v2 entries carry `prev`, the checksum of the entry appended before them,
  and a checkpoint a random nonce, so a stale entry never joins a chain.
- `reusable_seq`: space emptied by seq S may be handed out again once
  S <= reusable_seq.  In v2 that is the highest `durable_seq` carried by an
  entry already durable (replay then never verifies an entry at or below
  it, so overwriting its data cannot cut the chain); in v1, `durable_seq`.
- Journal space from the newest durable checkpoint onward (v2: whose slot
  is durable) is never overwritten; appends that would need it raise `JournalFull` (the engine
  checkpoints long before, when the journal is half full).  A quarter of the
  region (at most 256 KiB) is kept back for the checkpoint entry that frees
  the rest.
- Positions are kept as virtual offsets that only grow; the physical offset
  in the region is the virtual one modulo the region size.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field, replace

from .device import SECTOR, Device
from ..format.journal_entry import CheckpointSlot, JournalEntry, encode_entry, entry_checksum


class JournalFull(OSError):
    def __init__(self, needed: int, free: int) -> None:
        super().__init__(errno.ENOSPC, f"journal full: entry needs {needed} bytes, {free} free")


@dataclass
class FlushJob:
    """The bytes one flush writes: (device offset, data) chunks, in order."""

    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    last_seq: int = 0
    checkpoint_vpos: int | None = None  # virtual offset of the newest checkpoint written by this job
    proves: int = 0  # the highest durable_seq its entries carry: proven once the job is durable
    slot: tuple[int, bytes] | None = None  # v2: (device offset, block) of the slot naming its checkpoint


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
        version: int = 1,
        prev_csum: int = 0,
        proven_seq: int = 0,
        slot_offsets: tuple[int, int] = (0, 0),
        next_slot: int = 0,
        block_size: int = 4096,
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
        self.version = version
        self.prev_csum = prev_csum  # v2: checksum of the last entry appended
        self.proven_seq = durable_seq if version < 2 else proven_seq
        self.slot_offsets = slot_offsets
        self.next_slot = next_slot
        self.block_size = block_size
        self.flushes = 0  # device flushes issued by journal flushes
        self._proves = 0  # the highest durable_seq among buffered entries
        self._slot: tuple[int, bytes] | None = None  # the slot of the newest buffered checkpoint
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

    @property
    def reusable_seq(self) -> int:
        """Space emptied by a seq at or below this may be handed out again (see the module docstring)."""
        return self.proven_seq if self.version >= 2 else self.durable_seq

    def append(self, entry_fields: dict, *, checkpoint: bool = False) -> JournalEntry:
        """Give the entry the next seq, encode it and buffer it; returns the entry."""
        seq = self.next_seq
        if checkpoint:
            last_seq = seq
        else:
            last_seq = self.checkpoint_seq
        if self.version >= 2:
            entry_fields = dict(entry_fields, prev=self.prev_csum)
            if checkpoint:
                entry_fields["nonce"] = int.from_bytes(os.urandom(8), "little")
        else:
            entry_fields = {k: v for k, v in entry_fields.items() if k not in ("regions", "key_lists")}
        entry = JournalEntry(seq=seq, last_seq=last_seq, durable_seq=self.durable_seq, **entry_fields)
        raw = encode_entry(entry, self.seed)
        entry = replace(entry, csum=entry_checksum(raw))
        pos = self._place(len(raw))
        limit = self.region_size if checkpoint else self.region_size - self.reserve
        if pos + len(raw) - self.reclaim_vpos > limit:
            raise JournalFull(len(raw), max(0, limit - self.used))
        self._buffer.append((pos, raw))
        self.tail_vpos = pos + len(raw)
        self.next_seq = seq + 1
        self.prev_csum = entry.csum
        self._proves = max(self._proves, entry.durable_seq)
        if checkpoint:
            self.checkpoint_seq = seq
            self._pending_checkpoints.append((seq, pos))
            if self.version >= 2:
                slot = CheckpointSlot(seq, pos % self.region_size, len(raw), entry.csum)
                self._slot = (self.slot_offsets[self.next_slot], slot.encode(self.seed, self.block_size))
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
        job = FlushJob(last_seq=self.next_seq - 1, proves=self._proves)
        self._proves = 0
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
            if self.version >= 2:
                job.slot = self._slot
                self.next_slot = 1 - self.next_slot
        self._pending_checkpoints = []
        return job

    def _chunk(self, vpos: int, data: bytearray) -> tuple[int, bytes]:
        data += bytes(-len(data) % SECTOR)
        return self.region_offset + vpos % self.region_size, bytes(data)

    def run_flush(self, job: FlushJob, data_pending: bool = True) -> None:
        """The blocking I/O of a job (safe to run in a worker thread)."""
        one_flush = self.version >= 2
        if data_pending and not one_flush:
            self._device_flush()
        for offset, data in job.chunks:
            self.device.pwrite(offset, data)
            self.bytes_written += len(data)
        if job.chunks or (data_pending and one_flush):
            self._device_flush()
        if job.slot is not None:
            # The slot names a checkpoint now durable; the journal before it
            # is reclaimed only once the slot is durable too.
            self.device.pwrite(*job.slot)
            self._device_flush()

    def _device_flush(self) -> None:
        self.device.flush()
        self.flushes += 1

    def complete_flush(self, job: FlushJob) -> None:
        """The job is on disk: raise durable_seq and reclaim space before a new checkpoint."""
        self.durable_seq = max(self.durable_seq, job.last_seq)
        self.proven_seq = max(self.proven_seq, job.proves if self.version >= 2 else self.durable_seq)
        if job.checkpoint_vpos is not None:
            self.reclaim_vpos = job.checkpoint_vpos
