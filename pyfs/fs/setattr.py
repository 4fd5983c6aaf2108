"""setattr(2)'s family: chmod, chown, truncate and utimes, as one change of an inode.

Promises:
- Every field asked for changes in the caller's transaction together with
  ctime; a size change also sets mtime.  chown of a non-directory drops
  setuid (and setgid of a group-executable file), even to the same owner or
  by root, as Linux does.
- Shrinking drops the data past the new size in the same transaction when
  it spans at most `STEP_EXTENTS` extents; otherwise the extent straddling
  the new size is trimmed now and a `truncate` long operation is begun in
  the transaction (named in `Txn.started`) for the whole extents after it
  (DESIGN.md invariant 7).
- Errors: EISDIR / EINVAL for the size of a directory / non-regular file,
  EINVAL for a negative size, EFBIG past the size limit.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from ..engine.transaction import Transaction
from ..format.records import Inode, Tree
from . import extents, inodes, logged_ops
from .errors import FsError
from .limits import MAX_FILE_SIZE
from .logged_ops import OP_TRUNCATE
from .txn import Txn

NOW = -1  # a time argument meaning "the transaction's own time"


def setattr(x: Txn, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
            size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> Inode:
    """Change the given fields of `ino`; returns the inode as put."""
    t, now = x.t, x.now
    inode = inodes.get(t, ino)
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
        x.check_not_busy(ino)
        if size < inode.size:
            changes["data_bytes"] = inode.data_bytes + _shrink(x, ino, size)
        changes["size"] = size
        changes["mtime_ns"] = now
    if uid is not None or gid is not None:
        if not stat.S_ISDIR(inode.mode):
            changes["mode"] = inodes.kill_suid(inode.mode)
        changes["uid"] = inode.uid if uid is None else uid
        changes["gid"] = inode.gid if gid is None else gid
    if mode is not None:
        changes["mode"] = stat.S_IFMT(inode.mode) | (mode & 0o7777)
    if atime_ns is not None:
        changes["atime_ns"] = now if atime_ns == NOW else atime_ns
    if mtime_ns is not None:
        changes["mtime_ns"] = now if mtime_ns == NOW else mtime_ns
    inode = replace(inode, **changes)
    inodes.put(t, ino, inode)
    return inode


def _shrink(x: Txn, ino: int, size: int) -> int:
    """Drop data past `size`; returns the change of the inode's data bytes."""
    t = x.t
    extents_after = 0
    for _ in t.scan(Tree.EXTENTS, (ino, size), (ino + 1, 0)):
        extents_after += 1
        if extents_after > logged_ops.STEP_EXTENTS:
            break
    if extents_after <= logged_ops.STEP_EXTENTS:
        return extents.punch(t, ino, size, None).data_bytes
    # Trim the extent straddling `size` now; whole extents after it go in steps.
    change = extents.punch(t, ino, size, _first_extent_at_or_after(t, ino, size))
    logged_ops.start_truncate(t, ino, size)
    x.begin_long_op(OP_TRUNCATE, ino)
    return change.data_bytes


def _first_extent_at_or_after(t: Transaction, ino: int, offset: int) -> int:
    for (_, off), _ in t.scan(Tree.EXTENTS, (ino, offset), (ino + 1, 0)):
        return max(off, offset)
    return offset
