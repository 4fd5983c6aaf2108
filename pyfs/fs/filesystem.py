"""The filesystem core: POSIX semantics on the engine's btrees, without FUSE.

Promises:
- Every operation is one transaction (DESIGN.md invariant 1): all the keys
  it changes (inodes, dirents, extents, bucket counts, orphan and logged-op
  keys) commit as one journal entry, or nothing does.  Operations too big
  for one entry run as logged operations (pyfs/fs/longops.py); a write over
  more extents than one entry can drop commits in pieces, in file order
  (a torn write after a crash, never a hole).
- Errors are `FsError` with the errno ext4 gives for the same call.
- Inode numbers come from a counter key updated in the creating
  transaction and are never reused.
- A file whose last name goes away lives on while it is open or known to
  the kernel (lookup count); its orphan key, written in the same
  transaction, makes the next mount delete it after a crash.
- Mount (`FileSystem.mount`) finishes interrupted long operations and deletes
  leftover orphans before it accepts a request.  A read-only mount cannot,
  so it refuses an image with an interrupted range operation (collapse,
  insert, punch, zero), whose file would show half-moved data.

The core is synchronous and single-threaded: between two calls nothing
changes, so a transaction is isolated by construction.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from ..engine.device import Device
from ..engine.engine import Engine, EngineOptions
from ..format.records import NEXT_INO_KEY, ORPHAN_PREFIX, ROOT_INO, Dirent, Inode, Tree, pack, unpack
from ..engine.transaction import Transaction
from . import data as filedata
from . import fallocate, longops, rmtree, xattrs
from .attr import BLOCK_SIZE, ROOT_CTX, Attr, Ctx, StatFs
from .errors import FsError
from .names import FIRST_COOKIE, NAME_MAX, check_name, check_new_name, name_hash

log = logging.getLogger(__name__)

NOW = -1  # setattr: "set this timestamp to the current time"
MAX_FILE_SIZE = 1 << 46
LINK_MAX = 65000
SYMLINK_MAX = 4095
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_SUID_BITS = stat.S_ISUID | stat.S_ISGID


@dataclass
class Handle:
    ino: int
    flags: int


def format_filesystem(engine: Engine, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
    """Create the root directory and the inode counter on a freshly formatted engine."""
    now = time.time_ns()
    root = Inode(
        mode=stat.S_IFDIR | mode, uid=uid, gid=gid, nlink=2, size=0,
        atime_ns=now, mtime_ns=now, ctime_ns=now, generation=1, parent=ROOT_INO,
    )
    with engine.transaction() as t:
        t.put(Tree.INODES, (ROOT_INO,), root.encode())
        t.put(Tree.MISC, NEXT_INO_KEY, pack(ROOT_INO + 1))


def _dtype(mode: int) -> int:
    return stat.S_IFMT(mode)


class FileSystem:
    """An open pyfs filesystem."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self.regions = filedata.RegionCache(engine)
        self.read_only = engine.read_only
        # Long operations.  By default a call runs the ones it starts to the
        # end before it returns.  A driver that wants to run them itself (the
        # FUSE adapter, which yields between steps) sets `defer_long_ops` and
        # takes them from `started`; `busy` inodes have an operation under
        # way, are never reaped, and requests on them wait for it.
        self.defer_long_ops = False
        self.started: list[tuple[str, int]] = []
        self.busy: set[int] = set()
        self._op_starts: dict[tuple[str, int], int] = {}
        # Names a step removed that the kernel may have cached: (dir, name, ino).
        self.vanished: list[tuple[int, bytes, int]] = []
        self.step_env = longops.StepEnv(in_use=self._in_use, removed=self._note_vanished)

    # -- life cycle ---------------------------------------------------------------

    @classmethod
    def mount(cls, device: Device, options: EngineOptions | None = None) -> "FileSystem":
        """Open an image: replay, finish interrupted long operations, delete leftover orphans."""
        fs = cls(Engine.open(device, options))
        if not fs.read_only:
            fs.recover()
            return fs
        # Read-only, nothing can be finished: a file whose range operation a
        # crash interrupted would show its half-moved extents.
        halfway = [(kind, ino) for kind, ino in longops.pending(fs.engine) if kind in longops.RANGE_KINDS]
        if halfway:
            fs.engine.close(clean=False)
            kind, ino = halfway[0]
            raise OSError(errno.EBUSY, f"an interrupted {kind} of inode {ino} must finish first: "
                                       "mount read-write (mount finishes it) or run fsck.py -y")
        return fs

    def recover(self) -> tuple[int, int]:
        """Finish logged operations and delete orphans a crash left behind."""
        resumed = longops.resume_all(self.engine)
        orphans = 0
        with self.engine.transaction() as t:
            found = [ino for (_, ino), _ in t.scan(Tree.MISC, prefix=(ORPHAN_PREFIX,))]
        for ino in found:
            try:
                self._delete_inode(ino)
                orphans += 1
            except OSError as exc:  # e.g. ENOSPC: the orphan key keeps it for the next mount
                log.error("mount: could not delete orphan inode %d: %s", ino, exc)
        if resumed or orphans:
            log.info("mount: finished %d interrupted operations, deleted %d orphans", resumed, orphans)
        return resumed, orphans

    def close(self) -> None:
        self.engine.close()

    def flush(self) -> None:
        self.engine.flush()

    # -- helpers ------------------------------------------------------------------

    def _txn(self) -> Transaction:
        if self.read_only:
            raise FsError(errno.EROFS)
        return self.engine.transaction()

    def _view(self) -> Transaction:
        """A transaction used only for reading."""
        return self.engine.transaction()

    @staticmethod
    def _inode(t: Transaction, ino: int) -> Inode:
        raw = t.get(Tree.INODES, (ino,))
        if raw is None:
            raise FsError(errno.ENOENT)
        return Inode.decode(raw)

    @staticmethod
    def _put(t: Transaction, ino: int, inode: Inode) -> None:
        t.put(Tree.INODES, (ino,), inode.encode())

    def _dir(self, t: Transaction, ino: int) -> Inode:
        inode = self._inode(t, ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        return inode

    @staticmethod
    def _entry(t: Transaction, dir_ino: int, name: bytes) -> Dirent | None:
        raw = t.get(Tree.DIRENTS, (dir_ino, name_hash(name), name))
        return Dirent.decode(raw) if raw is not None else None

    def _named(self, t: Transaction, parent: int, name: bytes) -> tuple[Inode, Dirent, Inode]:
        """The directory `parent`, its entry `name` and the inode it names (ENOENT if absent)."""
        pinode = self._dir(t, parent)
        entry = self._entry(t, parent, name)
        if entry is None:
            raise FsError(errno.ENOENT)
        return pinode, entry, self._inode(t, entry.ino)

    @staticmethod
    def _link_entry(t: Transaction, dir_ino: int, name: bytes, ino: int, mode: int) -> None:
        t.put(Tree.DIRENTS, (dir_ino, name_hash(name), name), Dirent(ino, _dtype(mode)).encode())

    @staticmethod
    def _unlink_entry(t: Transaction, dir_ino: int, name: bytes) -> None:
        t.delete(Tree.DIRENTS, (dir_ino, name_hash(name), name))

    @staticmethod
    def _new_ino(t: Transaction) -> int:
        raw = t.get(Tree.MISC, NEXT_INO_KEY)
        ino = int(unpack(raw)) if raw is not None else ROOT_INO + 1
        t.put(Tree.MISC, NEXT_INO_KEY, pack(ino + 1))
        return ino

    @staticmethod
    def _is_empty_dir(t: Transaction, ino: int) -> bool:
        return next(iter(t.scan(Tree.DIRENTS, prefix=(ino,))), None) is None

    def _in_use(self, ino: int) -> bool:
        return self.lookups.get(ino, 0) > 0 or self.opens.get(ino, 0) > 0 or ino in self.busy

    def _note_vanished(self, parent: int, name: bytes, ino: int) -> None:
        if self.lookups.get(ino, 0) > 0:
            self.vanished.append((parent, name, ino))

    # -- long operations ------------------------------------------------------------

    def _launch(self, kind: str, ino: int) -> None:
        """A long operation's start has committed: run it now, or hand it to the driver."""
        self.busy.add(ino)
        assert self.engine.journal is not None
        self._op_starts[(kind, ino)] = self.engine.journal.last_committed_seq
        if self.defer_long_ops:
            self.started.append((kind, ino))
            return
        try:
            self.engine.flush()  # the start is durable before the first step
            longops.run(self.engine, kind, ino, self.step_env)
        finally:
            self.op_over(kind, ino)

    def take_started(self) -> list[tuple[str, int]]:
        """The long operations started since the last call, for the driver to run."""
        started, self.started = self.started, []
        return started

    def op_step(self, kind: str, ino: int) -> bool:
        """One step of a started operation (driver use); True when it is over."""
        return longops.step(self.engine, kind, ino, self.step_env)

    def op_over(self, kind: str, ino: int) -> None:
        """The driver is done with an operation (finished, or stopped to be resumed at mount)."""
        self._op_starts.pop((kind, ino), None)
        if not any(key[1] == ino for key in self._op_starts):
            self.busy.discard(ino)
        self.regions.clear()
        self._reap_if_unused(ino)

    def rmtree_access_walk(self, parent: int, name: bytes, ctx: Ctx, chunk: int = 4096) -> Iterator[None]:
        """The permission walk of `rmtree` for a caller other than root, in pieces (see rmtree.access_walk)."""
        if ctx.uid != 0:
            yield from rmtree.access_walk(self, parent, name, ctx, chunk)

    def long_ops(self) -> list[longops.OpStatus]:
        """Pending long operations, once their start is durable."""
        durable = self.engine.journal.durable_seq if self.engine.journal is not None else 0
        return [s for s in longops.status(self.engine)
                if self._op_starts.get((s.kind, s.ino), 0) <= durable]

    def collapse(self, ino: int, offset: int, length: int, ctx: Ctx = ROOT_CTX, label: str | None = None) -> Attr:
        """FALLOC_FL_COLLAPSE_RANGE (pyfs/fs/fallocate.py)."""
        return self._range_op(longops.OP_COLLAPSE, ino, offset, length, True, ctx, label)

    def insert(self, ino: int, offset: int, length: int, ctx: Ctx = ROOT_CTX, label: str | None = None) -> Attr:
        """FALLOC_FL_INSERT_RANGE (pyfs/fs/fallocate.py)."""
        return self._range_op(longops.OP_INSERT, ino, offset, length, True, ctx, label)

    def punch(self, ino: int, offset: int, length: int, keep_size: bool = True, ctx: Ctx = ROOT_CTX,
              label: str | None = None) -> Attr:
        """FALLOC_FL_PUNCH_HOLE (pyfs/fs/fallocate.py)."""
        return self._range_op(longops.OP_PUNCH, ino, offset, length, keep_size, ctx, label)

    def zero(self, ino: int, offset: int, length: int, keep_size: bool = True, ctx: Ctx = ROOT_CTX,
             label: str | None = None) -> Attr:
        """FALLOC_FL_ZERO_RANGE (pyfs/fs/fallocate.py)."""
        return self._range_op(longops.OP_ZERO, ino, offset, length, keep_size, ctx, label)

    def _range_op(self, kind: str, ino: int, offset: int, length: int, keep_size: bool, ctx: Ctx,
                  label: str | None) -> Attr:
        if ino in self.busy:
            raise FsError(errno.EBUSY)  # only a driver that does not wait gets here
        key = fallocate.start_range_op(self, kind, ino, offset, length, keep_size, ctx, label)
        if key is not None:
            self._launch(*key)
        self.regions.clear()
        return self.getattr(ino)

    def rmtree(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX, label: str | None = None,
               tree_checked: bool = False) -> int:
        """Remove the directory tree `parent/name` (pyfs/fs/rmtree.py); returns the ino it had."""
        top, steps = rmtree.start_rmtree(self, parent, name, ctx, label, tree_checked)
        if steps:
            self._launch(longops.OP_RMTREE, top)
        else:
            self._reap_if_unused(top)
        return top

    def _drop_link(self, t: Transaction, ino: int, inode: Inode, now: int) -> Inode:
        """One name of `ino` is going away; returns the updated inode (already put)."""
        if stat.S_ISDIR(inode.mode):
            inode = replace(inode, nlink=0, ctime_ns=now)
        else:
            inode = replace(inode, nlink=max(0, inode.nlink - 1), ctime_ns=now)
        self._put(t, ino, inode)
        if inode.nlink == 0:
            t.put(Tree.MISC, (ORPHAN_PREFIX, ino), b"")
        return inode

    def _reap_if_unused(self, ino: int) -> None:
        """Delete an orphan once nothing refers to it any more.

        Runs after the caller's operation has committed, so a failure here
        must not be reported as that operation's failure: the orphan key
        (and the logged op, once started) make the next mount finish the job.
        """
        if self._in_use(ino) or self.read_only:
            return
        with self._view() as t:
            is_orphan = t.get(Tree.MISC, (ORPHAN_PREFIX, ino)) is not None
        if is_orphan:
            try:
                self._delete_inode(ino)
            except OSError as exc:
                log.error("deleting orphan inode %d failed, the next mount will: %s", ino, exc)

    def _delete_inode(self, ino: int) -> None:
        """Delete an inode and all it owns: in one transaction when small, else as a logged op."""
        with self.engine.transaction() as t:
            small = longops.delete_small(t, ino)
        if not small:
            self._launch(longops.OP_DELETE, ino)
        self.regions.clear()

    @staticmethod
    def _new_inode(parent: Inode, mode: int, ctx: Ctx, now: int, rdev: int = 0, nlink: int = 1) -> Inode:
        gid = ctx.gid
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return Inode(
            mode=mode, uid=ctx.uid, gid=gid, nlink=nlink, size=0,
            atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=rdev, generation=1,
        )

    def _remember(self, ino: int) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    def remember(self, ino: int) -> None:
        """The kernel took a reference to `ino` outside lookup (a readdirplus entry)."""
        self._remember(ino)

    # -- lookups and attributes ---------------------------------------------------

    def lookup(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX) -> Attr:
        """Find `name` in `parent`; counts a kernel reference (undone by `forget`)."""
        check_name(name)
        with self._view() as t:
            pinode = self._dir(t, parent)
            if name == b".":
                ino = parent
            elif name == b"..":
                ino = pinode.parent or ROOT_INO
            else:
                entry = self._entry(t, parent, name)
                if entry is None:
                    raise FsError(errno.ENOENT)
                ino = entry.ino
            attr = Attr.of(ino, self._inode(t, ino))
        self._remember(ino)
        return attr

    def forget(self, ino: int, nlookup: int = 1) -> None:
        left = self.lookups.get(ino, 0) - nlookup
        if left > 0:
            self.lookups[ino] = left
            return
        self.lookups.pop(ino, None)
        self._reap_if_unused(ino)

    def getattr(self, ino: int) -> Attr:
        with self._view() as t:
            return Attr.of(ino, self._inode(t, ino))

    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        ctx: Ctx = ROOT_CTX,
    ) -> Attr:
        now = time.time_ns()
        long_truncate = False
        with self._txn() as t:
            inode = self._inode(t, ino)
            changes: dict = {"ctime_ns": now}
            if size is not None:
                if stat.S_ISDIR(inode.mode):
                    raise FsError(errno.EISDIR)
                if not stat.S_ISREG(inode.mode):
                    raise FsError(errno.EINVAL)
                if size < 0:
                    raise FsError(errno.EINVAL)
                if size > MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG)
                if size < inode.size:
                    long_truncate = self._shrink(t, ino, inode, size, changes)
                changes["size"] = size
                changes["mtime_ns"] = now
            if uid is not None or gid is not None:
                new_uid = inode.uid if uid is None else uid
                new_gid = inode.gid if gid is None else gid
                # Like chown(2) on Linux: any chown of a non-directory drops setuid
                # (and setgid when group-executable), even to the same owner or by root.
                if not stat.S_ISDIR(inode.mode):
                    kill = stat.S_ISUID
                    if inode.mode & stat.S_IXGRP:
                        kill |= stat.S_ISGID
                    changes["mode"] = inode.mode & ~kill
                changes["uid"], changes["gid"] = new_uid, new_gid
            if mode is not None:
                changes["mode"] = stat.S_IFMT(inode.mode) | (mode & 0o7777)
            if atime_ns is not None:
                changes["atime_ns"] = now if atime_ns == NOW else atime_ns
            if mtime_ns is not None:
                changes["mtime_ns"] = now if mtime_ns == NOW else mtime_ns
            inode = replace(inode, **changes)
            self._put(t, ino, inode)
        if long_truncate:
            self._launch(longops.OP_TRUNCATE, ino)
            inode = self._inode_now(ino)
        self.regions.clear()
        return Attr.of(ino, inode)

    def _inode_now(self, ino: int) -> Inode:
        with self._view() as t:
            return self._inode(t, ino)

    def _shrink(self, t: Transaction, ino: int, inode: Inode, size: int, changes: dict) -> bool:
        """Drop data past `size`: in this transaction if small, else as a logged operation."""
        extents = 0
        for _ in t.scan(Tree.EXTENTS, (ino, size), (ino + 1, 0)):
            extents += 1
            if extents > longops.STEP_EXTENTS:
                break
        if extents > longops.STEP_EXTENTS:
            # Trim the extent straddling `size` now; whole extents after it go in steps.
            change = filedata.punch(t, ino, size, self._first_extent_at_or_after(t, ino, size))
            changes["data_bytes"] = inode.data_bytes + change.data_bytes
            longops.start_truncate(t, ino, size)
            return True
        change = filedata.punch(t, ino, size, None)
        changes["data_bytes"] = inode.data_bytes + change.data_bytes
        return False

    @staticmethod
    def _first_extent_at_or_after(t: Transaction, ino: int, offset: int) -> int:
        for (_, off), _ in t.scan(Tree.EXTENTS, (ino, offset), (ino + 1, 0)):
            return max(off, offset)
        return offset

    def access(self, ino: int, mask: int, ctx: Ctx = ROOT_CTX) -> None:
        """EACCES unless `ctx` may access `ino` as `mask` (os.R_OK/W_OK/X_OK) asks."""
        with self._view() as t:
            inode = self._inode(t, ino)
        self.check_access(inode, mask, ctx)

    @staticmethod
    def check_access(inode: Inode, mask: int, ctx: Ctx) -> None:
        """EACCES unless `ctx` may access `inode` as `mask` asks (owner, group or other bits)."""
        if mask == 0:
            return
        if ctx.uid == 0:
            if mask & 1 and not (inode.mode & 0o111) and not stat.S_ISDIR(inode.mode):
                raise FsError(errno.EACCES)
            return
        if ctx.uid == inode.uid:
            bits = (inode.mode >> 6) & 7
        elif ctx.gid == inode.gid or inode.gid in ctx.groups:
            bits = (inode.mode >> 3) & 7
        else:
            bits = inode.mode & 7
        if mask & ~bits & 7:
            raise FsError(errno.EACCES)

    # -- creating -----------------------------------------------------------------

    def _create_node(self, parent: int, name: bytes, mode: int, ctx: Ctx, rdev: int = 0,
                     target: bytes | None = None) -> Attr:
        check_new_name(name)
        now = time.time_ns()
        with self._txn() as t:
            pinode = self._dir(t, parent)
            if pinode.nlink == 0:
                raise FsError(errno.ENOENT)
            if self._entry(t, parent, name) is not None:
                raise FsError(errno.EEXIST)
            is_dir = stat.S_ISDIR(mode)
            if is_dir and pinode.nlink >= LINK_MAX:
                raise FsError(errno.EMLINK)
            ino = self._new_ino(t)
            inode = self._new_inode(pinode, mode, ctx, now, rdev, nlink=2 if is_dir else 1)
            if is_dir:
                inode = replace(inode, parent=parent)
            if target is not None:
                change = filedata.write(t, self.engine, ino, 0, 0, target)
                inode = replace(inode, size=len(target), data_bytes=change.data_bytes)
            self._put(t, ino, inode)
            self._link_entry(t, parent, name, ino, mode)
            self._put(t, parent, replace(
                pinode, mtime_ns=now, ctime_ns=now, nlink=pinode.nlink + (1 if is_dir else 0)))
        self._remember(ino)
        return Attr.of(ino, inode)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, ctx: Ctx = ROOT_CTX) -> Attr:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind == stat.S_IFDIR:
            raise FsError(errno.EPERM)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            raise FsError(errno.EINVAL)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0  # only device nodes have a device number (ext4's init_special_inode)
        return self._create_node(parent, name, kind | (mode & 0o7777), ctx, rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx = ROOT_CTX) -> Attr:
        return self._create_node(parent, name, stat.S_IFDIR | (mode & 0o7777), ctx)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx = ROOT_CTX) -> Attr:
        if not target or b"\x00" in target:
            raise FsError(errno.ENOENT if not target else errno.EINVAL)
        if len(target) > SYMLINK_MAX:
            raise FsError(errno.ENAMETOOLONG)
        return self._create_node(parent, name, stat.S_IFLNK | 0o777, ctx, target=target)

    def readlink(self, ino: int) -> bytes:
        with self._view() as t:
            inode = self._inode(t, ino)
            if not stat.S_ISLNK(inode.mode):
                raise FsError(errno.EINVAL)
            return filedata.read(t, self.regions, ino, inode.size, 0, inode.size)

    def link(self, ino: int, new_parent: int, new_name: bytes, ctx: Ctx = ROOT_CTX) -> Attr:
        check_new_name(new_name)
        now = time.time_ns()
        with self._txn() as t:
            inode = self._inode(t, ino)
            pinode = self._dir(t, new_parent)
            if pinode.nlink == 0:
                raise FsError(errno.ENOENT)
            # Linux looks the new name up before it asks whether the inode may be linked.
            if self._entry(t, new_parent, new_name) is not None:
                raise FsError(errno.EEXIST)
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EPERM)
            if inode.nlink >= LINK_MAX:
                raise FsError(errno.EMLINK)
            if inode.nlink == 0:
                raise FsError(errno.ENOENT)
            inode = replace(inode, nlink=inode.nlink + 1, ctime_ns=now)
            self._put(t, ino, inode)
            self._link_entry(t, new_parent, new_name, ino, inode.mode)
            self._put(t, new_parent, replace(pinode, mtime_ns=now, ctime_ns=now))
        self._remember(ino)
        return Attr.of(ino, inode)

    # -- removing -----------------------------------------------------------------

    def unlink(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX) -> None:
        check_name(name)
        now = time.time_ns()
        with self._txn() as t:
            pinode, entry, inode = self._named(t, parent, name)
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR)
            self._unlink_entry(t, parent, name)
            self._drop_link(t, entry.ino, inode, now)
            self._put(t, parent, replace(pinode, mtime_ns=now, ctime_ns=now))
        self._reap_if_unused(entry.ino)

    def rmdir(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX) -> None:
        check_name(name)
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        now = time.time_ns()
        with self._txn() as t:
            pinode, entry, inode = self._named(t, parent, name)
            if not stat.S_ISDIR(inode.mode):
                raise FsError(errno.ENOTDIR)
            if not self._is_empty_dir(t, entry.ino):
                raise FsError(errno.ENOTEMPTY)
            self._unlink_entry(t, parent, name)
            self._drop_link(t, entry.ino, inode, now)
            self._put(t, parent, replace(pinode, nlink=max(2, pinode.nlink - 1), mtime_ns=now, ctime_ns=now))
        self._reap_if_unused(entry.ino)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0, ctx: Ctx = ROOT_CTX) -> None:
        from .rename import rename

        replaced = rename(self, old_parent, old_name, new_parent, new_name, flags)
        if replaced is not None:
            self._reap_if_unused(replaced)

    # -- file handles and data ------------------------------------------------------

    def _new_handle(self, ino: int, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, flags)
        self.opens[ino] = self.opens.get(ino, 0) + 1
        return fh

    def open(self, ino: int, flags: int = 0, ctx: Ctx = ROOT_CTX) -> int:
        with self._view() as t:
            inode = self._inode(t, ino)
        if stat.S_ISDIR(inode.mode) and flags & 3:
            raise FsError(errno.EISDIR)
        if flags & 3 and self.read_only:
            raise FsError(errno.EROFS)
        fh = self._new_handle(ino, flags)
        if flags & os.O_TRUNC and stat.S_ISREG(inode.mode) and flags & 3:
            self.setattr(ino, size=0, ctx=ctx)
        return fh

    def create(self, parent: int, name: bytes, mode: int, flags: int = 0, ctx: Ctx = ROOT_CTX) -> tuple[int, Attr]:
        attr = self._create_node(parent, name, stat.S_IFREG | (mode & 0o7777), ctx)
        return self._new_handle(attr.ino, flags), attr

    def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            raise FsError(errno.EBADF)
        left = self.opens.get(handle.ino, 0) - 1
        if left > 0:
            self.opens[handle.ino] = left
        else:
            self.opens.pop(handle.ino, None)
            self._reap_if_unused(handle.ino)

    def _handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle

    def read(self, fh: int, offset: int, size: int) -> bytes:
        ino = self._handle(fh).ino
        if offset < 0:
            raise FsError(errno.EINVAL)
        with self._view() as t:
            inode = self._inode(t, ino)
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR)
            out = filedata.read(t, self.regions, ino, inode.size, offset, size)
        self._touch_atime(ino, inode)
        return out

    def _touch_atime(self, ino: int, inode: Inode) -> None:
        """relatime: update atime when it is older than mtime/ctime or a day old."""
        if self.read_only:
            return
        now = time.time_ns()
        if inode.atime_ns >= inode.mtime_ns and inode.atime_ns >= inode.ctime_ns \
                and now - inode.atime_ns < 86400 * 10**9:
            return
        try:
            with self._txn() as t:
                current = self._inode(t, ino)
                self._put(t, ino, replace(current, atime_ns=now))
        except OSError as exc:  # atime is best effort; the read itself succeeded
            log.debug("atime update of %d failed: %s", ino, exc)

    def write(self, fh: int, offset: int, data: bytes, ctx: Ctx | None = None) -> int:
        ino = self._handle(fh).ino
        if offset < 0:
            raise FsError(errno.EINVAL)
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if not data:
            return 0
        view = memoryview(data)
        pieces = self._write_pieces(ino, offset, offset + len(data))
        written = 0
        for lo, hi in pieces:
            try:
                piece = data if len(pieces) == 1 else bytes(view[lo - offset : hi - offset])
                self._write_piece(ino, lo, piece, ctx)
            except OSError:
                if written:
                    return written  # pieces before this one are in: a short write, as write(2) reports it
                raise
            written += hi - lo
        return written

    def _write_pieces(self, ino: int, start: int, end: int) -> list[tuple[int, int]]:
        """[start, end) cut so that no piece replaces more than STEP_EXTENTS extents.

        A write is one transaction unless it covers more extents than one
        journal entry can drop (a file grown by many tiny appends); then it
        commits piece by piece in file order, so a crash leaves every byte
        old or new, as a torn write on ext4 does, and never a hole.
        """
        with self._view() as t:
            offsets = [off for off, _ in filedata.extents_in(t, ino, start, end)]
        cuts = offsets[longops.STEP_EXTENTS :: longops.STEP_EXTENTS]
        bounds = [start, *cuts, end]
        return list(zip(bounds, bounds[1:]))

    def _write_piece(self, ino: int, offset: int, data: bytes, ctx: Ctx | None) -> None:
        now = time.time_ns()
        with self._txn() as t:
            inode = self._inode(t, ino)
            if not stat.S_ISREG(inode.mode):
                raise FsError(errno.EINVAL)
            change = filedata.write(t, self.engine, ino, inode.size, offset, data)
            mode = inode.mode
            if ctx is not None and ctx.uid != 0 and mode & _SUID_BITS:
                mode &= ~stat.S_ISUID
                if mode & stat.S_IXGRP:
                    mode &= ~stat.S_ISGID
            self._put(t, ino, replace(
                inode, size=max(inode.size, offset + len(data)), mtime_ns=now, ctime_ns=now, mode=mode,
                data_bytes=inode.data_bytes + change.data_bytes))

    async def fsync(self, fh: int | None = None, datasync: bool = False) -> None:
        """Make the file (and every operation before) durable (invariant 6)."""
        if self.read_only:
            return
        await self.engine.flush_async()

    def fsync_now(self) -> None:
        if not self.read_only:
            self.engine.flush()

    # -- directories ----------------------------------------------------------------

    def readdir(self, ino: int, cookie: int = 0) -> Iterator[tuple[bytes, Attr, int]]:
        """(name, attributes, next cookie) of the entries after `cookie`, '.' and '..' first.

        Cookies are name hashes, so an entry keeps its place while others come
        and go: nothing is skipped or repeated across calls.
        """
        with self._view() as t:
            inode = self._dir(t, ino)
            if inode.nlink == 0:
                raise FsError(errno.ENOENT)  # a removed directory, as Linux's IS_DEADDIR check
            if cookie < 1:
                yield b".", Attr.of(ino, inode), 1
            if cookie < 2:
                parent = inode.parent or ROOT_INO
                yield b"..", Attr.of(parent, self._inode(t, parent)), 2
            start = max(cookie + 1, FIRST_COOKIE)
        # Lazily, one entry at a time: the kernel's buffer usually takes a few
        # dozen entries per call, so loading more inodes would be wasted.
        with self._view() as t:
            for (_, h, name), raw in t.scan(Tree.DIRENTS, (ino, start), (ino + 1, 0)):
                child = Dirent.decode(raw).ino
                yield name, Attr.of(child, self._inode(t, child)), h

    # -- extended attributes -----------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self._view() as t:
            self._inode(t, ino)
            return xattrs.get(t, ino, name)

    def listxattr(self, ino: int) -> list[bytes]:
        with self._view() as t:
            self._inode(t, ino)
            return xattrs.names(t, ino)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        now = time.time_ns()
        with self._txn() as t:
            inode = self._inode(t, ino)
            xattrs.put(t, self.engine, ino, name, value, flags)
            self._put(t, ino, replace(inode, ctime_ns=now))

    def removexattr(self, ino: int, name: bytes) -> None:
        now = time.time_ns()
        with self._txn() as t:
            inode = self._inode(t, ino)
            xattrs.remove(t, ino, name)
            self._put(t, ino, replace(inode, ctime_ns=now))

    # -- the filesystem as a whole --------------------------------------------------------

    def statfs(self) -> StatFs:
        eng = self.engine
        sb = eng.sb
        total = sb.nbuckets * sb.bucket_size
        # Space comes back a bucket at a time, once no live byte is left in it
        # (allocation rounds every region up to a block, and nothing compacts
        # partly dead buckets), so the free space writes can use is the empty
        # buckets, not the total minus live bytes.
        free = eng.space.empty * sb.bucket_size
        avail = max(0, eng.space.empty - eng.space.reserve) * sb.bucket_size
        inodes = eng.trees[Tree.INODES].nkeys
        files_free = avail // BLOCK_SIZE
        return StatFs(
            block_size=BLOCK_SIZE,
            blocks=total // BLOCK_SIZE,
            blocks_free=free // BLOCK_SIZE,
            blocks_avail=avail // BLOCK_SIZE,
            files=inodes + files_free,
            files_free=files_free,
            name_max=NAME_MAX,
        )
