"""Directory entry keys `(dir, name hash, name)`: finding, adding and removing names.

Promises:
- Every lookup goes through the caller's transaction (read-your-writes), so
  an operation sees the names earlier operations of its transaction made.
- `named` answers ENOTDIR for a parent that is not a directory and ENOENT
  for a missing name, in that order, as path lookup does.
- An entry records its child's file type (S_IFMT bits) beside the inode
  number, so readdir never needs the child inode for the type.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator

from ..engine.transaction import Transaction
from ..format.records import Dirent, Inode, Tree
from . import inodes
from .errors import FsError
from .names import name_hash


def key(dir_ino: int, name: bytes) -> tuple:
    return (dir_ino, name_hash(name), name)


def find(t: Transaction, dir_ino: int, name: bytes) -> Dirent | None:
    raw = t.get(Tree.DIRENTS, key(dir_ino, name))
    return Dirent.decode(raw) if raw is not None else None


def resolve(t: Transaction, dir_ino: int, name: bytes) -> int:
    """The inode `name` names in directory `dir_ino`, '.' and '..' included (ENOENT if none)."""
    pinode = inodes.get_dir(t, dir_ino)
    if name == b".":
        return dir_ino
    if name == b"..":
        return inodes.parent_of(dir_ino, pinode)
    entry = find(t, dir_ino, name)
    if entry is None:
        raise FsError(errno.ENOENT)
    return entry.ino


def named(t: Transaction, parent: int, name: bytes) -> tuple[Inode, Dirent, Inode]:
    """The directory `parent`, its entry `name` and the inode it names (ENOENT if absent)."""
    pinode = inodes.get_dir(t, parent)
    entry = find(t, parent, name)
    if entry is None:
        raise FsError(errno.ENOENT)
    return pinode, entry, inodes.get(t, entry.ino)


def add(t: Transaction, dir_ino: int, name: bytes, ino: int, mode: int) -> None:
    """Point `dir_ino/name` at `ino` (a new name, or a new target for an existing one)."""
    t.put(Tree.DIRENTS, key(dir_ino, name), Dirent(ino, stat.S_IFMT(mode)).encode())


def remove(t: Transaction, dir_ino: int, name: bytes) -> None:
    t.delete(Tree.DIRENTS, key(dir_ino, name))


def has_entries(t: Transaction, dir_ino: int) -> bool:
    return next(iter(t.scan(Tree.DIRENTS, prefix=(dir_ino,))), None) is not None


def entries(t: Transaction, dir_ino: int, after_cookie: int = 0) -> Iterator[tuple[int, bytes, Dirent]]:
    """(cookie, name, entry) of `dir_ino` with cookies above `after_cookie`, in cookie order."""
    for (_, cookie, name), raw in t.scan(Tree.DIRENTS, (dir_ino, after_cookie + 1), (dir_ino + 1, 0)):
        yield cookie, name, Dirent.decode(raw)
