"""Btree identities and the value records stored under their keys.

Every value is the complete new state of its key, msgpack-encoded as a short
list (never a delta), so replaying a key twice gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import msgpack

from .errors import MALFORMED, FormatError


class Tree(IntEnum):
    """The btrees of an image.  LOGGED_OPS is journal-only: never in a node."""

    INODES = 0
    DIRENTS = 1
    EXTENTS = 2
    XATTRS = 3
    ALLOC = 4
    MISC = 5
    LOGGED_OPS = 6


NODE_TREES = (Tree.INODES, Tree.DIRENTS, Tree.EXTENTS, Tree.XATTRS, Tree.ALLOC, Tree.MISC)


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(raw: bytes) -> object:
    return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=False)


class BucketKind(IntEnum):
    FREE = 0
    DATA = 1
    BTREE = 2


@dataclass(frozen=True)
class AllocInfo:
    """Value of alloc key `(bucket,)`: live bytes, what the bucket holds, reuse generation."""

    live_bytes: int
    kind: BucketKind
    gen: int

    def encode(self) -> bytes:
        return pack([self.live_bytes, int(self.kind), self.gen])

    @classmethod
    def decode(cls, raw: bytes) -> "AllocInfo":
        try:
            live, kind, gen = unpack(raw)
            return cls(int(live), BucketKind(kind), int(gen))
        except (*MALFORMED, msgpack.UnpackException) as exc:
            raise FormatError(f"malformed alloc value: {exc}") from None


@dataclass(frozen=True)
class Extent:
    """Value of extent key `(ino, file_offset)`: `length` bytes of file data.

    Either inline (`inline` holds the bytes) or a piece of a checksummed
    region: the region starts at `region_addr`, is `region_len` bytes long
    with checksum `region_csum`, and this extent covers
    `region[offset : offset + length]`.  A region never crosses a bucket.
    """

    length: int
    region_addr: int = 0
    region_len: int = 0
    region_csum: int = 0
    offset: int = 0
    inline: bytes | None = None

    @property
    def addr(self) -> int:
        """Device address of the first byte this extent covers."""
        return self.region_addr + self.offset

    def encode(self) -> bytes:
        if self.inline is not None:
            return pack([self.length, self.inline])
        return pack([self.length, self.region_addr, self.region_len, self.region_csum, self.offset])

    @classmethod
    def decode(cls, raw: bytes) -> "Extent":
        try:
            fields = unpack(raw)
            if len(fields) == 2:
                length, inline = fields
                if not isinstance(inline, bytes) or len(inline) != length:
                    raise ValueError("inline length mismatch")
                return cls(length=int(length), inline=inline)
            length, addr, rlen, rcsum, offset = fields
            ext = cls(int(length), int(addr), int(rlen), int(rcsum), int(offset))
            if ext.length <= 0 or ext.offset < 0 or ext.offset + ext.length > ext.region_len:
                raise ValueError("extent outside its region")
            return ext
        except (*MALFORMED, msgpack.UnpackException) as exc:
            raise FormatError(f"malformed extent value: {exc}") from None


@dataclass(frozen=True)
class LoggedOp:
    """Value of a logged-op key `(op_id,)`: a long operation and its progress."""

    kind: str
    args: dict
    cursor: object = None

    def encode(self) -> bytes:
        return pack([self.kind, self.args, self.cursor])

    @classmethod
    def decode(cls, raw: bytes) -> "LoggedOp":
        try:
            kind, args, cursor = unpack(raw)
            if not isinstance(kind, str) or not isinstance(args, dict):
                raise ValueError("kind must be a str and args a map")
            return cls(kind, args, cursor)
        except (*MALFORMED, msgpack.UnpackException) as exc:
            raise FormatError(f"malformed logged op: {exc}") from None


@dataclass(frozen=True)
class Inode:
    """Value of inode key `(ino,)`."""

    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    generation: int = 0
    flags: int = 0
    data_bytes: int = 0  # bytes of file data the inode's extents hold (for st_blocks)
    parent: int = 0      # directories: the parent directory's ino (root: itself)

    def encode(self) -> bytes:
        return pack(
            [
                self.mode, self.uid, self.gid, self.nlink, self.size, self.atime_ns, self.mtime_ns,
                self.ctime_ns, self.rdev, self.generation, self.flags, self.data_bytes, self.parent,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> "Inode":
        try:
            fields = unpack(raw)
            if len(fields) != 13 or not all(isinstance(f, int) for f in fields):
                raise ValueError("inode must hold 13 integers")
            return cls(*fields)
        except (*MALFORMED, msgpack.UnpackException) as exc:
            raise FormatError(f"malformed inode value: {exc}") from None


@dataclass(frozen=True)
class Dirent:
    """Value of dirent key `(dir_ino, name_hash, name)`: the child and its file type (S_IFMT bits)."""

    ino: int
    kind: int

    def encode(self) -> bytes:
        return pack([self.ino, self.kind])

    @classmethod
    def decode(cls, raw: bytes) -> "Dirent":
        try:
            ino, kind = unpack(raw)
            if not isinstance(ino, int) or not isinstance(kind, int):
                raise ValueError("dirent must hold two integers")
            return cls(ino, kind)
        except (*MALFORMED, msgpack.UnpackException) as exc:
            raise FormatError(f"malformed dirent value: {exc}") from None


ROOT_INO = 1
NEXT_INO_KEY = ("next_ino",)
ORPHAN_PREFIX = "orphan"  # misc key ("orphan", ino): unlinked inode still in use
