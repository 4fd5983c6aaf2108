"""The storage engine of one open image: the face the layers above use.

`Engine` opens or formats an image and composes the engine's mechanisms,
each in its own module: the committed key state (`key_state.py`), replay at
open (`replay.py`), flushes and failure (`durability.py`), checkpoints
(`checkpoint.py`) and data regions (`data_regions.py`).  What it does itself
is commit transactions and decide when to checkpoint.

Promises (DESIGN.md invariants 1-5 and 7-8; each is proven by the test named):
- `transaction()` commits its key updates as exactly one journal entry and
  applies them to the btrees through `apply_keys`, the path replay takes
  too (tests/test_engine.py).  A transaction that would grow the btrees
  once only the node reserve is left gets ENOSPC; one that frees keys
  always goes through (tests/test_space.py).
- Open replays the chain chosen by `journal_scan` (`replay.py`).  After a
  replay or a torn tail it writes a fresh checkpoint whose seq is above
  every seq seen in the region, so stale entries never join a chain
  (tests/test_crash.py).
- A checkpoint runs when the journal is half full, when dirty nodes pass
  their bound (`dirty_limit`, kept small enough for the node reserve), when
  an entry does not fit, and at close (`close(clean=False)`, for fsck
  leaving problems behind, leaves the image marked as needing a check).
- Any failed write or flush turns the engine read-only: the caller gets EIO,
  later commits get EROFS, and durability is never claimed (invariant 4).
- fsck hooks (pyfs/fsck/repair.py, proven by tests/test_fsck.py):
  `EngineOptions(salvage_journal=True)` replays a corrupt journal up to the
  damaged entry instead of refusing; `Engine.open(..., repair=OpenRepair)`
  repairs while it opens (see `replay.py`).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from .alloc import BucketSpace, NoSpace
from .btree import BTree
from .checkpoint import Checkpointer
from .data_regions import MAX_DATA_REGION, DataRegions
from .device import Device
from .durability import Durability
from .journal_scan import ScanResult, scan_journal, walk_journal
from .journal_writer import JournalFull, JournalWriter
from .key_state import KeyState
from .node_store import NodeStore
from .replay import OpenRepair, replay
from .superblock_io import read_superblock, write_superblocks
from .transaction import Transaction
from ..format.checksum import seed_from_uuid
from ..format.journal_entry import encode_key_list
from ..format.records import NODE_TREES, Tree
from ..format.superblock import Superblock

__all__ = [
    "MAX_DATA_REGION",
    "Engine",
    "EngineFailed",
    "EngineOptions",
    "EngineStats",
    "OpenRepair",
]

log = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    read_only: bool = False
    cache_nodes: int = 1024           # clean btree nodes kept in memory
    dirty_limit: int = 4096           # dirty nodes that trigger a checkpoint
    checkpoint_fill: float = 0.5      # journal fill that triggers a checkpoint
    reserve_buckets: int | None = None
    salvage_journal: bool = False     # fsck: replay up to a damaged entry instead of refusing
    txn_max_bytes: int | None = None  # E2BIG for a key list above this (None: only the space limits it)
    inline_key_bytes: int = 64 << 10  # v2: a bigger key list goes out of line, in data regions


@dataclass
class EngineStats:
    seq: int
    durable_seq: int
    checkpoint_seq: int
    journal_fill: float
    journal_bytes: int
    keys: dict[str, int]
    space: dict[str, int]
    dirty_nodes: int
    cached_nodes: int
    node_reads: int
    checkpoints: int
    replayed_entries: int
    notes: list[str] = field(default_factory=list)


class EngineFailed(OSError):
    pass


class Engine:
    """One open image.  Use `Engine.open` or `Engine.format`.

    Its parts: `keys` (KeyState), `journal` (JournalWriter), `durability`
    (Durability), `checkpointer` (Checkpointer) and `data` (DataRegions).
    `trees`, `logged_ops`, `store`, `space` and `failed` are theirs, shown here.
    """

    def __init__(self, device: Device, sb: Superblock, options: EngineOptions, journal: JournalWriter) -> None:
        self.device = device
        self.sb = sb
        self.options = options
        self.seed = seed_from_uuid(sb.uuid)
        self.read_only = options.read_only or device.read_only
        self.keys = KeyState(
            sb, NodeStore(device, sb.node_size, self.seed, options.cache_nodes), BucketSpace(sb, options.reserve_buckets)
        )
        nodes_per_bucket = sb.bucket_size // sb.node_size
        # A checkpoint must find room for every dirty node in the reserve.
        self.dirty_limit = max(8, min(options.dirty_limit, (self.space.reserve - 1) * nodes_per_bucket // 2))
        self.journal = journal
        self.durability = Durability(journal, device)
        self.checkpointer = Checkpointer(self.keys, journal, self.durability, device, self.seed)
        self.data = DataRegions(sb, self.space, journal, self.durability, device, self.seed)
        self.closed = False
        self.notes: list[str] = []
        self.journal_scan: ScanResult | None = None
        self.checkpoints = 0
        self.commits = 0  # transactions committed since open
        self.replayed_entries = 0

    # -- the parts' state, under the names the layers above use -----------------

    @property
    def trees(self) -> dict[int, BTree]:
        return self.keys.trees

    @property
    def logged_ops(self) -> dict[bytes, bytes]:
        return self.keys.logged_ops

    @property
    def store(self) -> NodeStore:
        return self.keys.store

    @property
    def space(self) -> BucketSpace:
        return self.keys.space

    @property
    def failed(self) -> OSError | None:
        """The I/O error that turned the engine read-only, if any."""
        return self.durability.failed

    # -- opening and formatting ---------------------------------------------

    @classmethod
    def format(cls, device: Device, sb: Superblock, options: EngineOptions | None = None) -> "Engine":
        """Write both superblocks, empty btrees and an initial checkpoint; returns the open engine."""
        journal = JournalWriter(
            device, sb.journal_offset, sb.journal_size, seed_from_uuid(sb.uuid),
            next_seq=1, durable_seq=0, checkpoint_seq=0, checkpoint_offset=0, tail_offset=0,
            **cls._journal_format(sb),
        )
        eng = cls(device, sb, options or EngineOptions(), journal)
        for tree in NODE_TREES:
            eng.trees[tree] = BTree.empty(tree, eng.store)
        eng.checkpoint()
        # The superblocks go last: an interrupted format leaves no image that
        # looks valid but cannot be opened.
        write_superblocks(device, sb)
        device.flush()
        return eng

    @classmethod
    def open(cls, device: Device, options: EngineOptions | None = None, repair: OpenRepair | None = None) -> "Engine":
        """Open an image: read the superblock, replay the journal, checkpoint if replay happened."""
        sb, notes = read_superblock(device)
        options = options or EngineOptions()
        seed = seed_from_uuid(sb.uuid)
        if repair is not None and repair.scan is not None:
            scan = repair.scan
        elif sb.has_slots:
            scan = walk_journal(device, sb, seed, salvage=options.salvage_journal)
        else:
            scan = scan_journal(device, sb, seed, salvage=options.salvage_journal)
        # Writing resumes after the chain: in v1 with seqs above any seen in
        # the region; in v2 right after the chain, `prev` keeping stale
        # entries out of it, the next checkpoint in the slot not started from.
        journal = JournalWriter(
            device, sb.journal_offset, sb.journal_size, seed,
            next_seq=(scan.last_seq if sb.has_slots else scan.max_seq_seen) + 1,
            durable_seq=scan.last_seq,
            checkpoint_seq=scan.checkpoint.seq,
            checkpoint_offset=scan.chain[0].offset,
            tail_offset=scan.resume_offset,
            prev_csum=scan.chain[-1].entry.csum,
            proven_seq=min(scan.proven_seq, scan.last_seq),
            next_slot=0 if scan.slot_index is None else 1 - scan.slot_index,
            **cls._journal_format(sb),
        )
        eng = cls(device, sb, options, journal)
        eng.notes.extend(notes)
        eng.journal_scan = scan
        eng.notes.extend(scan.problems)
        if scan.corruption is not None:
            eng.notes.append(f"journal salvaged: {scan.corruption}; dropped entries {scan.dropped}")
        eng.replayed_entries = replay(eng.keys, scan, repair, eng.notes)
        if scan.dropped:
            eng.notes.append(f"journal: torn tail at seq {scan.torn_at}, dropped unacknowledged entries {scan.dropped}")
        # Key lists read by replay stay pinned until the checkpoint below.
        for loc in scan.chain[1:]:
            for addr, _, _ in loc.entry.key_lists:
                eng.space.pin(sb.bucket_of(addr))
        slot_behind = sb.has_slots and (scan.slot_index is None or scan.slot_seq != scan.checkpoint.seq)
        if not eng.read_only and (len(scan.chain) > 1 or scan.max_seq_seen != scan.last_seq
                                  or repair is not None or slot_behind):
            eng.checkpoint()
        return eng

    @staticmethod
    def _journal_format(sb: Superblock) -> dict:
        """The JournalWriter arguments that depend on the format version."""
        return {"version": sb.version, "slot_offsets": sb.slot_offsets, "block_size": sb.block_size}

    # -- the key state (commit and replay share `apply_keys`) -------------------

    def apply_keys(self, keys: list[tuple[int, bytes, bytes | None]], seq: int) -> None:
        self.keys.apply_keys(keys, seq)

    def read(self, tree: int, key: bytes) -> bytes | None:
        return self.keys.read(tree, key)

    def scan(self, tree: int, start: bytes, end: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        return self.keys.scan(tree, start, end, reverse)

    def check_entry(self, tree: int, key: bytes, value: bytes) -> None:
        self.keys.check_entry(tree, key, value)

    def bucket_of(self, addr: int) -> int:
        """The bucket of a data address; ValueError outside the bucket area."""
        return self.keys.bucket_of(addr)

    @property
    def max_value_bytes(self) -> int:
        """Largest value a key of `MAX_KEY_BYTES // 4` bytes can carry."""
        return self.keys.max_value_bytes

    # -- transactions ----------------------------------------------------------

    def transaction(self) -> Transaction:
        # `self._commit` is looked up per transaction: tests wrap it to count commits.
        return Transaction(self.keys, self._commit)

    def _writable(self) -> JournalWriter:
        if self.closed:
            raise OSError(errno.EBADF, "engine is closed")
        if self.failed is not None:
            raise OSError(errno.EROFS, f"filesystem is read-only after an I/O error: {self.failed}")
        if self.read_only:
            raise OSError(errno.EROFS, "image is open read-only")
        return self.journal

    def _commit(self, updates: list[tuple[int, bytes, bytes | None]], max_bytes: int | None = None) -> int:
        journal = self._writable()
        self._check_metadata_space(updates)
        limit = max_bytes if max_bytes is not None else self.options.txn_max_bytes
        size = sum(len(k) + len(v or b"") + 8 for _, k, v in updates)
        if limit is not None and size > limit:
            raise OSError(errno.E2BIG, f"transaction of about {size} bytes of keys exceeds the limit of {limit}")
        if journal.fill >= self.options.checkpoint_fill:
            self.checkpoint()
        fields = self._entry_fields(updates, size)
        try:
            entry = journal.append(fields)
        except JournalFull:
            self.checkpoint()
            try:
                entry = journal.append(fields)
            except JournalFull as exc:
                raise OSError(errno.E2BIG, f"transaction too large for the journal: {exc}") from None
        self.commits += 1
        try:
            self.keys.apply_keys(updates, entry.seq)
        except Exception as exc:  # the entry is logged; memory no longer matches it
            self.durability.fail(OSError(errno.EIO, f"applying entry {entry.seq} failed: {exc}"))
            raise self.durability.failed from exc  # type: ignore[misc]
        if self.store.dirty_count > self.dirty_limit:
            self.checkpoint()
        return entry.seq

    def _entry_fields(self, updates: list[tuple[int, bytes, bytes | None]], size: int) -> dict:
        """The entry of a commit: its keys inline, or (v2, when big) in data regions it names."""
        fields: dict = {"keys": updates}
        if self.journal.version < 2:
            return fields
        fields["regions"] = self.data.take_unattached()
        if size > min(self.options.inline_key_bytes, self.sb.journal_size // 8):
            fields["key_lists"] = self.data.write_key_list(encode_key_list(updates))
            fields["keys"] = []
        return fields

    def _check_metadata_space(self, updates: list[tuple[int, bytes, bytes | None]]) -> None:
        """ENOSPC for transactions that grow the btrees once only the node reserve is left.

        Transactions that delete at least as many keys as they add still go
        through, so space can always be freed.
        """
        space = self.space
        if space.empty - len(space.open) > max(1, space.reserve // 2):
            return
        # Updating a key grows nothing; only keys that are new count.
        added = sum(1 for tree, key, v in updates if v is not None and self.keys.read(tree, key) is None)
        removed = sum(1 for _, _, v in updates if v is None)
        if added > removed:
            raise NoSpace("no space left for metadata")

    # -- data regions ----------------------------------------------------------

    def allocate_data(self, nbytes: int) -> int:
        """Address of `nbytes` (at most one region) of fresh space for file data (see `DataRegions.allocate`)."""
        self._writable()
        return self.data.allocate(nbytes)

    def write_data(self, addr: int, data: bytes) -> int:
        """Write a data region; returns its checksum.  Durable at the next flush."""
        self._writable()
        return self.data.write(addr, data)

    def read_data(self, addr: int, length: int, expect_csum: int | None = None) -> bytes:
        """Read a data region, verifying its checksum when given (EIO on mismatch)."""
        return self.data.read(addr, length, expect_csum)

    def data_checksum(self, data: bytes) -> int:
        return self.data.checksum_of(data)

    # -- durability and checkpoints ---------------------------------------------

    def flush(self) -> int:
        """Make every committed transaction durable, data first; returns the durable seq."""
        return self.durability.flush()

    async def flush_async(self) -> int:
        """Like `flush`, but the I/O runs in a worker thread; concurrent callers share flushes."""
        return await self.durability.flush_async()

    async def run_commit_timer(self, interval: float) -> None:
        """Flush every `interval` seconds while there is something to flush (run in a nursery)."""
        await self.durability.run_commit_timer(interval, stopped=lambda: self.closed)

    def checkpoint(self, clean: bool = False) -> int:
        """Write all dirty nodes and commit a checkpoint entry; returns its seq."""
        self._writable()
        seq = self.checkpointer.write(clean)
        self.checkpoints += 1
        return seq

    # -- closing and statistics --------------------------------------------------

    def close(self, clean: bool = True) -> None:
        """Clean close: a final checkpoint (when writable), so the next open replays nothing.

        `clean=False` (fsck leaving problems behind) writes the final
        checkpoint without the CLEAN flag, so the next fsck checks in full.
        """
        if self.closed:
            return
        try:
            if not self.read_only and self.failed is None:
                self.checkpoint(clean=clean)
        finally:
            self.closed = True
            self.device.close()

    def stats(self) -> EngineStats:
        j = self.journal
        return EngineStats(
            seq=j.last_committed_seq,
            durable_seq=j.durable_seq,
            checkpoint_seq=j.checkpoint_seq,
            journal_fill=j.fill,
            journal_bytes=j.used,
            keys={Tree(t).name.lower(): tree.nkeys for t, tree in self.trees.items()}
            | {"logged_ops": len(self.logged_ops)},
            space=self.space.totals(j.durable_seq),
            dirty_nodes=self.store.dirty_count,
            cached_nodes=len(self.store.cache),
            node_reads=self.store.reads,
            checkpoints=self.checkpoints,
            replayed_entries=self.replayed_entries,
            notes=list(self.notes),
        )
