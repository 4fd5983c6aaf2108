"""The superblock: identity and geometry of an image.

Layout of block 0 (and of the backup copy in the last block of the image):
8-byte magic, u32 format version, u32 body length, a msgpack body, then the
xxh3_64 of everything before it.  The superblock is written once, by mkfs,
and never rewritten, so it can never be torn by a crash; everything that
changes lives in the journal and the btrees.

Geometry (all offsets in bytes, all multiples of the block size):

    [0]                      superblock
    [block 1], [block 2]     checkpoint slots A and B (version 2 only)
    [journal_offset, +journal_size)   circular journal
    [bucket_offset, +nbuckets*bucket_size)   buckets (data or btree nodes)
    [size - block_size]      backup superblock
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from .checksum import checksum
from .errors import MALFORMED, FormatError, NotPyfs, UnsupportedVersion

MAGIC = b"PYFS\x00SB\x01"
FORMAT_VERSION = 2          # what mkfs writes
SUPPORTED_VERSIONS = (1, 2)  # what this pyfs reads
SLOT_BLOCKS = 2             # v2: the checkpoint slots between the superblock and the journal
BLOCK_SIZE = 4096
_HEADER = struct.Struct("<8sII")
_CSUM = struct.Struct("<Q")

DEFAULT_BUCKET_SIZE = 1 << 20
DEFAULT_NODE_SIZE = 16 << 10
MIN_BUCKETS = 8
MIN_JOURNAL_SIZE = 256 << 10
MAX_LABEL_BYTES = 64


@dataclass(frozen=True)
class Superblock:
    """Identity and geometry of one pyfs image."""

    uuid: bytes
    label: str
    size: int
    block_size: int
    bucket_size: int
    node_size: int
    journal_offset: int
    journal_size: int
    bucket_offset: int
    nbuckets: int
    created_ns: int
    version: int = FORMAT_VERSION

    @property
    def has_slots(self) -> bool:
        """Version 2 and later: two checkpoint slots name the newest checkpoint entry."""
        return self.version >= 2

    @property
    def slot_offsets(self) -> tuple[int, int]:
        return self.block_size, 2 * self.block_size

    @property
    def backup_offset(self) -> int:
        return self.size - self.block_size

    def bucket_of(self, addr: int) -> int:
        """The bucket holding byte address `addr` (which must lie in the bucket area)."""
        return (addr - self.bucket_offset) // self.bucket_size

    def bucket_start(self, bucket: int) -> int:
        return self.bucket_offset + bucket * self.bucket_size

    def encode(self) -> bytes:
        body = msgpack.packb(
            {
                "uuid": self.uuid,
                "label": self.label,
                "size": self.size,
                "block_size": self.block_size,
                "bucket_size": self.bucket_size,
                "node_size": self.node_size,
                "journal_offset": self.journal_offset,
                "journal_size": self.journal_size,
                "bucket_offset": self.bucket_offset,
                "nbuckets": self.nbuckets,
                "created_ns": self.created_ns,
            }
        )
        head = _HEADER.pack(MAGIC, self.version, len(body)) + body
        record = head + _CSUM.pack(checksum(head))
        if len(record) > self.block_size:
            raise ValueError("superblock does not fit in one block")
        return record + bytes(self.block_size - len(record))

    @classmethod
    def decode(cls, block: bytes) -> "Superblock":
        """Parse one superblock copy; NotPyfs, UnsupportedVersion or FormatError if unusable."""
        if len(block) < _HEADER.size or block[:8] != MAGIC:
            raise NotPyfs("no pyfs superblock magic")
        _, version, body_len = _HEADER.unpack_from(block)
        end = _HEADER.size + body_len
        if end + _CSUM.size > len(block):
            raise FormatError("superblock length field is out of range")
        (stored,) = _CSUM.unpack_from(block, end)
        if checksum(block[:end]) != stored:
            raise FormatError("superblock checksum mismatch")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersion(
                f"unsupported format version {version} (this pyfs reads versions "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        try:
            body = msgpack.unpackb(block[_HEADER.size : end])
            sb = cls(
                uuid=bytes(body["uuid"]),
                label=str(body["label"]),
                size=int(body["size"]),
                block_size=int(body["block_size"]),
                bucket_size=int(body["bucket_size"]),
                node_size=int(body["node_size"]),
                journal_offset=int(body["journal_offset"]),
                journal_size=int(body["journal_size"]),
                bucket_offset=int(body["bucket_offset"]),
                nbuckets=int(body["nbuckets"]),
                created_ns=int(body["created_ns"]),
                version=version,
            )
        except (*MALFORMED, msgpack.UnpackException) as exc:
            raise FormatError(f"superblock body is malformed: {exc}") from None
        sb.validate()
        return sb

    def validate(self) -> None:
        """Raise FormatError unless the geometry is self-consistent."""
        bs = self.block_size
        problems = []
        if bs != BLOCK_SIZE:
            problems.append(f"block size {bs}")
        if len(self.uuid) != 16:
            problems.append("uuid length")
        if self.node_size < bs or self.node_size % bs or self.bucket_size % self.node_size:
            problems.append(f"node size {self.node_size} / bucket size {self.bucket_size}")
        first_journal_block = 1 + (SLOT_BLOCKS if self.has_slots else 0)
        if self.version not in SUPPORTED_VERSIONS:
            problems.append(f"version {self.version}")
        if self.journal_offset < first_journal_block * bs or self.journal_offset % bs or self.journal_size % bs:
            problems.append("journal placement")
        if self.journal_size < MIN_JOURNAL_SIZE:
            problems.append("journal size")
        if self.bucket_offset < self.journal_offset + self.journal_size or self.bucket_offset % bs:
            problems.append("bucket area placement")
        if self.nbuckets < MIN_BUCKETS:
            problems.append("bucket count")
        if self.bucket_offset + self.nbuckets * self.bucket_size > self.size - bs:
            problems.append("bucket area past the end of the image")
        if problems:
            raise FormatError("superblock geometry is invalid: " + ", ".join(problems))


def default_journal_size(size: int) -> int:
    """The journal size mkfs picks for an image of `size` bytes: 1/32, within 256 KiB..64 MiB."""
    journal = min(64 << 20, max(MIN_JOURNAL_SIZE, size // 32))
    return journal - journal % BLOCK_SIZE


def plan_geometry(
    size: int,
    *,
    uuid: bytes,
    label: str = "",
    bucket_size: int = DEFAULT_BUCKET_SIZE,
    journal_size: int | None = None,
    node_size: int = DEFAULT_NODE_SIZE,
    created_ns: int = 0,
    version: int = FORMAT_VERSION,
) -> Superblock:
    """Lay out an image of `size` bytes; ValueError with a reason if impossible."""
    bs = BLOCK_SIZE
    size -= size % bs
    if len(label.encode("utf-8")) > MAX_LABEL_BYTES:
        raise ValueError(f"label longer than {MAX_LABEL_BYTES} bytes")
    if node_size < bs or node_size % bs:
        raise ValueError(f"node size must be a positive multiple of {bs} bytes")
    if bucket_size < node_size or bucket_size % node_size or bucket_size & (bucket_size - 1):
        raise ValueError(
            f"bucket size must be a power of two and a multiple of the node size ({node_size} bytes)"
        )
    auto_journal = journal_size is None
    if journal_size is None:
        journal_size = default_journal_size(size)
    journal_size -= journal_size % bs
    if journal_size < MIN_JOURNAL_SIZE:
        raise ValueError(f"journal must be at least {MIN_JOURNAL_SIZE >> 10} KiB")
    journal_offset = bs * (1 + (SLOT_BLOCKS if version >= 2 else 0))
    bucket_offset = journal_offset + journal_size
    nbuckets = (size - bs - bucket_offset) // bucket_size if size > bucket_offset + bs else 0
    if nbuckets < MIN_BUCKETS:
        need = bucket_offset + MIN_BUCKETS * bucket_size + bs
        while auto_journal and default_journal_size(need) + journal_offset + MIN_BUCKETS * bucket_size + bs > need:
            need = default_journal_size(need) + journal_offset + MIN_BUCKETS * bucket_size + bs
        raise ValueError(
            f"image too small: {size} bytes cannot hold the superblock, a "
            f"{journal_size >> 10} KiB journal and {MIN_BUCKETS} buckets of "
            f"{bucket_size >> 10} KiB (need at least {need} bytes)"
        )
    sb = Superblock(
        uuid=uuid,
        label=label,
        size=size,
        block_size=bs,
        bucket_size=bucket_size,
        node_size=node_size,
        journal_offset=journal_offset,
        journal_size=journal_size,
        bucket_offset=bucket_offset,
        nbuckets=nbuckets,
        created_ns=created_ns,
        version=version,
    )
    sb.validate()
    return sb
