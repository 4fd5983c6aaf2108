"""Inode keys: reading, writing and numbering inodes, and dropping a link.

Promises:
- `get` answers ENOENT for a missing inode, `get_dir` ENOTDIR for one that is
  not a directory; both read through the caller's transaction, so they see
  what earlier operations of the same transaction wrote.
- Inode numbers come from the counter key `NEXT_INO_KEY`, advanced in the
  creating transaction, and are never reused (DESIGN.md "Inode numbers").
- `drop_link` writes the orphan key in the same transaction as the link
  count that reaches zero (DESIGN.md "Orphans"), so a crash can never leave
  an inode without names and without an orphan key.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from ..engine.transaction import Transaction
from ..format.records import NEXT_INO_KEY, ORPHAN_PREFIX, ROOT_INO, Inode, Tree, pack, unpack
from .attr import Ctx
from .errors import FsError


def find(t: Transaction, ino: int) -> Inode | None:
    raw = t.get(Tree.INODES, (ino,))
    return Inode.decode(raw) if raw is not None else None


def get(t: Transaction, ino: int) -> Inode:
    inode = find(t, ino)
    if inode is None:
        raise FsError(errno.ENOENT)
    return inode


def get_dir(t: Transaction, ino: int) -> Inode:
    inode = get(t, ino)
    if not stat.S_ISDIR(inode.mode):
        raise FsError(errno.ENOTDIR)
    return inode


def put(t: Transaction, ino: int, inode: Inode) -> None:
    t.put(Tree.INODES, (ino,), inode.encode())


def parent_of(ino: int, inode: Inode) -> int:
    """The directory `..` of directory `ino` names (the root is its own parent)."""
    return inode.parent or ROOT_INO


def new_ino(t: Transaction) -> int:
    raw = t.get(Tree.MISC, NEXT_INO_KEY)
    ino = int(unpack(raw)) if raw is not None else ROOT_INO + 1
    t.put(Tree.MISC, NEXT_INO_KEY, pack(ino + 1))
    return ino


def new_inode(parent: Inode, mode: int, caller: Ctx, now: int, rdev: int = 0, nlink: int = 1) -> Inode:
    """A fresh inode made by `caller` in directory `parent`: setgid directories pass their group on."""
    gid = caller.gid
    if parent.mode & stat.S_ISGID:
        gid = parent.gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
    return Inode(
        mode=mode, uid=caller.uid, gid=gid, nlink=nlink, size=0,
        atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=rdev, generation=1,
    )


def drop_link(t: Transaction, ino: int, inode: Inode, now: int) -> Inode:
    """One name of `ino` goes away; returns the inode as put (a directory drops to 0 at once)."""
    nlink = 0 if stat.S_ISDIR(inode.mode) else max(0, inode.nlink - 1)
    inode = replace(inode, nlink=nlink, ctime_ns=now)
    put(t, ino, inode)
    if nlink == 0:
        t.put(Tree.MISC, (ORPHAN_PREFIX, ino), b"")
    return inode


def is_orphan(t: Transaction, ino: int) -> bool:
    return t.get(Tree.MISC, (ORPHAN_PREFIX, ino)) is not None


def orphans(t: Transaction) -> list[int]:
    return [ino for (_, ino), _ in t.scan(Tree.MISC, prefix=(ORPHAN_PREFIX,))]


def kill_suid(mode: int) -> int:
    """The mode after a write or chown by someone other than root: setuid goes, and setgid of a group-executable file."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode
