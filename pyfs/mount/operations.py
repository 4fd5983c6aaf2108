"""The FUSE adapter: pyfuse3 `Operations` over the filesystem core.

Promises:
- A thin translation: every handler calls one core method and converts its
  result; errors become `pyfuse3.FUSEError` with the errno the core chose.
- The daemon never dies on a request: any unexpected exception is logged
  with its traceback and answered with EIO.
- Lookup counts follow the FUSE protocol (lookup, create, mknod, mkdir,
  symlink, link and every readdirplus entry but '.' and '..' count one;
  `forget` gives them back), so unlinked files live exactly as long as the
  kernel may still use them.
- Long operations run here, step by step, yielding between steps: the
  rest of the filesystem keeps being served while requests on the inode an
  operation holds wait for it.  The start of each is durable before its
  first step.  Truncates and the control commands that edit a file return
  once their operation is over; deletions and tree removals go on in the
  background (`start_background`), or in the request without it.
- The control file (pyfs/control.py) answers commands and queries; the
  kernel's cached pages, attributes and names of what a command changed
  are invalidated before the command returns.
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3
import trio

from ..format import control
from ..fs import Attr, Ctx, FileSystem, FsError
from ..fs.logged_ops import OP_DELETE, OP_RMTREE, RANGE_KINDS

log = logging.getLogger(__name__)

T = TypeVar("T")

# The kernel's view can be trusted for long: every change goes through this
# mount, and the kernel invalidates what its own requests change.
ENTRY_TIMEOUT = 60.0
ATTR_TIMEOUT = 60.0


def handler(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn core errors into FUSEError and anything unexpected into EIO plus a log line."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.E2BIG, errno.EFBIG):
                if exc.errno == errno.EIO:
                    log.error("%s: I/O error: %s", fn.__name__, exc)
                raise pyfuse3.FUSEError(exc.errno) from None
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s: unexpected error, answering EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _ctx(ctx: pyfuse3.RequestContext | None) -> Ctx:
    if ctx is None:
        return Ctx()
    return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)


def _caller(ctx: pyfuse3.RequestContext) -> Ctx:
    """The request's caller with its supplementary groups (read from /proc: FUSE does not pass them)."""
    groups: tuple[int, ...] = ()
    try:
        with open(f"/proc/{ctx.pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups = tuple(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass  # the caller is gone or unreadable: its primary group only
    return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask, groups=groups)


def _control_attr() -> Attr:
    return Attr(ino=control.CONTROL_INO, mode=stat.S_IFREG | 0o666, nlink=1, uid=0, gid=0, rdev=0, size=0,
                blocks=0, atime_ns=0, mtime_ns=0, ctime_ns=0, generation=1)


def entry(attr: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.ino
    e.generation = attr.generation
    e.entry_timeout = ENTRY_TIMEOUT
    e.attr_timeout = ATTR_TIMEOUT
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_rdev = attr.rdev
    e.st_size = attr.size
    e.st_blksize = attr.blksize
    e.st_blocks = attr.blocks
    e.st_atime_ns = attr.atime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    return e


class PyfsOperations(pyfuse3.Operations):
    """pyfuse3 handlers; one core call each."""

    supports_dot_lookup = True
    # No writeback cache.  With it the kernel keeps written data in its page
    # cache for up to vm.dirty_expire_centisecs (30 s) before the daemon sees
    # it: a daemon crash then loses far more than the commit interval
    # (invariant 6; tests/test_mount.py,
    # test_a_daemon_killed_after_the_commit_interval_keeps_writes_to_a_file_still_open),
    # writes reach the journal in another order than the metadata operations
    # around them, and ENOSPC shows only at fsync or close, not at write.
    # Measured cost: none for 1 MiB writes (dd conv=fsync ~210 MB/s off,
    # ~145 MB/s on); 4 KiB writes ~4 MB/s off against ~20 MB/s on, and
    # `tar x` of 27 MB of small files ~1.8x slower.
    enable_writeback_cache = False

    def __init__(self, fs: FileSystem, step_delay: float = 0.0) -> None:
        super().__init__()
        self.fs = fs
        fs.defer_long_ops = True
        self.step_delay = step_delay
        self._nursery: trio.Nursery | None = None
        self._idle: dict[int, trio.Event] = {}
        # How the last control command on an inode ended (errno, 0: completed).
        self._outcome: dict[int, int] = {}

    # -- long operations -------------------------------------------------------------

    def start_background(self, nursery: trio.Nursery) -> None:
        """Run deletions and tree removals in `nursery` instead of inside their request."""
        self._nursery = nursery

    async def _wait_idle(self, ino: int) -> None:
        """Return once no long operation holds `ino`."""
        while ino in self.fs.busy:
            event = self._idle.setdefault(ino, trio.Event())
            await event.wait()

    async def _settle(self, background: bool = False) -> None:
        """Run the long operations the last core call started.

        Deletions and tree removals (and, with `background`, every kind) go
        to the nursery; the rest run inside the caller's request.
        """
        for kind, ino in self.fs.take_started():
            if (background or kind in (OP_DELETE, OP_RMTREE)) and self._nursery is not None:
                await self.fs.fsync()  # durably begun before the request returns
                self._nursery.start_soon(self._drive_background, kind, ino)
            else:
                await self._drive(kind, ino)

    async def _drive(self, kind: str, ino: int) -> None:
        """Run one long operation to its end, yielding between steps."""
        try:
            await self.fs.fsync()  # its start is durable before its first step
            if kind in RANGE_KINDS:
                await self._drop_cached_pages(ino)
            while not self.fs.op_step(kind, ino):
                self._invalidate_vanished()
                await trio.sleep(self.step_delay)
        except trio.Cancelled:
            log.info("unmounting: %s of inode %d stops here; the next mount finishes it", kind, ino)
            raise
        except Exception as exc:
            log.exception("%s of inode %d failed; the next mount finishes it", kind, ino)
            self._outcome[ino] = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            raise
        finally:
            self.fs.op_over(kind, ino)  # may start the deletion of a file unlinked meanwhile
            self._invalidate_vanished()
            event = self._idle.pop(ino, None)
            if event is not None:
                event.set()
            if self._nursery is not None:
                if kind in RANGE_KINDS:  # for waiters that do not ask (a raw setfattr)
                    self._nursery.start_soon(self._invalidate_inode, ino)
                for started in self.fs.take_started():
                    self._nursery.start_soon(self._drive_background, *started)

    async def _drive_background(self, kind: str, ino: int) -> None:
        try:
            await self._drive(kind, ino)
        except Exception:  # noqa: BLE001 - logged by _drive; the daemon goes on
            pass

    def _invalidate_vanished(self) -> None:
        vanished, self.fs.vanished = self.fs.vanished, []
        for parent, name, _ino in vanished:
            # Not `deleted=`: for a directory the kernel still caches names in,
            # that fails with ENOTEMPTY and leaves the entry in place.
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    async def _invalidate_entry(self, parent: int, name: bytes, ino: int) -> None:
        """Make the kernel forget `parent/name` before the caller hears back.

        In a thread: the kernel takes the directory's lock, which a request
        being answered here may hold.
        """
        def work() -> None:
            try:
                try:
                    pyfuse3.invalidate_entry(parent, name, deleted=ino)
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:
                        raise
                    # The kernel still caches names inside (a process works in
                    # there): drop the entry without declaring it deleted.
                    pyfuse3.invalidate_entry(parent, name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("invalidating %r in %d: %s", name, parent, exc)

        await trio.to_thread.run_sync(work)

    @staticmethod
    def _invalidate_inode_now(ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the kernel holds nothing of it
                log.warning("invalidating inode %d: %s", ino, exc)

    async def _invalidate_inode(self, ino: int) -> None:
        """Drop the kernel's cached pages and attributes of `ino`.

        In a thread: the kernel locks each cached page, and a read waiting
        here for the inode holds one until it is answered.
        """
        await trio.to_thread.run_sync(self._invalidate_inode_now, ino)

    async def _drop_cached_pages(self, ino: int) -> None:
        """Before the first step: no read may mix cached old pages with new ones.

        A page a waiting read holds locked cannot go now; that read waits for
        the operation and sees its end.  The thread is abandoned after a
        second rather than keep the operation from starting.
        """
        with trio.move_on_after(1.0):
            await trio.to_thread.run_sync(self._invalidate_inode_now, ino, abandon_on_cancel=True)

    # -- the control file ----------------------------------------------------------------

    async def _command(self, raw: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Judge a command and begin it; its operation goes on in the background (pyfs/control.py)."""
        try:
            request = control.decode(raw)
        except control.BadRequest as exc:
            log.info("control: bad request: %s", exc)
            raise FsError(errno.EINVAL) from None
        caller = _caller(ctx)
        op = request["op"]
        label = request.get("label")
        log.info("control: %s from uid %d: %s", op, caller.uid, label or request)
        if op == "flush":
            await self.fs.fsync()
        elif op == "rmtree":
            parent, name = request["parent"], control.name_bytes(request)
            if self._is_control(parent, name):
                raise FsError(errno.ENOTDIR)
            await self._wait_idle(parent)
            for _ in self.fs.rmtree_access_walk(parent, name, caller):
                await trio.sleep(0)
            top = self.fs.rmtree(parent, name, caller, label, tree_checked=True)
            await self._settle()
            await self.fs.fsync()
            await self._invalidate_entry(parent, name, top)
        else:
            ino = request["ino"]
            if ino == control.CONTROL_INO:
                raise FsError(errno.EPERM)
            await self._wait_idle(ino)
            self._outcome.pop(ino, None)
            while len(self._outcome) >= 4096:
                del self._outcome[next(iter(self._outcome))]
            self._outcome[ino] = 0
            call = getattr(self.fs, op)
            if op in ("punch", "zero"):
                call(ino, request["offset"], request["length"], request["keep_size"], caller, label)
            else:
                call(ino, request["offset"], request["length"], caller, label)
            await self._settle(background=True)
            if ino not in self.fs.busy:  # over already: done in one transaction, or inline
                await self.fs.fsync()  # as durable on return as one that had to begin first
                await self._invalidate_inode(ino)

    async def _wait_for(self, ino: int) -> bytes:
        """Answer a wait: once `ino` is idle, with the outcome of its last command."""
        await self._wait_idle(ino)
        await self._invalidate_inode(ino)
        return control.encode_result({"errno": self._outcome.get(ino, 0)})

    async def _query(self, name: bytes) -> bytes:
        waited = control.waited_ino(name)
        if waited is not None:
            return await self._wait_for(waited)
        if name == control.FLUSH_XATTR:
            await self.fs.fsync()
            return control.encode_result({"durable_seq": self.fs.engine.stats().durable_seq})
        if name == control.OPS_XATTR:
            listed = [{"kind": s.kind, "ino": s.ino, "label": s.label, "done": s.done, "total": s.total,
                       "unit": s.unit} for s in self.fs.long_ops()]
            out = control.encode_result(listed)
            while len(out) > control.MAX_RESULT and listed:
                listed = listed[: len(listed) // 2]  # the kernel takes at most 64 KiB: the first ones
                out = control.encode_result(listed)
            return out
        if name == control.STAT_XATTR:
            st = self.fs.engine.stats()
            sfs = self.fs.statfs()
            return control.encode_result({
                "space": {"total_bytes": sfs.blocks * sfs.block_size, "free_bytes": sfs.blocks_free * sfs.block_size,
                          "avail_bytes": sfs.blocks_avail * sfs.block_size},
                "inodes": st.keys.get("inodes", 0),
                "keys": st.keys,
                "journal": {"bytes": st.journal_bytes, "fill": round(st.journal_fill, 4)},
                "seq": st.seq, "durable_seq": st.durable_seq, "checkpoints": st.checkpoints,
                "commits": self.fs.engine.commits, "long_ops": len(self.fs.long_ops()),
            })
        raise FsError(errno.ENODATA)

    @staticmethod
    def _is_control(parent: int, name: bytes) -> bool:
        return parent == pyfuse3.ROOT_INODE and name == control.CONTROL_NAME

    def _no_control_name(self, parent: int, name: bytes) -> None:
        """New names may not shadow the control file."""
        if self._is_control(parent, name):
            raise FsError(errno.EEXIST)

    # -- names ---------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        if self._is_control(parent_inode, name):
            return entry(_control_attr())
        attr = self.fs.lookup(parent_inode, name, _ctx(ctx))
        if attr.ino in self.fs.busy:
            await self._wait_idle(attr.ino)
            attr = self.fs.getattr(attr.ino)
        return entry(attr)

    @handler
    async def forget(self, inode_list):
        for ino, nlookup in inode_list:
            if ino == control.CONTROL_INO:
                continue
            try:
                self.fs.forget(ino, nlookup)
            except Exception:  # forget has no reply: log and go on with the others
                log.exception("forget(%d, %d) failed", ino, nlookup)
        await self._settle()

    @handler
    async def getattr(self, inode, ctx=None):
        if inode == control.CONTROL_INO:
            return entry(_control_attr())
        await self._wait_idle(inode)
        return entry(self.fs.getattr(inode))

    @handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode == control.CONTROL_INO:
            raise FsError(errno.EPERM)
        await self._wait_idle(inode)
        kwargs = {}
        if fields.update_mode:
            kwargs["mode"] = attr.st_mode
        if fields.update_uid:
            kwargs["uid"] = attr.st_uid
        if fields.update_gid:
            kwargs["gid"] = attr.st_gid
        if fields.update_size:
            kwargs["size"] = attr.st_size
        if fields.update_atime:
            kwargs["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kwargs["mtime_ns"] = attr.st_mtime_ns
        result = self.fs.setattr(inode, ctx=_ctx(ctx), **kwargs)
        if self.fs.started:
            await self._settle()
            result = self.fs.getattr(inode)
        return entry(result)

    @handler
    async def readlink(self, inode, ctx):
        return self.fs.readlink(inode)

    @handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._no_control_name(parent_inode, name)
        return entry(self.fs.mknod(parent_inode, name, mode, rdev, _ctx(ctx)))

    @handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._no_control_name(parent_inode, name)
        return entry(self.fs.mkdir(parent_inode, name, mode, _ctx(ctx)))

    @handler
    async def unlink(self, parent_inode, name, ctx):
        if self._is_control(parent_inode, name):
            raise FsError(errno.EPERM)
        self.fs.unlink(parent_inode, name, _ctx(ctx))
        await self._settle()

    @handler
    async def rmdir(self, parent_inode, name, ctx):
        if self._is_control(parent_inode, name):
            raise FsError(errno.ENOTDIR)
        self.fs.rmdir(parent_inode, name, _ctx(ctx))
        await self._settle()

    @handler
    async def symlink(self, parent_inode, name, target, ctx):
        self._no_control_name(parent_inode, name)
        return entry(self.fs.symlink(parent_inode, name, target, _ctx(ctx)))

    @handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if self._is_control(parent_inode_old, name_old) or self._is_control(parent_inode_new, name_new):
            raise FsError(errno.EPERM)
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, _ctx(ctx))
        await self._settle()

    @handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        if inode == control.CONTROL_INO:
            raise FsError(errno.EPERM)
        self._no_control_name(new_parent_inode, new_name)
        await self._wait_idle(inode)
        return entry(self.fs.link(inode, new_parent_inode, new_name, _ctx(ctx)))

    @handler
    async def access(self, inode, mode, ctx):
        if inode == control.CONTROL_INO:
            return True
        try:
            self.fs.access(inode, mode, _ctx(ctx))
        except FsError as exc:
            if exc.errno == errno.EACCES:
                return False
            raise
        return True

    # -- files -----------------------------------------------------------------------

    @handler
    async def open(self, inode, flags, ctx):
        if inode == control.CONTROL_INO:
            raise FsError(errno.EPERM)  # it is addressed by its extended attributes only
        await self._wait_idle(inode)
        fh = self.fs.open(inode, flags, _ctx(ctx))
        await self._settle()
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._no_control_name(parent_inode, name)
        fh, attr = self.fs.create(parent_inode, name, mode, flags, _ctx(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), entry(attr)

    async def _wait_fh(self, fh: int) -> None:
        handle = self.fs.handles.get(fh)
        if handle is not None:
            await self._wait_idle(handle.ino)

    @handler
    async def read(self, fh, off, size):
        await self._wait_fh(fh)
        return self.fs.read(fh, off, size)

    @handler
    async def write(self, fh, off, buf):
        await self._wait_fh(fh)
        return self.fs.write(fh, off, buf)

    @handler
    async def flush(self, fh):
        return None

    @handler
    async def release(self, fh):
        self.fs.release(fh)
        await self._settle()

    @handler
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh, datasync)

    # -- directories -----------------------------------------------------------------

    @handler
    async def opendir(self, inode, ctx):
        await self._wait_idle(inode)
        self.fs.getattr(inode)  # ENOENT for a vanished inode
        return inode

    @handler
    async def readdir(self, fh, start_id, token):
        for name, attr, next_id in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, entry(attr), next_id):
                return
            if name not in (b".", b".."):
                self.fs.remember(attr.ino)

    @handler
    async def releasedir(self, fh):
        return None

    @handler
    async def fsyncdir(self, fh, datasync):
        await self.fs.fsync(None, datasync)

    # -- extended attributes and the filesystem --------------------------------------------

    @handler
    async def setxattr(self, inode, name, value, ctx):
        if inode == control.CONTROL_INO:
            if name != control.COMMAND_XATTR:
                raise FsError(errno.EOPNOTSUPP)
            await self._command(value, ctx)
            return
        await self._wait_idle(inode)
        self.fs.setxattr(inode, name, value)

    @handler
    async def getxattr(self, inode, name, ctx):
        if inode == control.CONTROL_INO:
            return await self._query(name)
        await self._wait_idle(inode)
        return self.fs.getxattr(inode, name)

    @handler
    async def listxattr(self, inode, ctx):
        if inode == control.CONTROL_INO:
            return [control.STAT_XATTR, control.OPS_XATTR, control.FLUSH_XATTR]
        await self._wait_idle(inode)
        return self.fs.listxattr(inode)

    @handler
    async def removexattr(self, inode, name, ctx):
        if inode == control.CONTROL_INO:
            raise FsError(errno.EPERM)
        await self._wait_idle(inode)
        self.fs.removexattr(inode, name)

    @handler
    async def statfs(self, ctx):
        s = self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.block_size
        out.f_frsize = s.block_size
        out.f_blocks = s.blocks
        out.f_bfree = s.blocks_free
        out.f_bavail = s.blocks_avail
        out.f_files = s.files
        out.f_ffree = s.files_free
        out.f_favail = s.files_free
        out.f_namemax = s.name_max
        return out

