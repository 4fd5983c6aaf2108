"""Journal entries: one committed transaction (or one checkpoint) each.

Layout: 4-byte magic, u32 body length, u64 seq, u64 checksum, then the msgpack
body `[last_seq, durable_seq, flags, keys, checkpoint]`.  The checksum covers
the first 16 header bytes and the body, seeded per filesystem.

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
_HEADER = struct.Struct("<4sIQ")
_CSUM = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size + _CSUM.size

FLAG_CHECKPOINT = 1
FLAG_CLEAN = 2

KeyUpdate = tuple[int, bytes, bytes | None]


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

    @property
    def is_checkpoint(self) -> bool:
        return bool(self.flags & FLAG_CHECKPOINT)

    @property
    def is_clean(self) -> bool:
        return bool(self.flags & FLAG_CLEAN)


def encode_entry(entry: JournalEntry, seed: int) -> bytes:
    checkpoint = None
    if entry.is_checkpoint:
        checkpoint = [
            {tree: [r.addr, r.csum, r.level, r.nkeys] for tree, r in (entry.roots or {}).items()},
            [list(kv) for kv in entry.logged_ops or []],
        ]
    body = msgpack.packb(
        [entry.last_seq, entry.durable_seq, entry.flags, [list(k) for k in entry.keys], checkpoint],
        use_bin_type=True,
    )
    head = _HEADER.pack(MAGIC, len(body), entry.seq)
    return head + _CSUM.pack(checksum(head + body, seed)) + body


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
        return _decode_body(seq, view[pos + HEADER_SIZE : end], with_keys), end - pos
    except (*MALFORMED, msgpack.UnpackException, FormatError):
        return None


def _decode_body(seq: int, body: bytes | memoryview, with_keys: bool) -> JournalEntry:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True, max_buffer_size=len(body) + 1)
    unpacker.feed(body)
    if unpacker.read_array_header() != 5:
        raise FormatError("journal entry body is not a 5-item list")
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
    return JournalEntry(
        seq=int(seq),
        last_seq=int(last_seq),
        durable_seq=int(durable_seq),
        flags=int(flags),
        keys=keys,
        roots=roots,
        logged_ops=logged,
    )
