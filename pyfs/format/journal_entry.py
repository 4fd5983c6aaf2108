"""Journal entries: one committed transaction (or one checkpoint) each, and the checkpoint slots.

Layout: 4-byte magic, u32 body length, u64 seq, u64 checksum, then the msgpack
body `[last_seq, durable_seq, flags, keys, checkpoint]` (format v1) or
`[last_seq, durable_seq, flags, keys, checkpoint, links]` (format v2).  The
checksum covers the first 16 header bytes and the body, seeded per filesystem.

v2 `links` is `[prev, regions, key_lists, nonce]`:
- `prev`: the checksum of the entry with seq - 1 (the one appended before
  it), so an entry joins a chain only after its own predecessor;
- `regions`: `[addr, length, checksum]` of every data region written for
  the entry and flushed with it (replay verifies them unless the entry is
  known durable, DESIGN.md invariant 4);
- `key_lists`: `[addr, length, checksum]` of the data regions holding the
  key list when it does not fit in the entry (`keys` is then empty); their
  concatenation is the msgpack key list;
- `nonce`: 64 random bits in a checkpoint, so that two checkpoints are never
  byte-identical.

- `keys` is the plain key list of the transaction: `[tree, key, value]` with
  encoded key bytes and msgpack value bytes, `None` for a deletion.
- `last_seq` is the seq of the checkpoint replay starts from; `durable_seq`
  the highest seq known durable when the entry was written (an entry with
  `durable_seq >= s` proves that entry `s` once reached the disk).
- A checkpoint entry (flag CHECKPOINT) carries the btree roots and a copy of
  every live journal-only key (logged operations); flag CLEAN marks the
  checkpoint written by a clean close.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import msgpack
import xxhash

from .checksum import checksum
from .errors import MALFORMED, FormatError

MAGIC = b"PJE\x01"
SLOT_MAGIC = b"PJS\x02"
_HEADER = struct.Struct("<4sIQ")
_CSUM = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size + _CSUM.size

FLAG_CHECKPOINT = 1
FLAG_CLEAN = 2

KeyUpdate = tuple[int, bytes, bytes | None]
RegionRef = tuple[int, int, int]  # (device address, length, checksum) of a data region


@dataclass(frozen=True)
class RootPtr:
    """Where a btree's root node lives, and what it must checksum to."""

    addr: int
    csum: int
    level: int
    nkeys: int = 0


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    last_seq: int
    durable_seq: int
    flags: int = 0
    keys: list[KeyUpdate] | None = field(default_factory=list)  # None: not decoded (scan)
    roots: dict[int, RootPtr] | None = None
    logged_ops: list[tuple[bytes, bytes]] | None = None
    prev: int | None = None  # v2: checksum of the entry before; None in a v1 entry
    regions: tuple[RegionRef, ...] = ()
    key_lists: tuple[RegionRef, ...] = ()
    nonce: int = 0
    csum: int = field(default=0, compare=False)  # the entry's own checksum (set by decode and by the writer)

    @property
    def out_of_line(self) -> bool:
        """The key list lives in data regions (`key_lists`), not in the entry."""
        return bool(self.key_lists)

    @property
    def is_checkpoint(self) -> bool:
        return bool(self.flags & FLAG_CHECKPOINT)

    @property
    def is_clean(self) -> bool:
        return bool(self.flags & FLAG_CLEAN)


def encode_entry(entry: JournalEntry, seed: int) -> bytes:
    """The entry's bytes; v2 layout when `entry.prev` is set."""
    checkpoint = None
    if entry.is_checkpoint:
        checkpoint = [
            {tree: [r.addr, r.csum, r.level, r.nkeys] for tree, r in (entry.roots or {}).items()},
            [list(kv) for kv in entry.logged_ops or []],
        ]
    items = [entry.last_seq, entry.durable_seq, entry.flags, [list(k) for k in entry.keys or []], checkpoint]
    if entry.prev is not None:
        items.append([entry.prev, [list(r) for r in entry.regions], [list(r) for r in entry.key_lists], entry.nonce])
    body = msgpack.packb(items, use_bin_type=True)
    head = _HEADER.pack(MAGIC, len(body), entry.seq)
    return head + _CSUM.pack(checksum(head + body, seed)) + body


def entry_checksum(raw: bytes) -> int:
    """The checksum stored in the header of the encoded entry `raw`."""
    return _CSUM.unpack_from(raw, _HEADER.size)[0]


def decode_entry(
    buf: bytes | memoryview, pos: int, seed: int, *, with_keys: bool = True
) -> tuple[JournalEntry, int] | None:
    """The entry at `pos` and its length, or None if no valid entry starts there.

    With `with_keys=False` the key list is checked for shape only and left
    empty (`keys` is None): scanning a region decodes no stale keys.
    Never raises on garbage: a torn or stale entry is simply not an entry.
    """
    if pos + HEADER_SIZE > len(buf) or bytes(buf[pos : pos + 4]) != MAGIC:
        return None
    _, body_len, seq = _HEADER.unpack_from(buf, pos)
    end = pos + HEADER_SIZE + body_len
    if end > len(buf):
        return None
    (stored,) = _CSUM.unpack_from(buf, pos + _HEADER.size)
    view = memoryview(buf)
    digest = xxhash.xxh3_64(seed=seed)
    digest.update(view[pos : pos + _HEADER.size])
    digest.update(view[pos + HEADER_SIZE : end])
    if digest.intdigest() != stored:
        return None
    try:
        return _decode_body(seq, view[pos + HEADER_SIZE : end], with_keys, stored), end - pos
    except (*MALFORMED, msgpack.UnpackException, FormatError):
        return None


def _decode_body(seq: int, body: bytes | memoryview, with_keys: bool, csum: int) -> JournalEntry:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True, max_buffer_size=len(body) + 1)
    unpacker.feed(body)
    items = unpacker.read_array_header()
    if items not in (5, 6):
        raise FormatError("journal entry body is not a 5- or 6-item list")
    last_seq, durable_seq, flags = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
    keys: list[KeyUpdate] | None = None
    if with_keys:
        keys = []
        for tree, key, value in unpacker.unpack():
            if not isinstance(tree, int) or not isinstance(key, bytes):
                raise FormatError("malformed key in journal entry")
            if value is not None and not isinstance(value, bytes):
                raise FormatError("malformed value in journal entry")
            keys.append((tree, key, value))
    else:
        unpacker.skip()
    checkpoint = unpacker.unpack()
    roots = logged = None
    if flags & FLAG_CHECKPOINT:
        raw_roots, raw_logged = checkpoint
        roots = {int(t): RootPtr(*(int(x) for x in r)) for t, r in raw_roots.items()}
        logged = [(bytes(k), bytes(v)) for k, v in raw_logged]
    prev, regions, key_lists, nonce = None, (), (), 0
    if items == 6:
        raw_prev, raw_regions, raw_lists, nonce = unpacker.unpack()
        prev = int(raw_prev)
        regions = tuple(_region(r) for r in raw_regions)
        key_lists = tuple(_region(r) for r in raw_lists)
    return JournalEntry(
        seq=int(seq),
        last_seq=int(last_seq),
        durable_seq=int(durable_seq),
        flags=int(flags),
        keys=keys,
        roots=roots,
        logged_ops=logged,
        prev=prev,
        regions=regions,
        key_lists=key_lists,
        nonce=int(nonce),
        csum=csum,
    )


def _region(raw: list) -> RegionRef:
    addr, length, csum = raw
    if not all(isinstance(x, int) and x >= 0 for x in (addr, length, csum)):
        raise FormatError("malformed region in journal entry")
    return int(addr), int(length), int(csum)


def encode_key_list(keys: list[KeyUpdate]) -> bytes:
    """The msgpack key list an out-of-line entry keeps in data regions."""
    return msgpack.packb([list(k) for k in keys], use_bin_type=True)


def decode_key_list(raw: bytes) -> list[KeyUpdate]:
    """Inverse of `encode_key_list`; FormatError on garbage."""
    try:
        items = msgpack.unpackb(raw, raw=False, use_list=True)
        keys = []
        for tree, key, value in items:
            if not isinstance(tree, int) or not isinstance(key, bytes) or not (value is None or isinstance(value, bytes)):
                raise FormatError("malformed key in an out-of-line key list")
            keys.append((tree, key, value))
    except (*MALFORMED, msgpack.UnpackException) as exc:
        raise FormatError(f"out-of-line key list is malformed: {exc}") from None
    return keys


# -- checkpoint slots (format v2) ---------------------------------------------


@dataclass(frozen=True)
class CheckpointSlot:
    """Where the newest checkpoint entry is: its seq, offset in the journal region, length and checksum.

    A slot is one block: magic, u32 zero, then u64 seq, offset, length and
    the entry's checksum, zero padding, and the xxh3_64 (seeded per
    filesystem) of everything before it in the block's last 8 bytes, so a
    torn slot write never validates.
    """

    seq: int
    offset: int
    length: int
    entry_csum: int

    def encode(self, seed: int, block_size: int) -> bytes:
        head = _SLOT.pack(SLOT_MAGIC, 0, self.seq, self.offset, self.length, self.entry_csum)
        body = head + bytes(block_size - len(head) - _CSUM.size)
        return body + _CSUM.pack(checksum(body, seed))

    @classmethod
    def decode(cls, block: bytes, seed: int) -> "CheckpointSlot | None":
        """The slot in `block`, or None if it is empty, torn or from another filesystem."""
        if len(block) < _SLOT.size + _CSUM.size or block[:4] != SLOT_MAGIC:
            return None
        (stored,) = _CSUM.unpack_from(block, len(block) - _CSUM.size)
        if checksum(block[: len(block) - _CSUM.size], seed) != stored:
            return None
        _, _, seq, offset, length, entry_csum = _SLOT.unpack_from(block)
        return cls(seq, offset, length, entry_csum)


_SLOT = struct.Struct("<4sIQQQQ")
