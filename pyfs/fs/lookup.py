"""lookup(2)'s part: the inode a name in a directory stands for, '.' and '..' included.

Promise: reads through the caller's transaction, so a name an earlier
operation of the same transaction created (or removed) is found (or not).
Errors: ENAMETOOLONG / EINVAL for a bad name, ENOTDIR for a parent that is
not a directory, ENOENT for a missing name.
"""

from __future__ import annotations

from ..format.records import Inode
from . import dirents, inodes
from .names import check_name
from .txn import Txn


def lookup(x: Txn, parent: int, name: bytes) -> tuple[int, Inode]:
    check_name(name)
    ino = dirents.resolve(x.t, parent, name)
    return ino, inodes.get(x.t, ino)
