"""Extended attributes, stored as keys `(ino, name, chunk)` in the xattrs btree.

Promises: the user., trusted. and security. namespaces (others, POSIX ACLs
included, get EOPNOTSUPP as on ext4 without ACL support); values up to 64 KiB (XATTR_SIZE_MAX) and names up to 255 bytes
(XATTR_NAME_MAX), split into chunks small enough for a btree entry;
XATTR_CREATE on an existing name is EEXIST, XATTR_REPLACE on a missing one
ENODATA; get/remove of a missing name is ENODATA.  A set replaces every
chunk of the old value in the same transaction.  `setxattr` and
`removexattr` are the operations: the key change plus the inode's ctime,
in the caller's transaction.
"""

from __future__ import annotations

import errno

from dataclasses import replace

from ..engine.engine import Engine
from ..engine.transaction import Transaction
from ..format.records import Tree
from . import inodes
from .errors import FsError
from .txn import Txn

XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536


def _chunk_size(engine: Engine) -> int:
    return max(256, min(2048, engine.max_value_bytes - XATTR_NAME_MAX - 32))


NAMESPACES = (b"user.", b"trusted.", b"security.")


def _check_name_length(name: bytes) -> None:
    if not name or len(name) > XATTR_NAME_MAX:
        raise FsError(errno.ERANGE)  # what Linux's setxattr/getxattr give for both


def _check_name(name: bytes) -> None:
    _check_name_length(name)
    # POSIX ACLs (system.posix_acl_*) are not supported: refusing them makes
    # cp/tar fall back to chmod instead of storing an ACL nobody enforces.
    if not name.startswith(NAMESPACES):
        raise FsError(errno.EOPNOTSUPP)


def _chunks(t: Transaction, ino: int, name: bytes) -> list[tuple[int, bytes]]:
    return [(chunk, raw) for (_, _, chunk), raw in t.scan(Tree.XATTRS, prefix=(ino, name))]


def get(t: Transaction, ino: int, name: bytes) -> bytes:
    _check_name(name)
    chunks = _chunks(t, ino, name)
    if not chunks:
        raise FsError(errno.ENODATA)
    return b"".join(raw for _, raw in chunks)


def names(t: Transaction, ino: int) -> list[bytes]:
    out = []
    for (_, name, chunk), _ in t.scan(Tree.XATTRS, prefix=(ino,)):
        if chunk == 0:
            out.append(name)
    return out


def put(t: Transaction, engine: Engine, ino: int, name: bytes, value: bytes, flags: int) -> None:
    _check_name_length(name)
    if len(value) > XATTR_SIZE_MAX:
        raise FsError(errno.E2BIG)  # Linux checks the size before it looks at the namespace
    _check_name(name)
    old = _chunks(t, ino, name)
    if flags & XATTR_CREATE and old:
        raise FsError(errno.EEXIST)
    if flags & XATTR_REPLACE and not old:
        raise FsError(errno.ENODATA)
    for chunk, _ in old:
        t.delete(Tree.XATTRS, (ino, name, chunk))
    size = _chunk_size(engine)
    pieces = [value[i : i + size] for i in range(0, len(value), size)] or [b""]
    for chunk, piece in enumerate(pieces):
        t.put(Tree.XATTRS, (ino, name, chunk), piece)


def remove(t: Transaction, ino: int, name: bytes) -> None:
    _check_name(name)
    old = _chunks(t, ino, name)
    if not old:
        raise FsError(errno.ENODATA)
    for chunk, _ in old:
        t.delete(Tree.XATTRS, (ino, name, chunk))


def setxattr(x: Txn, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
    inode = inodes.get(x.t, ino)
    put(x.t, x.engine, ino, name, value, flags)
    inodes.put(x.t, ino, replace(inode, ctime_ns=x.now))


def removexattr(x: Txn, ino: int, name: bytes) -> None:
    inode = inodes.get(x.t, ino)
    remove(x.t, ino, name)
    inodes.put(x.t, ino, replace(inode, ctime_ns=x.now))
