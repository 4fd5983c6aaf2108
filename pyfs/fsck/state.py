"""fsck's model of a filesystem: every key of every btree, decoded.

`State` holds the keys as mount would see them after replay, as plain dicts
keyed by decoded key tuples, so each check is a loop over a dict and a
100,000-file image is read once.  Entries whose key or value does not
decode (or has the wrong shape for its tree) are kept apart in `bad`.
`apply` takes the key updates of a committed repair transaction, so the
model follows the image while fsck repairs it.  It keeps no invariant of
its own: it is what the checks read (the keys after replay, invariant 2).
"""

from __future__ import annotations

import struct
from collections import defaultdict

from ..format.errors import FormatError
from ..format.keys import decode_key
from ..format.records import (
    NEXT_INO_KEY,
    ORPHAN_PREFIX,
    AllocInfo,
    Dirent,
    Extent,
    Inode,
    LoggedOp,
    Tree,
    unpack,
)
from ..format.superblock import Superblock
from ..fs.logged_ops import OP_COLLAPSE, OP_DELETE, OP_INSERT, OP_PUNCH, OP_RMTREE, OP_TRUNCATE, OP_ZERO

TREE_NAMES = {int(t): t.name.lower() for t in Tree}


class BadEntry(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class State:
    def __init__(self, sb: Superblock) -> None:
        self.sb = sb
        self.inodes: dict[int, Inode] = {}
        self.dirents: dict[tuple[int, int, bytes], Dirent] = {}
        self.extents: dict[tuple[int, int], Extent] = {}
        self.xattrs: dict[tuple[int, bytes, int], int] = {}  # value length
        self.alloc: dict[int, AllocInfo] = {}
        self.next_ino: int | None = None
        self.orphans: set[int] = set()
        self.logged_ops: dict[tuple, LoggedOp] = {}
        # (tree, raw key) -> (kind, reason): entries fsck cannot use
        self.bad: dict[tuple[int, bytes], tuple[str, str]] = {}
        self.version = 0  # grows with every change, so views of the state can be cached

    # -- loading and following repairs ---------------------------------------------

    def load(self, raw: dict[int, dict[bytes, bytes]]) -> None:
        for tree, entries in raw.items():
            for key, value in entries.items():
                self._put(tree, key, value)

    def apply(self, tree: int, key: bytes, value: bytes | None) -> None:
        self.version += 1
        self._drop(tree, key)
        if value is not None:
            self._put(tree, key, value)

    def _put(self, tree: int, key: bytes, value: bytes) -> None:
        try:
            self._decode(tree, key, value)
        except BadEntry as exc:
            self.bad[(tree, key)] = (exc.kind, exc.reason)

    def _drop(self, tree: int, key: bytes) -> None:
        if self.bad.pop((tree, key), None) is not None:
            return
        try:
            k = decode_key(key)
        except FormatError:
            return
        if tree == Tree.INODES:
            self.inodes.pop(k[0], None)
        elif tree == Tree.DIRENTS:
            self.dirents.pop(k, None)  # type: ignore[arg-type]
        elif tree == Tree.EXTENTS:
            self.extents.pop(k, None)  # type: ignore[arg-type]
        elif tree == Tree.XATTRS:
            self.xattrs.pop(k, None)  # type: ignore[arg-type]
        elif tree == Tree.ALLOC:
            self.alloc.pop(k[0], None)
        elif tree == Tree.MISC:
            if k == NEXT_INO_KEY:
                self.next_ino = None
            elif len(k) == 2 and k[0] == ORPHAN_PREFIX:
                self.orphans.discard(k[1])
        elif tree == Tree.LOGGED_OPS:
            self.logged_ops.pop(k, None)

    def _decode(self, tree: int, key: bytes, value: bytes) -> None:
        k = _fast_key(key)
        if k is None:
            try:
                k = decode_key(key)
            except FormatError as exc:
                raise BadEntry("key", f"undecodable key: {exc}") from None
        try:
            if tree == Tree.INODES:
                if len(k) != 1 or not _is_int(k[0]) or k[0] < 1:
                    raise BadEntry("key", f"inode key {k!r} is not an inode number")
                self.inodes[k[0]] = Inode.decode(value)
            elif tree == Tree.DIRENTS:
                if len(k) != 3 or not (_is_int(k[0]) and _is_int(k[1]) and isinstance(k[2], bytes)):
                    raise BadEntry("key", f"dirent key {k!r} is not (directory, hash, name)")
                self.dirents[k] = Dirent.decode(value)  # type: ignore[index]
            elif tree == Tree.EXTENTS:
                if len(k) != 2 or not (_is_int(k[0]) and _is_int(k[1])) or k[1] < 0:
                    raise BadEntry("key", f"extent key {k!r} is not (inode, offset)")
                self.extents[k] = Extent.decode(value)  # type: ignore[index]
            elif tree == Tree.XATTRS:
                if len(k) != 3 or not (_is_int(k[0]) and isinstance(k[1], bytes) and _is_int(k[2])) or k[2] < 0:
                    raise BadEntry("key", f"xattr key {k!r} is not (inode, name, chunk)")
                self.xattrs[k] = len(value)  # type: ignore[index]
            elif tree == Tree.ALLOC:
                if len(k) != 1 or not _is_int(k[0]) or not 0 <= k[0] < self.sb.nbuckets:
                    raise BadEntry("alloc-key", f"alloc key {k!r} is not a bucket number")
                self.alloc[k[0]] = AllocInfo.decode(value)
            elif tree == Tree.MISC:
                self._decode_misc(k, value)
            elif tree == Tree.LOGGED_OPS:
                self.logged_ops[k] = _decode_op(k, value)
            else:
                raise BadEntry("key", f"entry of unknown btree {tree}")
        except FormatError as exc:
            raise BadEntry("value", f"key {k!r}: {exc}") from None

    def _decode_misc(self, k: tuple, value: bytes) -> None:
        if k == NEXT_INO_KEY:
            try:
                counter = unpack(value)
            except Exception:  # noqa: BLE001 - any msgpack failure means a bad value
                counter = None
            if not _is_int(counter) or counter < 1:
                raise BadEntry("value", f"inode counter value {value!r} is not a positive integer")
            self.next_ino = counter
        elif len(k) == 2 and k[0] == ORPHAN_PREFIX and _is_int(k[1]):
            self.orphans.add(k[1])
        else:
            raise BadEntry("misc-key", f"unknown misc key {k!r}")

    # -- views used by several checks ---------------------------------------------------

    def extents_by_inode(self) -> dict[int, list[tuple[int, Extent]]]:
        out: dict[int, list[tuple[int, Extent]]] = defaultdict(list)
        for (ino, off), ext in self.extents.items():
            out[ino].append((off, ext))
        for items in out.values():
            items.sort(key=lambda item: item[0])
        return out

    def pending_ops(self) -> tuple[set[int], set[int], set[int]]:
        """Inodes with an unfinished delete; inodes whose extents an unfinished
        truncate or range operation is moving (their extent map may reach past
        EOF until it ends); tops of unfinished tree removals."""
        deletes: set[int] = set()
        resizing: set[int] = set()
        rmtrees: set[int] = set()
        for op in self.logged_ops.values():
            ino = op.args["ino"]
            if op.kind == OP_DELETE:
                deletes.add(ino)
            elif op.kind == OP_RMTREE:
                rmtrees.add(ino)
                file = op.cursor.get("file") if isinstance(op.cursor, dict) else None
                if _is_int(file):
                    deletes.add(file)
            else:
                resizing.add(ino)
        return deletes, resizing, rmtrees


_INT = struct.Struct(">Q")
_BIAS = 1 << 63


def _fast_key(key: bytes) -> tuple | None:
    """`decode_key` for the shapes of the big trees ((int,), (int, int), (int, int, bytes without NUL)),
    or None to let `decode_key` handle (and judge) the rest."""
    n = len(key)
    if n < 9 or key[0] != 0x10:
        return None
    a = _INT.unpack_from(key, 1)[0] - _BIAS
    if n == 9:
        return (a,)
    if n < 18 or key[9] != 0x10:
        return None
    b = _INT.unpack_from(key, 10)[0] - _BIAS
    if n == 18:
        return (a, b)
    if key[18] != 0x30 or not key.endswith(b"\x00\x00") or key.find(b"\x00", 19) != n - 2:
        return None
    return (a, b, key[19:-2])


# The integer arguments each kind of logged op needs (pyfs/fs/logged_ops.py).
_RANGE_FIELDS = ("new_size", "time")
_OP_FIELDS: dict[str, tuple[str, ...]] = {
    OP_TRUNCATE: ("size",),
    OP_DELETE: (),
    OP_PUNCH: ("start", "end", *_RANGE_FIELDS),
    OP_ZERO: ("start", "end", *_RANGE_FIELDS),
    OP_COLLAPSE: ("offset", "length", *_RANGE_FIELDS),
    OP_INSERT: ("offset", "length", *_RANGE_FIELDS),
    OP_RMTREE: (),
}


def _decode_op(k: tuple, value: bytes) -> LoggedOp:
    try:
        op = LoggedOp.decode(value)
    except FormatError as exc:
        raise BadEntry("logged-op", f"logged op {k!r}: {exc}") from None
    if op.kind not in _OP_FIELDS:
        raise BadEntry("logged-op", f"logged op {k!r} of unknown kind {op.kind!r}")
    ino = op.args.get("ino")
    if not _is_int(ino) or ino < 1:
        raise BadEntry("logged-op", f"logged op {k!r} names no inode")
    for name in _OP_FIELDS[op.kind]:
        if not _is_int(op.args.get(name)) or op.args[name] < 0:
            raise BadEntry("logged-op", f"{op.kind} op {k!r} has no valid {name}")
    if k != (op.kind, ino):
        raise BadEntry("logged-op", f"logged op key {k!r} does not match its value ({op.kind}, {ino})")
    return op
