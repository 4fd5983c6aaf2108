"""The committed key state of an open image, and the one path that changes it.

`KeyState` holds every btree, the journal-only logged-op keys and the
in-memory mirror of the alloc btree (`BucketSpace`).  It is the `KeySource`
transactions read through.

Promises (DESIGN.md invariants 2, 3 and 7):
- `apply_keys` is the only way committed updates reach this state; a commit
  and the replay of its journal entry call it with the same keys, so there
  is no operation-specific replay code (tests/test_engine.py,
  tests/test_crash.py).
- Alloc keys feed the bucket mirror in the same step as the btree, tagged
  with the seq of the entry that wrote them, so a bucket emptied by entry S
  is handed out again only once S is durable (tests/test_space.py).
- Logged-op keys live only here and in journal entries, never in btree
  nodes; a checkpoint copies the live ones into its entry.
- `check_entry` refuses a key or value no node could hold, at the moment it
  is put, so every committed entry can be replayed.
"""

from __future__ import annotations

from collections.abc import Iterator

from .alloc import BucketSpace
from .btree import BTree
from .node_store import NodeStore
from ..format.errors import FormatError
from ..format.keys import MAX_KEY_BYTES, decode_key
from ..format.node import LEAF_ENTRY_OVERHEAD
from ..format.records import AllocInfo, Tree
from ..format.superblock import Superblock


class KeyState:
    """Btrees, logged-op keys and the bucket mirror; see the module docstring."""

    def __init__(self, sb: Superblock, store: NodeStore, space: BucketSpace) -> None:
        self.sb = sb
        self.store = store
        self.space = space
        self.trees: dict[int, BTree] = {}
        self.logged_ops: dict[bytes, bytes] = {}

    # -- applying key updates (commit and replay share this path) ------------

    def apply_keys(self, keys: list[tuple[int, bytes, bytes | None]], seq: int) -> None:
        for tree, key, value in keys:
            if tree == Tree.LOGGED_OPS:
                if value is None:
                    self.logged_ops.pop(key, None)
                else:
                    self.logged_ops[key] = value
                continue
            btree = self.trees.get(tree)
            if btree is None:
                raise FormatError(f"journal entry {seq} names unknown btree {tree}")
            if value is None:
                btree.delete(key)
            else:
                btree.insert(key, value)
            if tree == Tree.ALLOC:
                (bucket,) = decode_key(key)
                self.space.apply(bucket, AllocInfo.decode(value) if value is not None else None, seq)

    # -- the KeySource protocol for transactions ----------------------------

    def read(self, tree: int, key: bytes) -> bytes | None:
        if tree == Tree.LOGGED_OPS:
            return self.logged_ops.get(key)
        return self.trees[tree].get(key)

    def scan(self, tree: int, start: bytes, end: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        if tree == Tree.LOGGED_OPS:
            items = sorted(
                (k, v) for k, v in self.logged_ops.items() if k >= start and (end is None or k < end)
            )
            if reverse:
                items.reverse()
            return iter(items)
        return self.trees[tree].scan(start, end, reverse)

    def check_entry(self, tree: int, key: bytes, value: bytes) -> None:
        if tree not in self.trees and tree != Tree.LOGGED_OPS:
            raise ValueError(f"unknown btree {tree}")
        if not key or len(key) > MAX_KEY_BYTES:
            raise ValueError(f"key of {len(key)} bytes (limit {MAX_KEY_BYTES})")
        size = len(key) + len(value) + LEAF_ENTRY_OVERHEAD
        if size > self.store.max_entry:
            raise ValueError(f"entry of {size} bytes exceeds the limit of {self.store.max_entry}")

    def bucket_of(self, addr: int) -> int:
        """The bucket of a data address; ValueError outside the bucket area."""
        sb = self.sb
        if not sb.bucket_offset <= addr < sb.bucket_offset + sb.nbuckets * sb.bucket_size:
            raise ValueError(f"address {addr:#x} lies outside the bucket area")
        return sb.bucket_of(addr)

    @property
    def max_value_bytes(self) -> int:
        """Largest value a key of `MAX_KEY_BYTES // 4` bytes can carry."""
        return self.store.max_entry - LEAF_ENTRY_OVERHEAD - MAX_KEY_BYTES // 4
