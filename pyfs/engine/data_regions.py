"""Data regions: fresh space for file data, written once and read back against their checksum.

Promises (DESIGN.md invariants 3, 4 and 5; tests/test_engine.py,
tests/test_space.py):
- `allocate` hands out at most `MAX_DATA_REGION` bytes inside one bucket,
  never space a live region or node uses, nor space whose emptying is not
  durable yet; when only such space is left it flushes once and retries.
- `write` puts a region on the device and returns its checksum; the region
  is durable at the next flush, which flushes the device before it writes
  the journal entries that point at the region (invariant 4).  A failed
  write is EIO and turns the engine read-only.
- Format v2: every region written is named by the next committed entry
  (`take_unattached`), so the entry and its data share one flush and replay
  verifies them; an out-of-line key list (`write_key_list`) lives in
  regions whose buckets stay pinned until the next checkpoint.
- `read` with the checksum the extent carries verifies the whole region: a
  mismatch is EIO and a log line, never silent garbage (invariant 5).
"""

from __future__ import annotations

import errno
import logging

from .alloc import BucketSpace, NoSpace
from .device import Device
from .durability import Durability
from .journal_writer import JournalWriter
from ..format.checksum import checksum
from ..format.journal_entry import RegionRef
from ..format.records import BucketKind
from ..format.superblock import Superblock

log = logging.getLogger(__name__)

MAX_DATA_REGION = 128 << 10


class DataRegions:
    """The data-region I/O of one open image; see the module docstring."""

    def __init__(
        self, sb: Superblock, space: BucketSpace, journal: JournalWriter, durability: Durability, device: Device, seed: int
    ) -> None:
        self.sb = sb
        self.space = space
        self.journal = journal
        self.durability = durability
        self.device = device
        self.seed = seed
        self.unattached: list[RegionRef] = []  # v2: regions written that no entry names yet
        self.name_regions = journal.version >= 2

    def allocate(self, nbytes: int) -> int:
        """Address of `nbytes` (at most one region) of fresh space for file data.

        The caller writes the region and commits the transaction that counts
        it (`adjust_bucket_usage`) without yielding to other requests in
        between: the space is protected only until the next commit is durable.
        """
        journal = self.journal
        limit = min(MAX_DATA_REGION, self.sb.bucket_size)
        if nbytes > limit:
            raise ValueError(f"data regions are at most {limit} bytes")
        try:
            return self.space.allocate(BucketKind.DATA, nbytes, journal.reusable_seq, journal.next_seq)
        except NoSpace:
            if not journal.has_pending and journal.reusable_seq >= journal.durable_seq:
                raise
        # Buckets emptied by transactions not yet durable (or not yet known
        # durable) become usable once they are: flush, then try once more.
        self.durability.flush()
        with self.durability.io_lock:
            self.durability.prove_locked()
        return self.space.allocate(BucketKind.DATA, nbytes, journal.reusable_seq, journal.next_seq)

    def write(self, addr: int, data: bytes) -> int:
        """Write a data region; returns its checksum.  Durable at the next flush."""
        csum = self._put(addr, data, "data")
        if self.name_regions:
            self.unattached.append((addr, len(data), csum))
        return csum

    def take_unattached(self) -> tuple[RegionRef, ...]:
        """The regions written since the last commit: the next entry names them (v2)."""
        regions, self.unattached = tuple(self.unattached), []
        return regions

    def write_key_list(self, packed: bytes) -> tuple[RegionRef, ...]:
        """Write an out-of-line key list in regions, each bucket pinned until the next checkpoint."""
        limit = min(MAX_DATA_REGION, self.sb.bucket_size)
        refs = []
        for at in range(0, len(packed), limit):
            piece = packed[at : at + limit]
            addr = self.allocate(len(piece))
            self.space.pin(self.sb.bucket_of(addr))
            refs.append((addr, len(piece), self._put(addr, piece, "key list")))
        return tuple(refs)

    def _put(self, addr: int, data: bytes, what: str) -> int:
        """Write `data` at `addr` (EIO and read-only if that fails); returns its checksum."""
        try:
            self.device.pwrite(addr, data)
        except OSError as exc:
            self.durability.fail(exc)
            raise OSError(errno.EIO, f"{what} write failed: {exc}") from exc
        self.durability.data_written()
        return checksum(data, self.seed)

    def read(self, addr: int, length: int, expect_csum: int | None = None) -> bytes:
        """Read a data region, verifying its checksum when given (EIO on mismatch)."""
        data = self.device.pread(addr, length)
        if expect_csum is not None and checksum(data, self.seed) != expect_csum:
            log.error("data region at %#x (%d bytes): checksum mismatch", addr, length)
            raise OSError(errno.EIO, f"data region at {addr:#x}: checksum mismatch")
        return data

    def checksum_of(self, data: bytes) -> int:
        """The checksum `write` would return for `data`."""
        return checksum(data, self.seed)
