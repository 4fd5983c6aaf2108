"""fallocate(2)-style range operations: collapse, insert, punch hole, zero range.

Promises:
- Arguments are judged as Linux judges them, in the same order: EINVAL for
  a negative offset or a length that is not positive, EACCES for a caller
  who may not write the file (the daemon's stand-in for a descriptor not
  open for writing), EISDIR for a directory, ENODEV for other non-regular
  files, EFBIG past the size limit, then (collapse, insert) EINVAL for
  ranges not aligned to the 4 KiB block or not inside the file.  A failed
  call changes nothing.
- collapse: data after the range moves down by its length and the size
  shrinks by it.  insert: data from offset moves up, leaving a hole of the
  length, and the size grows by it.  punch and zero: the range reads as
  zeros and holds no space (pyfs is copy-on-write: nothing is gained by
  allocating zeros); with keep_size the size stays, otherwise it grows to
  cover the range (Linux refuses punch without keep-size; pyfs treats it
  like zero range).  All of them set mtime and ctime and, for a caller
  other than root, clear setuid (and setgid of a group-executable file).
- An operation whose extents fit one step runs whole in the caller's
  transaction.  A bigger one is a logged operation (pyfs/fs/longops.py):
  `start_range_op` puts its start in the caller's transaction and names it
  in `Txn.started`; whoever commits runs the steps.
"""

from __future__ import annotations

import errno
import stat

from . import extent_moves as moves
from . import inodes, logged_ops
from .attr import BLOCK_SIZE
from .errors import FsError
from .limits import MAX_FILE_SIZE
from .logged_ops import MOUNT_ENV, OP_COLLAPSE, OP_INSERT, Op
from .longops import STEPS
from .perms import W_OK, check_access
from .txn import Txn


def start_range_op(x: Txn, kind: str, ino: int, offset: int, length: int, keep_size: bool,
                   label: str | None = None) -> None:
    """Validate and begin `kind` on `ino` in `x`: done at once if small, else in `x.started`."""
    if offset < 0 or length <= 0:
        raise FsError(errno.EINVAL)
    t, caller = x.t, x.caller
    inode = inodes.get(t, ino)
    check_access(inode, W_OK, caller)
    if stat.S_ISDIR(inode.mode):
        raise FsError(errno.EISDIR)
    if not stat.S_ISREG(inode.mode):
        raise FsError(errno.ENODEV)
    if offset + length > MAX_FILE_SIZE:
        raise FsError(errno.EFBIG)
    x.check_not_busy(ino)
    size = inode.size
    args: dict = {"time": x.now, "kill_suid": caller.uid != 0 and bool(inode.mode & (stat.S_ISUID | stat.S_ISGID))}
    if label is not None:
        args["label"] = label
    if kind in (OP_COLLAPSE, OP_INSERT):
        if offset % BLOCK_SIZE or length % BLOCK_SIZE:
            raise FsError(errno.EINVAL)
        if kind == OP_COLLAPSE:
            if offset + length >= size:
                raise FsError(errno.EINVAL)
            args.update(offset=offset, length=length, new_size=size - length)
        else:
            if length > MAX_FILE_SIZE - size:
                raise FsError(errno.EFBIG)
            if offset >= size:
                raise FsError(errno.EINVAL)
            args.update(offset=offset, length=length, new_size=size + length)
            moves.split_at(t, ino, offset)
        lo, hi = offset, None
    else:
        end = min(offset + length, size) if keep_size else offset + length
        args.update(start=offset, end=max(offset, end), new_size=size if keep_size else max(size, end))
        lo, hi = offset, max(offset, end)
    op = Op(kind, {"ino": ino, **args})
    limit = logged_ops.STEP_EXTENTS
    if moves.count_extents(t, ino, lo, hi, limit) < limit:
        # Small enough for one transaction: every step now, no logged op.
        while not STEPS[kind](t, op, MOUNT_ENV):
            pass
        return
    logged_ops.start(t, kind, ino, args)
    x.begin_long_op(kind, ino)
