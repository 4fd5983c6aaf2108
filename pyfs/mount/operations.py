"""The FUSE adapter: pyfuse3 `Operations` over the filesystem core.

Promises (DESIGN.md: the FUSE layer is a thin adapter; invariants 6 and 9):
- A thin translation: every handler calls one core method and converts its
  result; errors become `pyfuse3.FUSEError` with the errno the core chose.
- The daemon never dies on a request: any unexpected exception is logged
  with its traceback and answered with EIO.
- Lookup counts follow the FUSE protocol (lookup, create, mknod, mkdir,
  symlink, link and every readdirplus entry but '.' and '..' count one;
  `forget` gives them back), so unlinked files live exactly as long as the
  kernel may still use them.
- A request on an inode a long operation holds waits for its end; what a
  request starts runs through `longop_runner` before (truncates) or after
  (deletions, in the background) the request returns.
- The control file (`control_channel`) is found by lookup at the root,
  never listed, never opened, renamed, linked or shadowed; its extended
  attributes are the channel.
- fsync and fsyncdir return once the core says the file (and everything
  committed before) is durable.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3
import trio

from ..format import control
from ..fs import Attr, Ctx, FileSystem, FsError
from .control_channel import CONTROL_ATTR, ControlChannel, is_control, refuse_control_name
from .longop_runner import LongOpRunner

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
        self.longops = LongOpRunner(fs, step_delay)
        self.control = ControlChannel(fs, self.longops)

    def start_background(self, nursery: trio.Nursery) -> None:
        """Run deletions and tree removals in `nursery` instead of inside their request."""
        self.longops.start_background(nursery)

    async def _usable(self, inode: int) -> None:
        """EPERM for the control file (it is addressed by its extended attributes only);
        any other inode once no long operation holds it."""
        if inode == control.CONTROL_INO:
            raise FsError(errno.EPERM)
        await self.longops.wait_idle(inode)

    # -- names ---------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        if is_control(parent_inode, name):
            return entry(CONTROL_ATTR)
        attr = self.fs.lookup(parent_inode, name, _ctx(ctx))
        if attr.ino in self.fs.busy:
            await self.longops.wait_idle(attr.ino)
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
        await self.longops.settle()

    @handler
    async def getattr(self, inode, ctx=None):
        if inode == control.CONTROL_INO:
            return entry(CONTROL_ATTR)
        await self.longops.wait_idle(inode)
        return entry(self.fs.getattr(inode))

    @handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        await self._usable(inode)
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
            await self.longops.settle()
            result = self.fs.getattr(inode)
        return entry(result)

    @handler
    async def readlink(self, inode, ctx):
        return self.fs.readlink(inode)

    @handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        refuse_control_name(parent_inode, name)
        return entry(self.fs.mknod(parent_inode, name, mode, rdev, _ctx(ctx)))

    @handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        refuse_control_name(parent_inode, name)
        return entry(self.fs.mkdir(parent_inode, name, mode, _ctx(ctx)))

    @handler
    async def unlink(self, parent_inode, name, ctx):
        refuse_control_name(parent_inode, name, errno.EPERM)
        self.fs.unlink(parent_inode, name, _ctx(ctx))
        await self.longops.settle()

    @handler
    async def rmdir(self, parent_inode, name, ctx):
        refuse_control_name(parent_inode, name, errno.ENOTDIR)
        self.fs.rmdir(parent_inode, name, _ctx(ctx))
        await self.longops.settle()

    @handler
    async def symlink(self, parent_inode, name, target, ctx):
        refuse_control_name(parent_inode, name)
        return entry(self.fs.symlink(parent_inode, name, target, _ctx(ctx)))

    @handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        refuse_control_name(parent_inode_old, name_old, errno.EPERM)
        refuse_control_name(parent_inode_new, name_new, errno.EPERM)
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, _ctx(ctx))
        await self.longops.settle()

    @handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        if inode == control.CONTROL_INO:
            raise FsError(errno.EPERM)
        refuse_control_name(new_parent_inode, new_name)
        await self.longops.wait_idle(inode)
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
        await self._usable(inode)
        fh = self.fs.open(inode, flags, _ctx(ctx))
        await self.longops.settle()
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        refuse_control_name(parent_inode, name)
        fh, attr = self.fs.create(parent_inode, name, mode, flags, _ctx(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), entry(attr)

    async def _wait_fh(self, fh: int) -> None:
        handle = self.fs.handles.get(fh)
        if handle is not None:
            await self.longops.wait_idle(handle.ino)

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
        await self.longops.settle()

    @handler
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh, datasync)

    # -- directories -----------------------------------------------------------------

    @handler
    async def opendir(self, inode, ctx):
        await self.longops.wait_idle(inode)
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
            return await self.control.setxattr(name, value, ctx)
        await self.longops.wait_idle(inode)
        self.fs.setxattr(inode, name, value)

    @handler
    async def getxattr(self, inode, name, ctx):
        if inode == control.CONTROL_INO:
            return await self.control.getxattr(name)
        await self.longops.wait_idle(inode)
        return self.fs.getxattr(inode, name)

    @handler
    async def listxattr(self, inode, ctx):
        if inode == control.CONTROL_INO:
            return self.control.listxattr()
        await self.longops.wait_idle(inode)
        return self.fs.listxattr(inode)

    @handler
    async def removexattr(self, inode, name, ctx):
        await self._usable(inode)
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

