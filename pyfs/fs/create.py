"""Making names: mknod, mkdir, symlink, create (a regular file) and link.

Promises (DESIGN.md invariant 1): each call changes, in the caller's
transaction only, the new inode (numbered from the counter, never reused),
its directory entry, and the parent's link count and times; nothing else.
Errors are those ext4 gives: EEXIST for a taken name (and for '.' or '..'),
ENOENT in a removed directory, EMLINK past the link limit, EPERM for a
hard link to a directory or mknod of one, EINVAL for an unknown file type,
ENAMETOOLONG for a long name or symlink target.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from ..format.records import Inode
from . import dirents, extents, inodes
from .errors import FsError
from .limits import LINK_MAX, SYMLINK_MAX
from .names import check_new_name
from .txn import Txn


def make_node(x: Txn, parent: int, name: bytes, mode: int, rdev: int = 0,
              target: bytes | None = None) -> tuple[int, Inode]:
    """A new inode of `mode` named `parent/name`; a symlink's `target` is its data."""
    check_new_name(name)
    t, now = x.t, x.now
    pinode = inodes.get_dir(t, parent)
    if pinode.nlink == 0:
        raise FsError(errno.ENOENT)
    if dirents.find(t, parent, name) is not None:
        raise FsError(errno.EEXIST)
    is_dir = stat.S_ISDIR(mode)
    if is_dir and pinode.nlink >= LINK_MAX:
        raise FsError(errno.EMLINK)
    ino = inodes.new_ino(t)
    inode = inodes.new_inode(pinode, mode, x.caller, now, rdev, nlink=2 if is_dir else 1)
    if is_dir:
        inode = replace(inode, parent=parent)
    if target is not None:
        change = extents.write(t, x.engine, ino, 0, 0, target)
        inode = replace(inode, size=len(target), data_bytes=change.data_bytes)
    inodes.put(t, ino, inode)
    dirents.add(t, parent, name, ino, mode)
    inodes.put(t, parent, replace(pinode, mtime_ns=now, ctime_ns=now, nlink=pinode.nlink + (1 if is_dir else 0)))
    return ino, inode


def mknod(x: Txn, parent: int, name: bytes, mode: int, rdev: int = 0) -> tuple[int, Inode]:
    kind = stat.S_IFMT(mode) or stat.S_IFREG
    if kind == stat.S_IFDIR:
        raise FsError(errno.EPERM)
    if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
        raise FsError(errno.EINVAL)
    if kind not in (stat.S_IFCHR, stat.S_IFBLK):
        rdev = 0  # only device nodes have a device number (ext4's init_special_inode)
    return make_node(x, parent, name, kind | (mode & 0o7777), rdev)


def mkdir(x: Txn, parent: int, name: bytes, mode: int) -> tuple[int, Inode]:
    return make_node(x, parent, name, stat.S_IFDIR | (mode & 0o7777))


def create(x: Txn, parent: int, name: bytes, mode: int) -> tuple[int, Inode]:
    """A new empty regular file."""
    return make_node(x, parent, name, stat.S_IFREG | (mode & 0o7777))


def symlink(x: Txn, parent: int, name: bytes, target: bytes) -> tuple[int, Inode]:
    if not target or b"\x00" in target:
        raise FsError(errno.ENOENT if not target else errno.EINVAL)
    if len(target) > SYMLINK_MAX:
        raise FsError(errno.ENAMETOOLONG)
    return make_node(x, parent, name, stat.S_IFLNK | 0o777, target=target)


def link(x: Txn, ino: int, new_parent: int, new_name: bytes) -> Inode:
    """A new name `new_parent/new_name` for `ino`; returns the inode with its new link count."""
    check_new_name(new_name)
    t, now = x.t, x.now
    inode = inodes.get(t, ino)
    pinode = inodes.get_dir(t, new_parent)
    if pinode.nlink == 0:
        raise FsError(errno.ENOENT)
    # Linux looks the new name up before it asks whether the inode may be linked.
    if dirents.find(t, new_parent, new_name) is not None:
        raise FsError(errno.EEXIST)
    if stat.S_ISDIR(inode.mode):
        raise FsError(errno.EPERM)
    if inode.nlink >= LINK_MAX:
        raise FsError(errno.EMLINK)
    if inode.nlink == 0:
        raise FsError(errno.ENOENT)
    inode = replace(inode, nlink=inode.nlink + 1, ctime_ns=now)
    inodes.put(t, ino, inode)
    dirents.add(t, new_parent, new_name, ino, inode.mode)
    inodes.put(t, new_parent, replace(pinode, mtime_ns=now, ctime_ns=now))
    return inode
