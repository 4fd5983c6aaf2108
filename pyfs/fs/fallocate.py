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
- An operation whose extents fit one step is one transaction.  A bigger one
  is a logged operation (pyfs/fs/longops.py): `start_range_op` commits its
  start and returns its key; the filesystem runs the steps.
"""

from __future__ import annotations

import errno
import stat
import time
from typing import TYPE_CHECKING

from . import extent_moves as moves
from . import longops
from .attr import BLOCK_SIZE, Ctx
from .errors import FsError

if TYPE_CHECKING:
    from .filesystem import FileSystem


def start_range_op(fs: "FileSystem", kind: str, ino: int, offset: int, length: int, keep_size: bool,
                   ctx: Ctx, label: str | None) -> tuple[str, int] | None:
    """Validate and begin `kind` on `ino`; the key of the logged op still to run, or None if done."""
    if offset < 0 or length <= 0:
        raise FsError(errno.EINVAL)
    from .filesystem import MAX_FILE_SIZE

    now = time.time_ns()
    with fs._txn() as t:
        inode = fs._inode(t, ino)
        fs.check_access(inode, 2, ctx)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.ENODEV)
        if offset + length > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        size = inode.size
        args: dict = {"time": now, "kill_suid": ctx.uid != 0 and bool(inode.mode & (stat.S_ISUID | stat.S_ISGID))}
        if label is not None:
            args["label"] = label
        if kind in (longops.OP_COLLAPSE, longops.OP_INSERT):
            if offset % BLOCK_SIZE or length % BLOCK_SIZE:
                raise FsError(errno.EINVAL)
            if kind == longops.OP_COLLAPSE:
                if offset + length >= size:
                    raise FsError(errno.EINVAL)
                args.update(offset=offset, length=length, new_size=size - length)
                lo, hi = offset, None
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
        op = longops.Op(kind, {"ino": ino, **args})
        if moves.count_extents(t, ino, lo, hi, longops.STEP_EXTENTS) < longops.STEP_EXTENTS:
            # Small enough for one transaction: every step now, no logged op.
            while not longops.STEPS[kind](t, op, longops.MOUNT_ENV):
                pass
            return None
        longops.start(t, kind, ino, args)
    return (kind, ino)
