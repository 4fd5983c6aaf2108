"""Btree nodes in memory, and the store that reads, caches and tracks them.

Promises (DESIGN.md invariants 3 and 5):
- `NodeStore.load` verifies every node it reads against the checksum the
  parent pointer carries, and against the tree and level the parent expects;
  a mismatch is logged and raises `FormatError` (errno EIO) for that lookup
  only (tests/test_btree.py, tests/test_check.py).
- Clean nodes live in an LRU cache of bounded size; dirty nodes are held by
  their tree until a checkpoint writes them (`cleaned`), so memory is bounded
  by the cache plus the dirty set, not by the size of the image.
- A clean node that is about to change is never changed in place: it leaves
  the cache, becomes dirty, and its old address is recorded in `freed`, for
  the checkpoint that writes its replacement to release (invariant 3).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import NamedTuple

from .device import Device
from ..format.errors import FormatError
from ..format.node import HEADER_SIZE, LEAF_ENTRY_OVERHEAD, PAYLOAD_OVERHEAD, PTR_BYTES, decode_node

log = logging.getLogger(__name__)


class Ptr(NamedTuple):
    """A clean child on disk: its address and the checksum it must have."""

    addr: int
    csum: int


class Node:
    """One btree node in memory; `addr` is None while it is dirty."""

    __slots__ = ("level", "keys", "vals", "addr", "dirty", "nbytes", "new_addr")

    def __init__(self, level: int, keys: list[bytes], vals: list, addr: int | None, dirty: bool) -> None:
        self.level = level
        self.keys = keys
        self.vals = vals
        self.addr = addr
        self.dirty = dirty
        self.new_addr: int | None = None  # assigned by a checkpoint before it writes the node
        self.nbytes = self.measure()

    def measure(self) -> int:
        if self.level:
            return sum(len(k) for k in self.keys) + PTR_BYTES * len(self.keys)
        return sum(len(k) for k in self.keys) + sum(len(v) for v in self.vals) + LEAF_ENTRY_OVERHEAD * len(self.keys)

    def entry_size(self, i: int) -> int:
        if self.level:
            return len(self.keys[i]) + PTR_BYTES
        return len(self.keys[i]) + len(self.vals[i]) + LEAF_ENTRY_OVERHEAD


class NodeStore:
    """Reads nodes through an LRU cache of clean nodes; tracks dirty and freed nodes."""

    def __init__(self, device: Device, node_size: int, seed: int, cache_nodes: int = 1024) -> None:
        self.device = device
        self.node_size = node_size
        self.seed = seed
        self.capacity = node_size - HEADER_SIZE - PAYLOAD_OVERHEAD
        self.max_entry = self.capacity // 4
        self.cache_nodes = max(16, cache_nodes)
        self.cache: OrderedDict[int, Node] = OrderedDict()
        self.dirty_count = 0
        self.freed: list[int] = []  # addresses of replaced nodes, released at the next checkpoint
        self.reads = 0
        self.hits = 0

    def load(self, ptr: Ptr, tree: int, level: int) -> Node:
        node = self.cache.get(ptr.addr)
        if node is not None:
            self.cache.move_to_end(ptr.addr)
            self.hits += 1
            return node
        self.reads += 1
        try:
            raw = self.device.pread(ptr.addr, self.node_size)
            image = decode_node(raw, ptr.addr, self.seed, ptr.csum)
        except FormatError as exc:
            log.error("btree %d: %s", tree, exc)
            raise
        if image.tree != tree or image.level != level:
            msg = f"btree node at {ptr.addr:#x} belongs to tree {image.tree} level {image.level}, expected tree {tree} level {level}"
            log.error(msg)
            raise FormatError(msg)
        vals = [Ptr(a, c) for a, c in image.values] if level else image.values
        node = Node(level, image.keys, vals, ptr.addr, dirty=False)
        self.remember(node)
        return node

    def remember(self, node: Node) -> None:
        """Put a clean node into the cache, evicting the least recently used."""
        assert node.addr is not None and not node.dirty
        self.cache[node.addr] = node
        self.cache.move_to_end(node.addr)
        while len(self.cache) > self.cache_nodes:
            self.cache.popitem(last=False)

    def make_dirty(self, node: Node) -> None:
        assert not node.dirty and node.addr is not None
        self.cache.pop(node.addr, None)
        self.freed.append(node.addr)
        node.addr = None
        node.dirty = True
        self.dirty_count += 1

    def new_node(self, level: int, keys: list[bytes], vals: list) -> Node:
        self.dirty_count += 1
        return Node(level, keys, vals, None, dirty=True)

    def drop(self, node: Node) -> None:
        """Forget a dirty node that was merged away (its old address is already freed)."""
        assert node.dirty
        self.dirty_count -= 1

    def cleaned(self, node: Node, addr: int) -> None:
        """A checkpoint wrote `node` at `addr`: it is clean and cacheable now."""
        node.addr = addr
        node.dirty = False
        node.new_addr = None
        self.dirty_count -= 1
        self.remember(node)
