"""The hidden control file at the mount root: the daemon's side of the control channel.

FUSE carries neither fallocate's collapse/insert modes nor ioctls, so
programs reach those and the daemon's figures through extended attributes
of a file that lookup finds at the root but readdir never lists (the wire
format is `pyfs.format.control`; the client side is `pyfs.client`).

Promises (DESIGN.md: control channel, invariants 7 and 9; proven by
tests/test_fuse_longops.py, tests/test_control_mount.py, tests/test_client.py):
- A command is judged before anything changes: a malformed request is
  EINVAL, one the core refuses gets the core's errno (permissions are
  checked against the caller with its supplementary groups), and the
  control file itself can be neither a command's target nor shadowed,
  renamed, linked or removed.
- collapse/insert/punch/zero return once their operation has durably begun
  (small ones: completed, durable, the kernel's cache of the file dropped);
  a wait (`control.wait_xattr`) answers once the inode is idle, with the
  outcome of its last command, after dropping the kernel's cache of it.
- rmtree returns once the directory is durably gone from its parent and
  the kernel has forgotten its name; its contents go in the background.
- flush and the flush query return once everything committed is durable;
  the ops and stat queries answer at once, within the kernel's 64 KiB.
"""

from __future__ import annotations

import errno
import logging
import stat

import pyfuse3
import trio

from ..format import control
from ..fs import Attr, Ctx, FileSystem, FsError
from . import kernel_cache
from .longop_runner import LongOpRunner

log = logging.getLogger(__name__)

CONTROL_ATTR = Attr(ino=control.CONTROL_INO, mode=stat.S_IFREG | 0o666, nlink=1, uid=0, gid=0, rdev=0, size=0,
                    blocks=0, atime_ns=0, mtime_ns=0, ctime_ns=0, generation=1)


def is_control(parent: int, name: bytes) -> bool:
    """True if `parent/name` names the control file."""
    return parent == pyfuse3.ROOT_INODE and name == control.CONTROL_NAME


def refuse_control_name(parent: int, name: bytes, err: int = errno.EEXIST) -> None:
    """FsError(`err`) if `parent/name` names the control file: new names may not
    shadow it (EEXIST), nor may it be removed or renamed."""
    if is_control(parent, name):
        raise FsError(err)


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


class ControlChannel:
    """The control file's extended attributes: commands (setxattr) and queries (getxattr)."""

    def __init__(self, fs: FileSystem, runner: LongOpRunner) -> None:
        self.fs = fs
        self.runner = runner

    @staticmethod
    def listxattr() -> list[bytes]:
        return [control.STAT_XATTR, control.OPS_XATTR, control.FLUSH_XATTR]

    async def setxattr(self, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name != control.COMMAND_XATTR:
            raise FsError(errno.EOPNOTSUPP)
        await self._command(value, ctx)

    async def getxattr(self, name: bytes) -> bytes:
        waited = control.waited_ino(name)
        if waited is not None:
            return await self._wait_for(waited)
        if name == control.FLUSH_XATTR:
            await self.fs.fsync()
            return control.encode_result({"durable_seq": self.fs.engine.stats().durable_seq})
        if name == control.OPS_XATTR:
            return self._ops()
        if name == control.STAT_XATTR:
            return self._stat()
        raise FsError(errno.ENODATA)

    # -- commands ------------------------------------------------------------------------------

    async def _command(self, raw: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Judge a command and begin it; its operation goes on in the background."""
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
            await self._rmtree(request["parent"], control.name_bytes(request), caller, label)
        else:
            await self._range(op, request, caller, label)

    async def _rmtree(self, parent: int, name: bytes, caller: Ctx, label: str | None) -> None:
        refuse_control_name(parent, name, errno.ENOTDIR)
        await self.runner.wait_idle(parent)
        for _ in self.fs.rmtree_access_walk(parent, name, caller):
            await trio.sleep(0)
        top = self.fs.rmtree(parent, name, caller, label, tree_checked=True)
        await self.runner.settle()
        await self.fs.fsync()
        await kernel_cache.forget_entry(parent, name, top)

    async def _range(self, op: str, request: dict, caller: Ctx, label: str | None) -> None:
        ino = request["ino"]
        if ino == control.CONTROL_INO:
            raise FsError(errno.EPERM)
        await self.runner.wait_idle(ino)
        self.runner.begin_outcome(ino)
        call = getattr(self.fs, op)
        if op in ("punch", "zero"):
            call(ino, request["offset"], request["length"], request["keep_size"], caller, label)
        else:
            call(ino, request["offset"], request["length"], caller, label)
        await self.runner.settle(background=True)
        if ino not in self.fs.busy:  # over already: done in one transaction, or inline
            await self.fs.fsync()  # as durable on return as one that had to begin first
            await kernel_cache.forget_inode(ino)

    # -- queries -------------------------------------------------------------------------------

    async def _wait_for(self, ino: int) -> bytes:
        """Answer a wait: once `ino` is idle, with the outcome of its last command."""
        await self.runner.wait_idle(ino)
        await kernel_cache.forget_inode(ino)
        return control.encode_result({"errno": self.runner.outcome(ino)})

    def _ops(self) -> bytes:
        listed = [{"kind": s.kind, "ino": s.ino, "label": s.label, "done": s.done, "total": s.total,
                   "unit": s.unit} for s in self.fs.long_ops()]
        out = control.encode_result(listed)
        while len(out) > control.MAX_RESULT and listed:
            listed = listed[: len(listed) // 2]  # the kernel takes at most 64 KiB: the first ones
            out = control.encode_result(listed)
        return out

    def _stat(self) -> bytes:
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
