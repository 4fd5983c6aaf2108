"""write(2)'s part: file data into the extent map, and how a big write is cut into transactions.

Promises:
- `write` puts `data` at `offset` of a regular file in the caller's
  transaction: fresh regions (never overwriting live data), the extents it
  covers trimmed, the size grown, mtime and ctime set, and for a caller
  other than root the setuid bit (and setgid of a group-executable file)
  dropped, all together (DESIGN.md invariants 1 and 3).
- `pieces` cuts a write so that no piece replaces more than `STEP_EXTENTS`
  extents: a write is one transaction unless it covers more extents than
  one journal entry can drop (a file grown by many tiny appends); then it
  commits piece by piece in file order, so a crash leaves every byte old or
  new, as a torn write on ext4 does, and never a hole.
- Errors: EINVAL for a non-regular file.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from ..engine.transaction import Transaction
from ..format.records import Inode
from . import extents, inodes, logged_ops
from .errors import FsError
from .txn import Txn

SUID_BITS = stat.S_ISUID | stat.S_ISGID


def write(x: Txn, ino: int, offset: int, data: bytes) -> Inode:
    """Write `data` at `offset` of `ino`; returns the inode as put."""
    t = x.t
    inode = inodes.get(t, ino)
    if not stat.S_ISREG(inode.mode):
        raise FsError(errno.EINVAL)
    x.check_not_busy(ino)
    change = extents.write(t, x.engine, ino, inode.size, offset, data)
    mode = inode.mode
    if x.caller.uid != 0 and mode & SUID_BITS:
        mode = inodes.kill_suid(mode)
    inode = replace(inode, size=max(inode.size, offset + len(data)), mtime_ns=x.now, ctime_ns=x.now, mode=mode,
                    data_bytes=inode.data_bytes + change.data_bytes)
    inodes.put(t, ino, inode)
    return inode


def pieces(t: Transaction, ino: int, start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut so that no piece replaces more than STEP_EXTENTS extents."""
    step = logged_ops.STEP_EXTENTS
    offsets = [off for off, _ in extents.overlapping(t, ino, start, end)]
    bounds = [start, *offsets[step::step], end]
    return list(zip(bounds, bounds[1:]))
