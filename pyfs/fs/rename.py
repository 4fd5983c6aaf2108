"""rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, in the caller's transaction.

Promises: every case ext4 distinguishes gets its errno (ENOENT, EEXIST,
EISDIR, ENOTDIR, ENOTEMPTY, EINVAL for a directory moved into its own
subtree, EMLINK); directory link counts, parent pointers and the ctimes and
mtimes of both parents, the moved inode and a replaced inode change in the
same transaction as the dirents.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from ..engine.transaction import Transaction
from ..format.records import ROOT_INO, Dirent, Inode
from . import dirents, inodes
from .errors import FsError
from .limits import LINK_MAX
from .names import check_name
from .txn import Txn

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _is_ancestor(t: Transaction, ancestor: int, ino: int) -> bool:
    """True if directory `ancestor` is `ino` or one of its ancestors."""
    seen = 0
    while True:
        if ino == ancestor:
            return True
        if ino == ROOT_INO or seen > 1_000_000:
            return False
        ino = inodes.get(t, ino).parent or ROOT_INO
        seen += 1


def rename(x: Txn, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
    """rename(2)/renameat2(2) in the caller's transaction; a replaced file left without names goes to `x.unlinked`."""
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
        raise FsError(errno.EINVAL)
    check_name(old_name)
    check_name(new_name)
    if old_name in (b".", b".."):
        raise FsError(errno.EBUSY if old_name == b"." else errno.ENOTEMPTY)
    if new_name in (b".", b".."):
        raise FsError(errno.EBUSY)
    t, now = x.t, x.now
    op = inodes.get_dir(t, old_parent)
    np = op if new_parent == old_parent else inodes.get_dir(t, new_parent)
    src = dirents.find(t, old_parent, old_name)
    if src is None:
        raise FsError(errno.ENOENT)
    dst = dirents.find(t, new_parent, new_name)
    src_inode = inodes.get(t, src.ino)
    src_dir = stat.S_ISDIR(src_inode.mode)
    if flags & RENAME_EXCHANGE:
        if dst is None:
            raise FsError(errno.ENOENT)
        _exchange(t, old_parent, old_name, new_parent, new_name, src, dst, now)
        return
    if dst is not None and flags & RENAME_NOREPLACE:
        raise FsError(errno.EEXIST)
    if dst is not None and dst.ino == src.ino:
        return  # two names of one file: POSIX says do nothing
    if src_dir and _is_ancestor(t, src.ino, new_parent):
        raise FsError(errno.EINVAL)
    # Replacing a directory on the way from the root to the source: Linux
    # refuses this before it compares the two types.
    if dst is not None and old_parent != new_parent and _is_ancestor(t, dst.ino, old_parent):
        raise FsError(errno.ENOTEMPTY)
    if np.nlink == 0:
        raise FsError(errno.ENOENT)
    dst_inode: Inode | None = None
    if dst is not None:
        dst_inode = inodes.get(t, dst.ino)
        dst_dir = stat.S_ISDIR(dst_inode.mode)
        if src_dir and not dst_dir:
            raise FsError(errno.ENOTDIR)
        if not src_dir and dst_dir:
            raise FsError(errno.EISDIR)
        if dst_dir and dirents.has_entries(t, dst.ino):
            raise FsError(errno.ENOTEMPTY)
    # parents' link counts: a moved directory leaves one parent for another;
    # a replaced directory leaves the new parent.
    op_links = op.nlink
    np_links = np.nlink
    if src_dir and old_parent != new_parent:
        op_links -= 1
        np_links += 1
    if dst_inode is not None and stat.S_ISDIR(dst_inode.mode):
        np_links -= 1
    if src_dir and old_parent != new_parent and np_links > LINK_MAX:
        raise FsError(errno.EMLINK)
    dirents.remove(t, old_parent, old_name)
    if dst_inode is not None:
        if inodes.drop_link(t, dst.ino, dst_inode, now).nlink == 0:
            x.unlinked_last_name(dst.ino)
    dirents.add(t, new_parent, new_name, src.ino, src_inode.mode)
    moved = replace(src_inode, ctime_ns=now)
    if src_dir:
        moved = replace(moved, parent=new_parent)
    inodes.put(t, src.ino, moved)
    if old_parent == new_parent:
        inodes.put(t, old_parent, replace(op, nlink=np_links, mtime_ns=now, ctime_ns=now))
    else:
        inodes.put(t, old_parent, replace(op, nlink=op_links, mtime_ns=now, ctime_ns=now))
        inodes.put(t, new_parent, replace(np, nlink=np_links, mtime_ns=now, ctime_ns=now))


def _exchange(t: Transaction, old_parent: int, old_name: bytes, new_parent: int,
              new_name: bytes, src: Dirent, dst: Dirent, now: int) -> None:
    a = inodes.get(t, src.ino)
    b = inodes.get(t, dst.ino)
    a_dir, b_dir = stat.S_ISDIR(a.mode), stat.S_ISDIR(b.mode)
    if old_parent != new_parent:
        if a_dir and _is_ancestor(t, src.ino, new_parent):
            raise FsError(errno.EINVAL)
        if b_dir and _is_ancestor(t, dst.ino, old_parent):
            raise FsError(errno.EINVAL)
    dirents.add(t, old_parent, old_name, dst.ino, b.mode)
    dirents.add(t, new_parent, new_name, src.ino, a.mode)
    inodes.put(t, src.ino, replace(a, ctime_ns=now, parent=new_parent if a_dir else a.parent))
    inodes.put(t, dst.ino, replace(b, ctime_ns=now, parent=old_parent if b_dir else b.parent))
    op = inodes.get(t, old_parent)
    if old_parent == new_parent:
        inodes.put(t, old_parent, replace(op, mtime_ns=now, ctime_ns=now))
        return
    np = inodes.get(t, new_parent)
    shift = int(a_dir) - int(b_dir)  # directories moving from old to new parent
    inodes.put(t, old_parent, replace(op, nlink=op.nlink - shift, mtime_ns=now, ctime_ns=now))
    inodes.put(t, new_parent, replace(np, nlink=np.nlink + shift, mtime_ns=now, ctime_ns=now))
