"""Making repairs: the open that salvages, and ordinary transactions after it.

Promises (DESIGN.md invariants 1-3, proven by tests/test_fsck.py, including a
power cut at every write of a repair):
- Repairs that must happen before anything is written (salvaging the
  journal, rebuilding damaged btrees, correcting bucket counts) are planned
  first and made by `Engine.open(..., repair=OpenRepair)`, whose closing
  checkpoint switches to the rebuilt trees at once.  The bucket counts are
  right before that checkpoint allocates, so it never writes over live data.
- Every later repair is one ordinary transaction (one journal entry), so a
  crash in the middle of `fsck -y` leaves an image that a second run
  finishes.  `txn` mirrors each committed transaction into fsck's `State`.
- Repairs keep bucket counts exact: what they stop using they release with
  `adjust_bucket_usage`, what they copy they count.  `reconcile_space` then
  recounts every bucket against the nodes and extents that exist and writes
  what differs (the nodes of a replaced tree are no longer referenced).
"""

from __future__ import annotations

import errno
import itertools
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from ..engine.node_store import Node
from ..engine.check import walk_tree
from ..engine.device import Device
from ..engine.engine import Engine, EngineOptions, OpenRepair
from ..format.errors import FormatError
from ..format.keys import decode_key
from ..format.records import (
    NEXT_INO_KEY,
    NODE_TREES,
    ROOT_INO,
    AllocInfo,
    Dirent,
    Extent,
    Inode,
    Tree,
    pack,
    unpack,
)
from ..fs.names import name_hash
from ..engine.journal_scan import ScanResult
from ..engine.transaction import Transaction
from .checks import Context, alloc_differences, extent_address_problem, recount
from .scan import TreesRead
from .state import State

BATCH = 128  # keys per repair transaction when a repair touches many


class Repairer:
    """Plans the repairs of the open and makes the later ones; provides `findings.Repairs`."""

    def __init__(self, device: Device, scan: ScanResult, trees: TreesRead, ctx: Context) -> None:
        self.device = device
        self.scan = scan
        self.trees = trees
        self.ctx = ctx
        self.state: State = ctx.state
        self.plan = OpenRepair()
        self.salvage = False
        self.superblock_writes: dict[int, bytes] = {}
        self.engine: Engine | None = None

    # -- planned before the open ---------------------------------------------------------

    def plan_superblock_write(self, offset: int, raw: bytes) -> None:
        self.superblock_writes[offset] = raw

    def plan_salvage(self) -> None:
        self.salvage = True

    def plan_replay_until(self, seq: int) -> None:
        self.plan.replay_until = seq

    def plan_rebuild(self, tree: int) -> None:
        self.plan.rebuild[tree] = self.trees.checkpoint_entries.get(tree, [])

    def plan_alloc(self, bucket: int, info: AllocInfo) -> None:
        self.plan.alloc[bucket] = info
        self.state.alloc[bucket] = info

    def open(self) -> Engine:
        """Open the image for writing, making the planned repairs; ends with a checkpoint.

        Later repairs open it on first use (`ensure_open`), so a run whose
        repairs are all declined writes nothing.
        """
        # The superblock copies first: the engine reads them to open.  Each write
        # puts back what a valid copy holds, so a torn one is just redone next time.
        for offset, raw in sorted(self.superblock_writes.items()):
            self.device.pwrite(offset, raw)
        if self.superblock_writes:
            self.device.flush()
        if self.salvage or self.scan.corruption is None:
            self.plan.scan = self.scan  # the analysis read the journal; the writes above did not touch it
        self.engine = Engine.open(self.device, EngineOptions(salvage_journal=self.salvage), repair=self.plan)
        return self.engine

    def ensure_open(self) -> Engine:
        return self.engine if self.engine is not None else self.open()

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def txn(self) -> Iterator[Transaction]:
        t = self.ensure_open().transaction()
        with t:
            yield t
        for tree, key, value in t.updates:
            self.state.apply(tree, key, value)

    @staticmethod
    def _inode(t: Transaction, ino: int) -> Inode | None:
        raw = t.get(Tree.INODES, (ino,))
        return Inode.decode(raw) if raw is not None else None

    def _less_data(self, t: Transaction, ino: int, removed: int) -> None:
        inode = self._inode(t, ino)
        if inode is not None and removed:
            t.put(Tree.INODES, (ino,), replace(inode, data_bytes=max(0, inode.data_bytes - removed)).encode())

    def _release(self, t: Transaction, ext: Extent) -> None:
        """Stop counting an extent's bytes (not for extents whose address never counted)."""
        if ext.inline is None and extent_address_problem(self.ctx.sb, ext, self.ctx.node_buckets) is None:
            t.adjust_bucket_usage(ext.addr, -ext.length)

    # -- keys --------------------------------------------------------------------------------

    def delete_raw(self, tree: int, key: bytes) -> None:
        with self.txn() as t:
            t.delete_raw(tree, key)

    def delete_key(self, tree: int, key: tuple) -> None:
        with self.txn() as t:
            t.delete(tree, key)

    def set_inode(self, ino: int, **changes) -> None:
        with self.txn() as t:
            inode = self._inode(t, ino)
            if inode is not None:
                t.put(Tree.INODES, (ino,), replace(inode, **changes).encode())

    def fix_counter(self) -> None:
        top = max(self.state.inodes, default=ROOT_INO)
        with self.txn() as t:
            raw = t.get(Tree.MISC, NEXT_INO_KEY)
            current = _counter(raw)
            if current is None or current <= top:
                t.put(Tree.MISC, NEXT_INO_KEY, pack(top + 1))

    def _new_ino(self, t: Transaction) -> int:
        current = _counter(t.get(Tree.MISC, NEXT_INO_KEY)) or ROOT_INO + 1
        ino = max(current, max(self.state.inodes, default=ROOT_INO) + 1)
        t.put(Tree.MISC, NEXT_INO_KEY, pack(ino + 1))
        return ino

    # -- extents and xattrs --------------------------------------------------------------------

    def drop_bad_extent(self, key: tuple[int, int]) -> None:
        ext = self.state.extents.get(key)
        if ext is None:
            return
        with self.txn() as t:
            t.delete(Tree.EXTENTS, key)
            self._less_data(t, key[0], ext.length)

    def delete_extents(self, ino: int) -> None:
        """Delete every extent of `ino`, a batch per transaction, releasing their bytes."""
        while True:
            with self.txn() as t:
                batch = list(itertools.islice(t.scan(Tree.EXTENTS, prefix=(ino,)), BATCH))
                removed = 0
                for (_, off), raw in batch:
                    t.delete(Tree.EXTENTS, (ino, off))
                    try:
                        ext = Extent.decode(raw)
                    except FormatError:
                        continue
                    self._release(t, ext)
                    removed += ext.length
                self._less_data(t, ino, removed)
            if len(batch) < BATCH:
                return

    def trim_extent(self, key: tuple[int, int], length: int) -> None:
        ext = self.state.extents.get(key)
        if ext is None or ext.length <= length:
            return
        cut = ext.length - length
        with self.txn() as t:
            if ext.inline is not None:
                new = Extent(length=length, inline=ext.inline[:length])
            else:
                new = Extent(length, ext.region_addr, ext.region_len, ext.region_csum, ext.offset)
                self._release(t, Extent(cut, ext.region_addr, ext.region_len, ext.region_csum, ext.offset + length))
            t.put(Tree.EXTENTS, key, new.encode())
            self._less_data(t, key[0], cut)

    def fix_size(self, ino: int) -> None:
        with self.txn() as t:
            inode = self._inode(t, ino)
            last = next(iter(t.scan(Tree.EXTENTS, prefix=(ino,), reverse=True)), None)
            if inode is None or last is None:
                return
            (_, off), raw = last
            end = off + Extent.decode(raw).length
            if end > inode.size:
                t.put(Tree.INODES, (ino,), replace(inode, size=end).encode())

    def fix_data_bytes(self, ino: int) -> None:
        with self.txn() as t:
            inode = self._inode(t, ino)
            if inode is None:
                return
            total = sum(Extent.decode(raw).length for _, raw in t.scan(Tree.EXTENTS, prefix=(ino,)))
            t.put(Tree.INODES, (ino,), replace(inode, data_bytes=total).encode())

    def unshare(self, key: tuple[int, int]) -> None:
        """Give an extent that shares bytes with another a copy of its own (or drop it if unreadable)."""
        ext = self.state.extents.get(key)
        if ext is None or ext.inline is not None:
            return
        engine = self.ensure_open()
        try:
            region = engine.read_data(ext.region_addr, ext.region_len, ext.region_csum)
        except OSError as exc:
            if engine.failed is not None:
                raise
            region = None
            why = exc
        with self.txn() as t:
            if region is None:
                t.delete(Tree.EXTENTS, key)
                self._release(t, ext)
                self._less_data(t, key[0], ext.length)
            else:
                piece = region[ext.offset : ext.offset + ext.length]
                addr = engine.allocate_data(len(piece))
                csum = engine.write_data(addr, piece)
                t.put(Tree.EXTENTS, key, Extent(len(piece), addr, len(piece), csum, 0).encode())
                t.adjust_bucket_usage(addr, len(piece))
                self._release(t, ext)
        if region is None:
            raise DataLost(f"its data does not verify ({why}); the extent was dropped, leaving a hole")

    def delete_xattrs(self, ino: int) -> None:
        while True:
            with self.txn() as t:
                batch = list(itertools.islice(t.scan(Tree.XATTRS, prefix=(ino,)), BATCH))
                for key, _ in batch:
                    t.delete(Tree.XATTRS, key)
            if len(batch) < BATCH:
                return

    def delete_xattr_chunks(self, ino: int, name: bytes, keep: int) -> None:
        with self.txn() as t:
            for (_, _, chunk), _ in list(t.scan(Tree.XATTRS, prefix=(ino, name))):
                if chunk >= keep:
                    t.delete(Tree.XATTRS, (ino, name, chunk))

    # -- names -------------------------------------------------------------------------------------

    def rehash_dirent(self, key: tuple[int, int, bytes]) -> None:
        d, _, name = key
        right = (d, name_hash(name), name)
        with self.txn() as t:
            raw = t.get(Tree.DIRENTS, key)
            if raw is None:
                return
            t.delete(Tree.DIRENTS, key)
            if t.get(Tree.DIRENTS, right) is None:
                t.put(Tree.DIRENTS, right, raw)

    def set_dirent_kind(self, key: tuple[int, int, bytes], kind: int) -> None:
        with self.txn() as t:
            raw = t.get(Tree.DIRENTS, key)
            if raw is not None:
                t.put(Tree.DIRENTS, key, Dirent(Dirent.decode(raw).ino, kind).encode())

    def create_root(self) -> None:
        now = time.time_ns()
        root = Inode(stat.S_IFDIR | 0o755, 0, 0, 2, 0, now, now, now, generation=1, parent=ROOT_INO)
        with self.txn() as t:
            t.put(Tree.INODES, (ROOT_INO,), root.encode())
            if (_counter(t.get(Tree.MISC, NEXT_INO_KEY)) or 0) <= ROOT_INO:
                t.put(Tree.MISC, NEXT_INO_KEY, pack(max(self.state.inodes, default=ROOT_INO) + 1))

    def lost_found(self) -> int:
        """The inode of /lost+found, made (as one transaction) if there is none."""
        root = self.state.inodes.get(ROOT_INO)
        if root is None or not stat.S_ISDIR(root.mode):
            raise OSError(errno.ENOENT, "there is no root directory to hold lost+found")
        for i in range(1000):
            name = b"lost+found" if i == 0 else b"lost+found.%d" % i
            de = self.state.dirents.get((ROOT_INO, name_hash(name), name))
            if de is None:
                return self._make_dir(ROOT_INO, name)
            target = self.state.inodes.get(de.ino)
            if target is not None and stat.S_ISDIR(target.mode):
                return de.ino
        raise OSError(errno.EEXIST, "no free name for lost+found")

    def _make_dir(self, parent: int, name: bytes) -> int:
        now = time.time_ns()
        with self.txn() as t:
            ino = self._new_ino(t)
            t.put(Tree.INODES, (ino,), Inode(stat.S_IFDIR | 0o700, 0, 0, 2, 0, now, now, now,
                                              generation=1, parent=parent).encode())
            t.put(Tree.DIRENTS, (parent, name_hash(name), name), Dirent(ino, stat.S_IFDIR).encode())
            pinode = self._inode(t, parent)
            assert pinode is not None
            t.put(Tree.INODES, (parent,), replace(pinode, nlink=pinode.nlink + 1, mtime_ns=now, ctime_ns=now).encode())
        return ino

    def reconnect(self, ino: int, detach: list[tuple[int, int, bytes]], names_left: int) -> None:
        """Name `ino` `#INO` in lost+found, after removing the dirents in `detach`."""
        inode = self.state.inodes.get(ino)
        if inode is None:
            return
        lf = self.lost_found()
        is_dir = stat.S_ISDIR(inode.mode)
        with self.txn() as t:
            for key in detach:
                if t.get(Tree.DIRENTS, key) is None:
                    continue
                t.delete(Tree.DIRENTS, key)
                holder = self._inode(t, key[0])
                if is_dir and holder is not None and holder.nlink > 2:
                    t.put(Tree.INODES, (key[0],), replace(holder, nlink=holder.nlink - 1).encode())
            name = b"#%d" % ino
            n = 0
            while t.get(Tree.DIRENTS, (lf, name_hash(name), name)) is not None:
                n += 1
                name = b"#%d.%d" % (ino, n)
            t.put(Tree.DIRENTS, (lf, name_hash(name), name), Dirent(ino, stat.S_IFMT(inode.mode)).encode())
            if is_dir:
                holder = self._inode(t, lf)
                assert holder is not None
                t.put(Tree.INODES, (lf,), replace(holder, nlink=holder.nlink + 1).encode())
                t.put(Tree.INODES, (ino,), replace(inode, parent=lf).encode())
            else:
                t.put(Tree.INODES, (ino,), replace(inode, nlink=max(0, names_left) + 1).encode())

    # -- the end -------------------------------------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """What mount does: finish logged operations, delete orphans."""
        from ..fs.filesystem import FileSystem

        return FileSystem(self.ensure_open()).recover()


class DataLost(Exception):
    """A repair was made, but it had to drop data (the message says which)."""


def _counter(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        value = unpack(raw)
    except Exception:  # noqa: BLE001 - any msgpack failure: no usable counter
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class _NodeAddrs:
    def __init__(self) -> None:
        self.addrs: list[int] = []

    def node(self, tree_id: int, addr: int, level: int) -> None:
        self.addrs.append(addr)

    def leaf(self, tree_id: int, keys: list[bytes], values: list[bytes]) -> None:
        pass


def reconcile_space(engine: Engine, rounds: int = 4) -> int:
    """Recount every bucket against the nodes and extents that exist; write what differs.

    Runs at the end of a repair, when the nodes of replaced btrees are no
    longer referenced.  Returns the number of alloc keys rewritten.
    """
    sb = engine.sb
    changed = 0
    for _ in range(rounds):
        engine.checkpoint()
        visitor = _NodeAddrs()
        for tree in NODE_TREES:
            assert not isinstance(engine.trees[tree].root, Node), "a checkpoint leaves no dirty root"
            walk_tree(sb, engine.trees[tree], visitor)
        node_buckets = {sb.bucket_of(a) for a in visitor.addrs}
        extents = []
        for _, raw in engine.trees[Tree.EXTENTS].scan():
            try:
                extents.append(Extent.decode(raw))
            except FormatError:
                continue
        alloc = {}
        for key, raw in engine.trees[Tree.ALLOC].scan():
            try:
                (bucket,) = decode_key(key)
                alloc[bucket] = AllocInfo.decode(raw)
            except (FormatError, ValueError):
                continue
        counts = recount(sb, visitor.addrs, extents, lambda e: extent_address_problem(sb, e, node_buckets))
        diffs = sorted(alloc_differences(sb, counts, alloc).items())
        if not diffs:
            return changed
        changed += len(diffs)
        for i in range(0, len(diffs), BATCH):
            with engine.transaction() as t:
                for bucket, (_, new) in diffs[i : i + BATCH]:
                    t.put(Tree.ALLOC, (bucket,), new.encode())
    return changed
