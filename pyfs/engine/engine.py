"""The storage engine: btrees, journal and bucket space of one open image.

Promises (DESIGN.md invariants 1-5 and 7-8; each is proven by the test named):
- `transaction()` commits its key updates as exactly one journal entry and
  applies them to the btrees through `apply_keys` (tests/test_engine.py).
- Open replays the chain chosen by `journal.scan` through the very same
  `apply_keys`; there is no operation-specific replay code (invariant 2).
  After a replay or a torn tail it writes a fresh checkpoint whose seq is
  above every seq seen in the region (tests/test_crash.py).
- `flush()` / `flush_async()` make every committed transaction durable, data
  first (invariant 4); group commit: concurrent async callers share flushes.
- `checkpoint()` writes every dirty node to free space, flushes, then commits
  a checkpoint entry naming the new roots and carrying the live logged-op
  keys (invariant 7); node space replaced by it is reused only after it is
  durable (invariant 3).  It runs when the journal is half full, when dirty
  nodes pass their bound, and at close.
- Any failed write or flush turns the engine read-only: the caller gets EIO,
  later commits get EROFS, and durability is never claimed (invariant 4).
- fsck hooks (pyfs/fsck/repair.py, proven by tests/test_fsck.py):
  `EngineOptions(salvage_journal=True)` replays a corrupt journal up to the
  damaged entry instead of refusing; `Engine.open(..., repair=OpenRepair)`
  replaces damaged btrees by fresh ones holding the entries fsck could read,
  stops replay before an entry that cannot be replayed, and corrects bucket
  counts before the first checkpoint can allocate from them; `close(clean=
  False)` leaves the image marked as needing a check.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from .alloc import BucketSpace, NoSpace
from .btree import BTree, Node, NodeStore, Ptr
from .device import Device
from ..format.checksum import checksum, seed_from_uuid
from ..format.errors import FormatError
from ..format.journal_entry import FLAG_CHECKPOINT, FLAG_CLEAN, RootPtr
from ..format.keys import MAX_KEY_BYTES, decode_key, encode_key
from ..format.node import LEAF_ENTRY_OVERHEAD, encode_node
from ..format.records import NODE_TREES, AllocInfo, BucketKind, Tree
from ..format.superblock import Superblock
from .journal_writer import JournalFull, JournalWriter
from .journal_scan import ScanResult, scan_journal
from .superblock_io import read_superblock, write_superblocks
from .transaction import Transaction

log = logging.getLogger(__name__)

MAX_DATA_REGION = 128 << 10


@dataclass
class EngineOptions:
    read_only: bool = False
    cache_nodes: int = 1024           # clean btree nodes kept in memory
    dirty_limit: int = 4096           # dirty nodes that trigger a checkpoint
    checkpoint_fill: float = 0.5      # journal fill that triggers a checkpoint
    reserve_buckets: int | None = None
    salvage_journal: bool = False     # fsck: replay up to a damaged entry instead of refusing


@dataclass
class OpenRepair:
    """What fsck changes while it opens an image for repair (see `Engine.open`).

    - `rebuild`: btrees to replace by a fresh tree holding these (key, value)
      entries, the ones still readable in the checkpoint's damaged tree;
      replay then applies the journal on top as usual.
    - `replay_until`: replay stops before the entry with this seq.
    - `alloc`: alloc values applied after replay and before the first
      checkpoint, so that it never allocates from a bucket that is in use.
    - `scan`: the journal scan fsck already made of this device (nothing
      was written since), so the open need not read the journal again.
    All of it reaches the disk only with the checkpoint that ends the open.
    """

    rebuild: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    replay_until: int | None = None
    alloc: dict[int, AllocInfo] = field(default_factory=dict)
    scan: ScanResult | None = None


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
    """One open image.  Use `Engine.open` or `Engine.format`."""

    def __init__(self, device: Device, sb: Superblock, options: EngineOptions) -> None:
        self.device = device
        self.sb = sb
        self.options = options
        self.seed = seed_from_uuid(sb.uuid)
        self.read_only = options.read_only or device.read_only
        self.store = NodeStore(device, sb.node_size, self.seed, options.cache_nodes)
        self.space = BucketSpace(sb, options.reserve_buckets)
        nodes_per_bucket = sb.bucket_size // sb.node_size
        # A checkpoint must find room for every dirty node in the reserve.
        self.dirty_limit = max(8, min(options.dirty_limit, (self.space.reserve - 1) * nodes_per_bucket // 2))
        self.trees: dict[int, BTree] = {}
        self.logged_ops: dict[bytes, bytes] = {}
        self.journal: JournalWriter | None = None
        self.failed: OSError | None = None
        self.closed = False
        self.notes: list[str] = []
        self.journal_scan: ScanResult | None = None
        self.checkpoints = 0
        self.commits = 0  # transactions committed since open
        self.replayed_entries = 0
        self._data_unsynced = False
        self._io_lock = threading.Lock()
        self._flush_done = None  # trio.Event of the flush in flight, if any

    # -- opening and formatting ---------------------------------------------

    @classmethod
    def format(cls, device: Device, sb: Superblock, options: EngineOptions | None = None) -> "Engine":
        """Write both superblocks, empty btrees and an initial checkpoint; returns the open engine."""
        eng = cls(device, sb, options or EngineOptions())
        for tree in NODE_TREES:
            eng.trees[tree] = BTree.empty(tree, eng.store)
        eng.journal = JournalWriter(
            device, sb.journal_offset, sb.journal_size, eng.seed,
            next_seq=1, durable_seq=0, checkpoint_seq=0, checkpoint_offset=0, tail_offset=0,
        )
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
        eng = cls(device, sb, options or EngineOptions())
        eng.notes.extend(notes)
        if repair is not None and repair.scan is not None:
            scan = repair.scan
        else:
            scan = scan_journal(device, sb, eng.seed, salvage=eng.options.salvage_journal)
        eng.journal_scan = scan
        eng.notes.extend(scan.problems)
        if scan.corruption is not None:
            eng.notes.append(f"journal salvaged: {scan.corruption}; dropped entries {scan.dropped}")
        ckpt = scan.checkpoint
        roots = ckpt.roots or {}
        for tree in NODE_TREES:
            if repair is not None and tree in repair.rebuild:
                eng.trees[tree] = eng._rebuilt_tree(tree, repair.rebuild[tree])
                continue
            root = roots.get(int(tree))
            if root is None:
                raise FormatError(f"checkpoint {ckpt.seq} has no root for btree {tree.name}")
            eng.trees[tree] = BTree(tree, eng.store, Ptr(root.addr, root.csum), root.level, root.nkeys)
        eng.logged_ops = dict(ckpt.logged_ops or [])
        eng._load_alloc()
        for loc in scan.chain[1:]:
            if repair is not None and repair.replay_until is not None and loc.entry.seq >= repair.replay_until:
                break
            eng.apply_keys(loc.keys(), loc.entry.seq)
            eng.replayed_entries += 1
        for loc in scan.chain:
            loc.source = None  # the region bytes are not needed after replay
        if repair is not None and repair.alloc:
            eng.apply_keys(
                [(Tree.ALLOC, encode_key((b,)), info.encode()) for b, info in sorted(repair.alloc.items())],
                scan.last_seq,
            )
        eng.journal = JournalWriter(
            device, sb.journal_offset, sb.journal_size, eng.seed,
            next_seq=scan.max_seq_seen + 1,
            durable_seq=scan.last_seq,
            checkpoint_seq=ckpt.seq,
            checkpoint_offset=scan.chain[0].offset,
            tail_offset=scan.resume_offset,
        )
        if scan.dropped:
            eng.notes.append(f"journal: torn tail at seq {scan.torn_at}, dropped unacknowledged entries {scan.dropped}")
        if not eng.read_only and (len(scan.chain) > 1 or scan.max_seq_seen != scan.last_seq or repair is not None):
            eng.checkpoint()
        return eng

    def _rebuilt_tree(self, tree: int, entries: list[tuple[bytes, bytes]]) -> BTree:
        """A fresh in-memory btree holding `entries` (fsck's rebuild of a damaged tree)."""
        fresh = BTree.empty(tree, self.store)
        for key, value in sorted(entries):
            try:
                fresh.insert(key, value)
            except ValueError as exc:  # an entry no node can hold: it cannot be kept
                self.notes.append(f"rebuilding btree {Tree(tree).name}: dropped key {key!r}: {exc}")
        return fresh

    def _load_alloc(self) -> None:
        for key, raw in self.trees[Tree.ALLOC].scan():
            (bucket,) = decode_key(key)
            self.space.apply(bucket, AllocInfo.decode(raw), 0)

    # -- applying key updates (commit and replay share this path) ------------

    def apply_keys(self, keys: list[tuple[int, bytes, bytes | None]], seq: int) -> None:
        for tree, key, value in keys:
            if tree == Tree.LOGGED_OPS:
                if value is None:
                    self.logged_ops.pop(key, None)
                else:
                    self.logged_ops[key] = value
                continue
            btree = self.trees.get(tree)
            if btree is None:
                raise FormatError(f"journal entry {seq} names unknown btree {tree}")
            if value is None:
                btree.delete(key)
            else:
                btree.insert(key, value)
            if tree == Tree.ALLOC:
                (bucket,) = decode_key(key)
                self.space.apply(bucket, AllocInfo.decode(value) if value is not None else None, seq)

    # -- the KeySource protocol for transactions ----------------------------

    def read(self, tree: int, key: bytes) -> bytes | None:
        if tree == Tree.LOGGED_OPS:
            return self.logged_ops.get(key)
        return self.trees[tree].get(key)

    def scan(self, tree: int, start: bytes, end: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        if tree == Tree.LOGGED_OPS:
            items = sorted(
                (k, v) for k, v in self.logged_ops.items() if k >= start and (end is None or k < end)
            )
            if reverse:
                items.reverse()
            return iter(items)
        return self.trees[tree].scan(start, end, reverse)

    def check_entry(self, tree: int, key: bytes, value: bytes) -> None:
        if tree not in self.trees and tree != Tree.LOGGED_OPS:
            raise ValueError(f"unknown btree {tree}")
        if not key or len(key) > MAX_KEY_BYTES:
            raise ValueError(f"key of {len(key)} bytes (limit {MAX_KEY_BYTES})")
        size = len(key) + len(value) + LEAF_ENTRY_OVERHEAD
        if size > self.store.max_entry:
            raise ValueError(f"entry of {size} bytes exceeds the limit of {self.store.max_entry}")

    def bucket_of(self, addr: int) -> int:
        """The bucket of a data address; ValueError outside the bucket area."""
        sb = self.sb
        if not sb.bucket_offset <= addr < sb.bucket_offset + sb.nbuckets * sb.bucket_size:
            raise ValueError(f"address {addr:#x} lies outside the bucket area")
        return sb.bucket_of(addr)

    @property
    def max_value_bytes(self) -> int:
        """Largest value a key of `MAX_KEY_BYTES // 4` bytes can carry."""
        return self.store.max_entry - LEAF_ENTRY_OVERHEAD - MAX_KEY_BYTES // 4

    # -- transactions ----------------------------------------------------------

    def transaction(self) -> Transaction:
        return Transaction(self, self._commit)

    def _writable(self) -> JournalWriter:
        if self.closed:
            raise OSError(errno.EBADF, "engine is closed")
        if self.failed is not None:
            raise OSError(errno.EROFS, f"filesystem is read-only after an I/O error: {self.failed}")
        if self.read_only:
            raise OSError(errno.EROFS, "image is open read-only")
        assert self.journal is not None
        return self.journal

    def _commit(self, updates: list[tuple[int, bytes, bytes | None]]) -> int:
        journal = self._writable()
        self._check_metadata_space(updates)
        if journal.fill >= self.options.checkpoint_fill:
            self.checkpoint()
        try:
            entry = journal.append({"keys": updates})
        except JournalFull:
            self.checkpoint()
            try:
                entry = journal.append({"keys": updates})
            except JournalFull as exc:
                raise OSError(errno.E2BIG, f"transaction too large for the journal: {exc}") from None
        self.commits += 1
        try:
            self.apply_keys(updates, entry.seq)
        except Exception as exc:  # the entry is logged; memory no longer matches it
            self._fail(OSError(errno.EIO, f"applying entry {entry.seq} failed: {exc}"))
            raise self.failed from exc  # type: ignore[misc]
        if self.store.dirty_count > self.dirty_limit:
            self.checkpoint()
        return entry.seq

    def _check_metadata_space(self, updates: list[tuple[int, bytes, bytes | None]]) -> None:
        """ENOSPC for transactions that grow the btrees once only the node reserve is left.

        Transactions that delete at least as many keys as they add still go
        through, so space can always be freed.
        """
        space = self.space
        if space.empty - len(space.open) > max(1, space.reserve // 2):
            return
        # Updating a key grows nothing; only keys that are new count.
        added = sum(1 for tree, key, v in updates if v is not None and self.read(tree, key) is None)
        removed = sum(1 for _, _, v in updates if v is None)
        if added > removed:
            raise NoSpace("no space left for metadata")

    # -- data regions ----------------------------------------------------------

    def allocate_data(self, nbytes: int) -> int:
        """Address of `nbytes` (at most one region) of fresh space for file data.

        The caller writes the region and commits the transaction that counts
        it (`adjust_bucket_usage`) without yielding to other requests in
        between: the space is protected only until the next commit is durable.
        """
        journal = self._writable()
        if nbytes > min(MAX_DATA_REGION, self.sb.bucket_size):
            raise ValueError(f"data regions are at most {min(MAX_DATA_REGION, self.sb.bucket_size)} bytes")
        try:
            return self.space.allocate(BucketKind.DATA, nbytes, journal.durable_seq, journal.next_seq)
        except NoSpace:
            if not journal.has_pending:
                raise
        # Buckets emptied by transactions not yet durable become usable once
        # they are: flush, then try once more.
        self.flush()
        return self.space.allocate(BucketKind.DATA, nbytes, journal.durable_seq, journal.next_seq)

    def write_data(self, addr: int, data: bytes) -> int:
        """Write a data region; returns its checksum.  Durable at the next flush."""
        self._writable()
        try:
            self.device.pwrite(addr, data)
        except OSError as exc:
            self._fail(exc)
            raise OSError(errno.EIO, f"data write failed: {exc}") from exc
        self._data_unsynced = True
        return checksum(data, self.seed)

    def read_data(self, addr: int, length: int, expect_csum: int | None = None) -> bytes:
        """Read a data region, verifying its checksum when given (EIO on mismatch)."""
        data = self.device.pread(addr, length)
        if expect_csum is not None and checksum(data, self.seed) != expect_csum:
            log.error("data region at %#x (%d bytes): checksum mismatch", addr, length)
            raise OSError(errno.EIO, f"data region at {addr:#x}: checksum mismatch")
        return data

    def data_checksum(self, data: bytes) -> int:
        return checksum(data, self.seed)

    # -- durability ------------------------------------------------------------

    def _fail(self, exc: OSError) -> None:
        if self.failed is None:
            log.error("I/O error, the filesystem is now read-only: %s", exc)
            self.failed = exc

    def flush(self) -> int:
        """Make every committed transaction durable; returns the durable seq."""
        journal = self._journal_for_flush()
        with self._io_lock:
            self._flush_locked(journal)
        return journal.durable_seq

    def _journal_for_flush(self) -> JournalWriter:
        if self.failed is not None:
            raise OSError(errno.EIO, f"cannot flush after an I/O error: {self.failed}")
        assert self.journal is not None
        return self.journal

    def _flush_locked(self, journal: JournalWriter) -> None:
        if not journal.has_pending and not self._data_unsynced:
            return
        job = journal.prepare_flush()
        data = self._data_unsynced
        self._data_unsynced = False
        self._run_job(journal, job, data)

    def _run_job(self, journal: JournalWriter, job, data: bool) -> None:
        try:
            journal.run_flush(job, data)
        except OSError as exc:
            self._fail(exc)
            raise OSError(errno.EIO, f"flush failed: {exc}") from exc
        journal.complete_flush(job)

    async def flush_async(self) -> int:
        """Like `flush`, but the I/O runs in a worker thread; callers share flushes."""
        import trio

        journal = self._journal_for_flush()
        target = journal.last_committed_seq
        while journal.durable_seq < target:
            if self._flush_done is not None:
                await self._flush_done.wait()
                self._journal_for_flush()
                continue
            done = trio.Event()
            self._flush_done = done
            self._io_lock.acquire()  # released by the worker, so jobs run in the order prepared
            try:
                job = journal.prepare_flush()
                data = self._data_unsynced
                self._data_unsynced = False
            except BaseException:
                self._io_lock.release()
                raise

            def work() -> None:
                try:
                    self._run_job(journal, job, data)
                finally:
                    self._io_lock.release()

            try:
                await trio.to_thread.run_sync(work)
            finally:
                self._flush_done = None
                done.set()
        return journal.durable_seq

    async def run_commit_timer(self, interval: float) -> None:
        """Flush every `interval` seconds while there is something to flush (run in a nursery)."""
        import trio

        while not self.closed:
            await trio.sleep(interval)
            if self.closed or self.failed is not None or self.read_only:
                continue
            assert self.journal is not None
            if self.journal.has_pending or self._data_unsynced:
                try:
                    await self.flush_async()
                except OSError as exc:
                    log.error("background flush failed: %s", exc)

    # -- checkpoints -----------------------------------------------------------

    def checkpoint(self, clean: bool = False) -> int:
        """Write all dirty nodes and commit a checkpoint entry; returns its seq."""
        journal = self._writable()
        with self._io_lock:
            try:
                return self._checkpoint_locked(journal, clean)
            except NoSpace:
                self._fail(OSError(errno.ENOSPC, "no space left for btree nodes at checkpoint"))
                raise

    def _checkpoint_locked(self, journal: JournalWriter, clean: bool) -> int:
        sb = self.sb
        # Space emptied by committed transactions is usable for nodes only
        # once they are durable: make them so first.
        self._flush_locked(journal)
        seq = journal.next_seq  # the checkpoint entry's seq: nothing else appends meanwhile
        alloc = self.trees[Tree.ALLOC]
        # 1. Give every dirty node an address.  Recording the space used and
        # freed dirties alloc nodes, which need addresses too: repeat until
        # nothing new appears (alloc keys are only ever updated, never
        # deleted, so no node merges away during the loop).
        while True:
            fresh = [n for t in self.trees.values() for n in t.dirty_nodes() if n.new_addr is None]
            freed, self.store.freed = self.store.freed, []
            if not fresh and not freed:
                break
            delta: dict[int, int] = {}
            for node in fresh:
                node.new_addr = self.space.allocate(BucketKind.BTREE, sb.node_size, journal.durable_seq, seq)
                b = sb.bucket_of(node.new_addr)
                delta[b] = delta.get(b, 0) + sb.node_size
            for addr in freed:
                b = sb.bucket_of(addr)
                delta[b] = delta.get(b, 0) - sb.node_size
            for b, d in sorted(delta.items()):
                if d == 0:
                    continue
                info = self.space.info(b)
                live = info.live_bytes + d
                if live < 0:
                    raise FormatError(f"bucket {b}: btree live count would drop below zero")
                gen = info.gen + 1 if info.live_bytes == 0 and live > 0 else info.gen
                new = AllocInfo(live, BucketKind.BTREE if live else BucketKind.FREE, gen)
                key = encode_key((b,))
                alloc.insert(key, new.encode())
                self.space.apply(b, new, seq)
        # 2. Write the nodes, children before parents, then flush them.
        roots: dict[int, RootPtr] = {}
        try:
            for tree_id, tree in self.trees.items():
                addr, csum = tree.write_dirty(lambda node, t=tree_id: self._write_node(t, node))
                roots[int(tree_id)] = RootPtr(addr, csum, tree.root_level, tree.nkeys)
            self.device.flush()
            self._data_unsynced = False
        except OSError as exc:
            self._fail(exc)
            raise OSError(errno.EIO, f"checkpoint failed: {exc}") from exc
        # 3. The checkpoint entry, written after the nodes it names.
        flags = FLAG_CHECKPOINT | (FLAG_CLEAN if clean else 0)
        entry = journal.append(
            {"flags": flags, "roots": roots, "logged_ops": sorted(self.logged_ops.items())}, checkpoint=True
        )
        assert entry.seq == seq
        job = journal.prepare_flush()
        self._run_job(journal, job, False)
        self.checkpoints += 1
        return seq

    def _write_node(self, tree: int, node: Node) -> int:
        assert node.new_addr is not None
        raw, csum = encode_node(tree, node.level, node.keys, node.vals, node.new_addr, self.seed)
        self.device.pwrite(node.new_addr, raw)
        return csum

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
        assert j is not None
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
