"""Btree nodes on disk.

Layout: 4-byte magic, u8 tree id, u8 level, u16 zero, u32 payload length,
u64 the node's own address (a misdirected write fails the check), u64
checksum of those 20 header bytes plus the payload, then the msgpack payload
`[keys, values]`.  Leaf values are msgpack value bytes; interior values are
`[child_addr, child_checksum]`.  A node occupies `node_size` bytes on disk;
only its used part, rounded up to 512 bytes, is written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from .checksum import checksum
from .errors import MALFORMED, FormatError

MAGIC = b"PBN\x01"
_HEADER = struct.Struct("<4sBBHIQ")
_CSUM = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size + _CSUM.size
# Upper bound of msgpack framing per leaf entry (two bin headers), and of an
# interior entry beyond its key bytes: the key's bin header (3) plus the
# child pointer [u64, u64] (array header 1 + 2 * 9).
LEAF_ENTRY_OVERHEAD = 6
PTR_BYTES = 22
PAYLOAD_OVERHEAD = 16


@dataclass(frozen=True)
class NodeImage:
    """A decoded node: level 0 is a leaf."""

    tree: int
    level: int
    keys: list[bytes]
    values: list  # list[bytes] for leaves, list[tuple[int, int]] for interior nodes


def encode_node(tree: int, level: int, keys: list[bytes], values: list, addr: int, seed: int) -> tuple[bytes, int]:
    """The padded bytes of a node and its checksum."""
    if level:
        values = [[a, c] for a, c in values]
    payload = msgpack.packb([keys, values], use_bin_type=True)
    head = _HEADER.pack(MAGIC, tree, level, 0, len(payload), addr)
    csum = checksum(head + payload, seed)
    raw = head + _CSUM.pack(csum) + payload
    pad = -len(raw) % 512
    return raw + bytes(pad), csum


def decode_node(raw: bytes, addr: int, seed: int, expect_csum: int | None = None) -> NodeImage:
    """Parse and verify a node read from `addr`; FormatError on any mismatch."""
    if len(raw) < HEADER_SIZE or raw[:4] != MAGIC:
        raise FormatError(f"btree node at {addr:#x}: bad magic")
    _, tree, level, _, payload_len, stored_addr = _HEADER.unpack_from(raw)
    end = HEADER_SIZE + payload_len
    if end > len(raw):
        raise FormatError(f"btree node at {addr:#x}: length {payload_len} out of range")
    (stored,) = _CSUM.unpack_from(raw, _HEADER.size)
    if expect_csum is not None and stored != expect_csum:
        raise FormatError(f"btree node at {addr:#x}: checksum differs from its parent pointer")
    if checksum(raw[: _HEADER.size] + raw[HEADER_SIZE:end], seed) != stored:
        raise FormatError(f"btree node at {addr:#x}: checksum mismatch")
    if stored_addr != addr:
        raise FormatError(f"btree node at {addr:#x}: written for address {stored_addr:#x}")
    try:
        keys, values = msgpack.unpackb(raw[HEADER_SIZE:end], raw=False, use_list=True)
        if len(keys) != len(values) or not all(isinstance(k, bytes) for k in keys):
            raise ValueError("keys and values do not match")
        if any(a >= b for a, b in zip(keys, keys[1:])):
            raise ValueError("keys out of order")
        if level:
            values = [(int(a), int(c)) for a, c in values]
        elif not all(isinstance(v, bytes) for v in values):
            raise ValueError("leaf value is not bytes")
    except (*MALFORMED, msgpack.UnpackException) as exc:
        raise FormatError(f"btree node at {addr:#x}: malformed payload ({exc})") from None
    return NodeImage(tree, level, keys, values)
