"""The filesystem core: an open pyfs filesystem as an object, without FUSE.

Promises:
- Every method that changes something opens one transaction
  (`transaction()`), calls one operation function on it (pyfs/fs/create.py,
  remove.py, rename.py, setattr.py, write.py, xattrs.py, fallocate.py,
  rmtree.py) and commits: all the keys it changes (inodes, dirents,
  extents, bucket counts, orphan and logged-op keys) commit as one journal
  entry, or nothing does (DESIGN.md invariant 1).  Callers that want
  several operations in one transaction open it themselves with
  `transaction()` and call the operation functions inside it.
- After a commit, the filesystem acts on what the transaction reports:
  long operations begun in it are run (or handed to a driver), inodes that
  lost their last name are deleted once nothing uses them.  Operations too
  big for one entry run as logged operations (pyfs/fs/longops.py); a write
  over more extents than one entry can drop commits in pieces, in file
  order (a torn write after a crash, never a hole).
- Errors are `FsError` with the errno ext4 gives for the same call.
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
from ..format.records import NEXT_INO_KEY, ROOT_INO, Inode, Tree, pack
from . import create as creating
from . import dirents, extent_steps, extents, fallocate, inodes, longops, rmtree
from . import remove as removing
from . import setattr as setting
from . import write as writing
from . import xattrs
from .attr import BLOCK_SIZE, ROOT_CTX, Attr, Ctx, StatFs
from .errors import FsError
from .limits import MAX_FILE_SIZE
from .logged_ops import OP_COLLAPSE, OP_INSERT, OP_PUNCH, OP_ZERO, RANGE_KINDS, StepEnv
from .lookup import lookup
from .names import FIRST_COOKIE, NAME_MAX
from .perms import check_access
from .rename import rename
from .txn import Txn

log = logging.getLogger(__name__)


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
        inodes.put(t, ROOT_INO, root)
        t.put(Tree.MISC, NEXT_INO_KEY, pack(ROOT_INO + 1))


class FileSystem:
    """An open pyfs filesystem."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self.regions = extents.RegionCache(engine)
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
        self.step_env = StepEnv(in_use=self._in_use, removed=self._note_vanished)

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
        halfway = [(kind, ino) for kind, ino in longops.pending(fs.engine) if kind in RANGE_KINDS]
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
            found = inodes.orphans(t)
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

    # -- transactions -------------------------------------------------------------

    def transaction(self, caller: Ctx = ROOT_CTX) -> "Changing":
        """One transaction for any number of operations; committed when the block ends without error.

        After the commit, long operations begun inside run (or go to the
        driver) and inodes left without a name are deleted once unused.
        """
        return Changing(self, caller)

    def committed(self, x: Txn) -> None:
        """Act on what the committed transaction `x` left: run its long operations, reap its unlinked inodes."""
        for kind, ino in x.started:
            self._launch(kind, ino)
        for ino in x.unlinked:
            self._reap_if_unused(ino)

    def _in_use(self, ino: int) -> bool:
        return self.lookups.get(ino, 0) > 0 or self.opens.get(ino, 0) > 0 or ino in self.busy

    def _note_vanished(self, parent: int, name: bytes, ino: int) -> None:
        if self.lookups.get(ino, 0) > 0:
            self.vanished.append((parent, name, ino))

    def _remember(self, ino: int) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    def remember(self, ino: int) -> None:
        """The kernel took a reference to `ino` outside lookup (a readdirplus entry)."""
        self._remember(ino)

    def _reap_if_unused(self, ino: int) -> None:
        """Delete an orphan once nothing refers to it any more.

        Runs after the caller's operation has committed, so a failure here
        must not be reported as that operation's failure: the orphan key
        (and the logged op, once started) make the next mount finish the job.
        """
        if self._in_use(ino) or self.read_only:
            return
        with self.engine.transaction() as t:
            is_orphan = inodes.is_orphan(t, ino)
        if is_orphan:
            try:
                self._delete_inode(ino)
            except OSError as exc:
                log.error("deleting orphan inode %d failed, the next mount will: %s", ino, exc)

    def _delete_inode(self, ino: int) -> None:
        """Delete an inode and all it owns: in one transaction when small, else as a logged op."""
        with self.engine.transaction() as t:
            small = extent_steps.delete_small(t, ino)
        if not small:
            self._launch(extent_steps.OP_DELETE, ino)
        self.regions.clear()

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
            yield from rmtree.access_walk(self.engine, parent, name, ctx, chunk)

    def long_ops(self) -> list[longops.OpStatus]:
        """Pending long operations, once their start is durable."""
        durable = self.engine.journal.durable_seq if self.engine.journal is not None else 0
        return [s for s in longops.status(self.engine)
                if self._op_starts.get((s.kind, s.ino), 0) <= durable]

    def collapse(self, ino: int, offset: int, length: int, ctx: Ctx = ROOT_CTX, label: str | None = None) -> Attr:
        """FALLOC_FL_COLLAPSE_RANGE (pyfs/fs/fallocate.py)."""
        return self._range_op(OP_COLLAPSE, ino, offset, length, True, ctx, label)

    def insert(self, ino: int, offset: int, length: int, ctx: Ctx = ROOT_CTX, label: str | None = None) -> Attr:
        """FALLOC_FL_INSERT_RANGE (pyfs/fs/fallocate.py)."""
        return self._range_op(OP_INSERT, ino, offset, length, True, ctx, label)

    def punch(self, ino: int, offset: int, length: int, keep_size: bool = True, ctx: Ctx = ROOT_CTX,
              label: str | None = None) -> Attr:
        """FALLOC_FL_PUNCH_HOLE (pyfs/fs/fallocate.py)."""
        return self._range_op(OP_PUNCH, ino, offset, length, keep_size, ctx, label)

    def zero(self, ino: int, offset: int, length: int, keep_size: bool = True, ctx: Ctx = ROOT_CTX,
             label: str | None = None) -> Attr:
        """FALLOC_FL_ZERO_RANGE (pyfs/fs/fallocate.py)."""
        return self._range_op(OP_ZERO, ino, offset, length, keep_size, ctx, label)

    def _range_op(self, kind: str, ino: int, offset: int, length: int, keep_size: bool, ctx: Ctx,
                  label: str | None) -> Attr:
        if ino in self.busy:
            raise FsError(errno.EBUSY)  # only a driver that does not wait gets here
        with self.transaction(ctx) as x:
            fallocate.start_range_op(x, kind, ino, offset, length, keep_size, label)
        self.regions.clear()
        return self.getattr(ino)

    def rmtree(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX, label: str | None = None,
               tree_checked: bool = False) -> int:
        """Remove the directory tree `parent/name` (pyfs/fs/rmtree.py); returns the ino it had."""
        with self.transaction(ctx) as x:
            return rmtree.start_rmtree(x, parent, name, label, tree_checked)

    # -- lookups and attributes ---------------------------------------------------

    def lookup(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX) -> Attr:
        """Find `name` in `parent`; counts a kernel reference (undone by `forget`)."""
        with self.engine.transaction() as t:
            ino, inode = lookup(Txn(t, self.engine, 0, ctx), parent, name)
        self._remember(ino)
        return Attr.of(ino, inode)

    def forget(self, ino: int, nlookup: int = 1) -> None:
        left = self.lookups.get(ino, 0) - nlookup
        if left > 0:
            self.lookups[ino] = left
            return
        self.lookups.pop(ino, None)
        self._reap_if_unused(ino)

    def getattr(self, ino: int) -> Attr:
        return Attr.of(ino, self._inode_now(ino))

    def _inode_now(self, ino: int) -> Inode:
        with self.engine.transaction() as t:
            return inodes.get(t, ino)

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
        with self.transaction(ctx) as x:
            inode = setting.setattr(x, ino, mode=mode, uid=uid, gid=gid, size=size,
                                    atime_ns=atime_ns, mtime_ns=mtime_ns)
        if x.started:
            inode = self._inode_now(ino)
        self.regions.clear()
        return Attr.of(ino, inode)

    def access(self, ino: int, mask: int, ctx: Ctx = ROOT_CTX) -> None:
        """EACCES unless `ctx` may access `ino` as `mask` (os.R_OK/W_OK/X_OK) asks."""
        check_access(self._inode_now(ino), mask, ctx)

    # -- creating -----------------------------------------------------------------

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, ctx: Ctx = ROOT_CTX) -> Attr:
        with self.transaction(ctx) as x:
            ino, inode = creating.mknod(x, parent, name, mode, rdev)
        self._remember(ino)
        return Attr.of(ino, inode)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx = ROOT_CTX) -> Attr:
        with self.transaction(ctx) as x:
            ino, inode = creating.mkdir(x, parent, name, mode)
        self._remember(ino)
        return Attr.of(ino, inode)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx = ROOT_CTX) -> Attr:
        with self.transaction(ctx) as x:
            ino, inode = creating.symlink(x, parent, name, target)
        self._remember(ino)
        return Attr.of(ino, inode)

    def readlink(self, ino: int) -> bytes:
        with self.engine.transaction() as t:
            inode = inodes.get(t, ino)
            if not stat.S_ISLNK(inode.mode):
                raise FsError(errno.EINVAL)
            return extents.read(t, self.regions, ino, inode.size, 0, inode.size)

    def link(self, ino: int, new_parent: int, new_name: bytes, ctx: Ctx = ROOT_CTX) -> Attr:
        with self.transaction(ctx) as x:
            inode = creating.link(x, ino, new_parent, new_name)
        self._remember(ino)
        return Attr.of(ino, inode)

    # -- removing -----------------------------------------------------------------

    def unlink(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX) -> None:
        with self.transaction(ctx) as x:
            removing.unlink(x, parent, name)

    def rmdir(self, parent: int, name: bytes, ctx: Ctx = ROOT_CTX) -> None:
        with self.transaction(ctx) as x:
            removing.rmdir(x, parent, name)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0, ctx: Ctx = ROOT_CTX) -> None:
        with self.transaction(ctx) as x:
            rename(x, old_parent, old_name, new_parent, new_name, flags)

    # -- file handles and data ------------------------------------------------------

    def _new_handle(self, ino: int, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, flags)
        self.opens[ino] = self.opens.get(ino, 0) + 1
        return fh

    def open(self, ino: int, flags: int = 0, ctx: Ctx = ROOT_CTX) -> int:
        inode = self._inode_now(ino)
        if stat.S_ISDIR(inode.mode) and flags & 3:
            raise FsError(errno.EISDIR)
        if flags & 3 and self.read_only:
            raise FsError(errno.EROFS)
        fh = self._new_handle(ino, flags)
        if flags & os.O_TRUNC and stat.S_ISREG(inode.mode) and flags & 3:
            self.setattr(ino, size=0, ctx=ctx)
        return fh

    def create(self, parent: int, name: bytes, mode: int, flags: int = 0, ctx: Ctx = ROOT_CTX) -> tuple[int, Attr]:
        with self.transaction(ctx) as x:
            ino, inode = creating.create(x, parent, name, mode)
        self._remember(ino)
        return self._new_handle(ino, flags), Attr.of(ino, inode)

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
        with self.engine.transaction() as t:
            inode = inodes.get(t, ino)
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR)
            out = extents.read(t, self.regions, ino, inode.size, offset, size)
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
            with self.engine.transaction() as t:
                inodes.put(t, ino, replace(inodes.get(t, ino), atime_ns=now))
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
        with self.engine.transaction() as t:
            pieces = writing.pieces(t, ino, offset, offset + len(data))
        view = memoryview(data)
        written = 0
        for lo, hi in pieces:
            try:
                piece = data if len(pieces) == 1 else bytes(view[lo - offset : hi - offset])
                with self.transaction(ctx or ROOT_CTX) as x:
                    writing.write(x, ino, lo, piece)
            except OSError:
                if written:
                    return written  # pieces before this one are in: a short write, as write(2) reports it
                raise
            written += hi - lo
        return written

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
        with self.engine.transaction() as t:
            inode = inodes.get_dir(t, ino)
            if inode.nlink == 0:
                raise FsError(errno.ENOENT)  # a removed directory, as Linux's IS_DEADDIR check
            if cookie < 1:
                yield b".", Attr.of(ino, inode), 1
            if cookie < 2:
                parent = inodes.parent_of(ino, inode)
                yield b"..", Attr.of(parent, inodes.get(t, parent)), 2
            after = max(cookie, FIRST_COOKIE - 1)
        # Lazily, one entry at a time: the kernel's buffer usually takes a few
        # dozen entries per call, so loading more inodes would be wasted.
        with self.engine.transaction() as t:
            for h, name, entry in dirents.entries(t, ino, after):
                yield name, Attr.of(entry.ino, inodes.get(t, entry.ino)), h

    # -- extended attributes -----------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self.engine.transaction() as t:
            inodes.get(t, ino)
            return xattrs.get(t, ino, name)

    def listxattr(self, ino: int) -> list[bytes]:
        with self.engine.transaction() as t:
            inodes.get(t, ino)
            return xattrs.names(t, ino)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        with self.transaction() as x:
            xattrs.setxattr(x, ino, name, value, flags)

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.transaction() as x:
            xattrs.removexattr(x, ino, name)

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
        nodes = eng.trees[Tree.INODES].nkeys
        files_free = avail // BLOCK_SIZE
        return StatFs(
            block_size=BLOCK_SIZE,
            blocks=total // BLOCK_SIZE,
            blocks_free=free // BLOCK_SIZE,
            blocks_avail=avail // BLOCK_SIZE,
            files=nodes + files_free,
            files_free=files_free,
            name_max=NAME_MAX,
        )


class Changing:
    """The context manager `FileSystem.transaction` returns: a `Txn` on enter, commit and follow-up on exit."""

    __slots__ = ("fs", "caller", "t", "x")

    def __init__(self, fs: FileSystem, caller: Ctx) -> None:
        self.fs = fs
        self.caller = caller

    def __enter__(self) -> Txn:
        fs = self.fs
        if fs.read_only:
            raise FsError(errno.EROFS)
        self.t = fs.engine.transaction()
        self.x = Txn(self.t, fs.engine, time.time_ns(), self.caller)
        return self.x

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.t.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.fs.committed(self.x)
        return False
