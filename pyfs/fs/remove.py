"""Removing names: unlink and rmdir.

Promises (DESIGN.md invariant 1 and "Orphans"): the entry, the inode's link
count (with its orphan key when it reaches zero) and the parent's link
count and times change in the caller's transaction; an inode left without
names is named in `Txn.unlinked`, for the caller to delete once nothing
uses it.  Errors as ext4: EISDIR (unlink of a directory), ENOTDIR (rmdir of
a non-directory), ENOTEMPTY (also for '..'), EINVAL (rmdir of '.'), ENOENT.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from . import dirents, inodes
from .errors import FsError
from .names import check_name
from .txn import Txn


def unlink(x: Txn, parent: int, name: bytes) -> None:
    check_name(name)
    t, now = x.t, x.now
    pinode, entry, inode = dirents.named(t, parent, name)
    if stat.S_ISDIR(inode.mode):
        raise FsError(errno.EISDIR)
    dirents.remove(t, parent, name)
    if inodes.drop_link(t, entry.ino, inode, now).nlink == 0:
        x.unlinked_last_name(entry.ino)
    inodes.put(t, parent, replace(pinode, mtime_ns=now, ctime_ns=now))


def rmdir(x: Txn, parent: int, name: bytes) -> None:
    check_name(name)
    if name == b".":
        raise FsError(errno.EINVAL)
    if name == b"..":
        raise FsError(errno.ENOTEMPTY)
    t, now = x.t, x.now
    pinode, entry, inode = dirents.named(t, parent, name)
    if not stat.S_ISDIR(inode.mode):
        raise FsError(errno.ENOTDIR)
    if dirents.has_entries(t, entry.ino):
        raise FsError(errno.ENOTEMPTY)
    dirents.remove(t, parent, name)
    inodes.drop_link(t, entry.ino, inode, now)
    x.unlinked_last_name(entry.ino)
    inodes.put(t, parent, replace(pinode, nlink=max(2, pinode.nlink - 1), mtime_ns=now, ctime_ns=now))
